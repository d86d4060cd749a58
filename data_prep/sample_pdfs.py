"""``python -m data_prep.sample_pdfs --out DIR``: small synthetic PDFs with known text, for the quickstart.

Each document is a made-up report of a few pages; every page states facts in full sentences about a topic of its
own (a city, a product, a year, a figure), so that text-layer queries identify their page. Written with PyMuPDF;
the same seed gives the same files.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Sequence

import pymupdf

from data_prep.errors import cli
from data_prep.flags import positive_int
from data_prep.outputs import check_outputs

CITIES = ["Lisbon", "Osaka", "Nairobi", "Quito", "Tallinn", "Hobart", "Tromso", "Cusco", "Dakar", "Perth", "Lyon",
          "Busan", "Krakow", "Recife", "Oulu", "Galway"]
THINGS = ["solar panels", "bicycle lanes", "rice harvest", "harbour traffic", "museum visits", "wind farms",
          "train delays", "coffee exports", "library loans", "water usage", "school meals", "tram ridership"]
VERBS = ["rose", "fell", "doubled", "stayed flat", "recovered", "peaked"]


def page_text(rng: random.Random, doc: int, page: int) -> str:
    """A paragraph of sentences about one city and one subject, with numbers unique to the page."""
    city, thing = rng.choice(CITIES), rng.choice(THINGS)
    year, amount = 1990 + rng.randrange(35), rng.randrange(100, 9999)
    lines = [f"Report {doc}, section {page}: {thing} in {city}.",
             f"In {year} the {thing} in {city} {rng.choice(VERBS)} to {amount} units according to the city office.",
             f"The council of {city} linked the change in {thing} to a new policy introduced in {year - 2}.",
             f"Residents of {city} reported that {thing} {rng.choice(VERBS)} again during the winter of {year + 1}.",
             f"Table {page} lists {amount % 97} districts of {city} ranked by {thing}."]
    return "\n".join(lines)


def write_pdf(path: Path, rng: random.Random, doc: int, pages: int) -> None:
    pdf = pymupdf.open()
    for number in range(1, pages + 1):
        page = pdf.new_page(width=420, height=595)
        page.insert_textbox(pymupdf.Rect(36, 48, 384, 560), page_text(rng, doc, number), fontsize=13)
        page.draw_rect(pymupdf.Rect(36, 400, 36 + 30 * (number + 1), 420), color=(0.2, 0.3, 0.8), fill=(0.2, 0.3, 0.8))
    pdf.save(str(path), deflate=True, garbage=3)
    pdf.close()


@cli
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m data_prep.sample_pdfs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write report_XX.pdf files into")
    parser.add_argument("--docs", type=positive_int, default=8)
    parser.add_argument("--pages", type=positive_int, default=4, help="pages per document")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    check_outputs({"--out": out}, {}, directories=("--out",))
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    for doc in range(1, args.docs + 1):
        write_pdf(out / f"report_{doc:02d}.pdf", rng, doc, args.pages)
    print(f"wrote {args.docs} PDFs of {args.pages} pages to {out}")


if __name__ == "__main__":
    main()
