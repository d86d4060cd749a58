"""PDFs -> page lists -> rendered pages in HDF5 page stores; academic VQA sets -> query/page pairs; splits."""
