"""``python -m retriever.train``: contrastive training of a VLM retriever (the recipe is
:mod:`retriever.training.recipe`; every flag is in :mod:`retriever.training.args`)."""
from retriever.training.recipe import main

if __name__ == "__main__":
    main()
