"""``python -m data_prep.sample_pdfs --out DIR [--kind reports|titles]``: synthetic PDFs with known text.

Two kinds, written with PyMuPDF (the same seed gives the same files):

* ``reports`` (default): made-up reports whose pages state facts in full sentences about a topic of their own (a
  city, a product, a year), so that text-layer queries identify their page. A demonstration of the data engine:
  a tiny random-weight VLM cannot learn to read these sentences on a CPU.
* ``titles``: the *learnable corpus*. Every page carries a title of ``--title_words`` words in large type, drawn from
  a controlled vocabulary of ``--vocabulary`` words, with small distractor text and figures around it. No two pages
  of the corpus have the same set of title words, so the title identifies its page; ``query_generation.from_text
  --min_words W --max_words W`` (W = ``--title_words``) turns each title into its page's query (distractor
  sentences are longer). Only the page image shows the title to the retriever (page ids are file names and page
  numbers), and held-out pages combine words seen in training in new sets: a model learns the task by matching
  the words' pictures to their spelling. Difficulty: more words or title words, smaller ``--title_size``, more
  ``--distractors`` and ``--figures``.
"""
from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path
from typing import Sequence

import pymupdf

from data_prep.errors import InputError, cli
from data_prep.flags import non_negative_float, non_negative_int, positive_float, positive_int
from data_prep.outputs import check_outputs

CITIES = ["Lisbon", "Osaka", "Nairobi", "Quito", "Tallinn", "Hobart", "Tromso", "Cusco", "Dakar", "Perth", "Lyon",
          "Busan", "Krakow", "Recife", "Oulu", "Galway"]
THINGS = ["solar panels", "bicycle lanes", "rice harvest", "harbour traffic", "museum visits", "wind farms",
          "train delays", "coffee exports", "library loans", "water usage", "school meals", "tram ridership"]
VERBS = ["rose", "fell", "doubled", "stayed flat", "recovered", "peaked"]
# Title vocabulary: short words of different shapes (lengths, ascenders, descenders), the first N are used.
TITLE_WORDS = ["OAK", "FIG", "SKY", "JAM", "WAVE", "LYNX", "BOLT", "QUIZ", "MOTH", "PEAR", "HYMN", "CLAW", "DUNE",
               "KELP", "VOID", "GUST", "ZEBRA", "FJORD", "WHISK", "PLUM", "TUSK", "CORAL", "EMBER", "IVY", "NEXUS",
               "ORBIT", "RUNE", "SWAMP", "TOPAZ", "UMBRA", "VEX", "YAK"]
FILLER = ["the", "a", "of", "section", "annual", "summary", "notes", "figure", "shows", "values", "from", "last",
          "period", "were", "listed", "below", "with", "minor", "changes", "across", "regions", "and", "units"]
FIGURE_COLOURS = [(0.8, 0.2, 0.2), (0.2, 0.5, 0.8), (0.2, 0.7, 0.3), (0.9, 0.6, 0.1), (0.5, 0.3, 0.7)]
PAGE_W, PAGE_H = 420, 595


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


def write_report(path: Path, rng: random.Random, doc: int, pages: int) -> None:
    pdf = pymupdf.open()
    for number in range(1, pages + 1):
        page = pdf.new_page(width=PAGE_W, height=PAGE_H)
        page.insert_textbox(pymupdf.Rect(36, 48, 384, 560), page_text(rng, doc, number), fontsize=13)
        page.draw_rect(pymupdf.Rect(36, 400, 36 + 30 * (number + 1), 420), color=(0.2, 0.3, 0.8), fill=(0.2, 0.3, 0.8))
    pdf.save(str(path), deflate=True, garbage=3)
    pdf.close()


def title_sets(count: int, vocabulary: int, words: int, rng: random.Random) -> list[tuple[str, ...]]:
    """``count`` distinct sets of ``words`` title words (each in a random order) from the first ``vocabulary``."""
    pool = list(itertools.combinations(TITLE_WORDS[:vocabulary], words))
    if count > len(pool):
        raise InputError(f"--docs x --pages = {count} pages need {count} distinct titles, but {vocabulary} words "
                         f"make only {len(pool)} sets of {words}: raise --vocabulary or --title_words, or write "
                         "fewer pages")
    chosen = rng.sample(pool, count)
    return [tuple(rng.sample(title, len(title))) for title in chosen]


def distractor_sentence(rng: random.Random) -> str:
    """A filler sentence of 6-9 words (longer than any title, so never taken as a query)."""
    return " ".join(rng.choice(FILLER) for _ in range(rng.randint(6, 9))).capitalize() + "."


def draw_title_page(page: pymupdf.Page, title: Sequence[str], rng: random.Random, args: argparse.Namespace) -> None:
    """The title (one word per line, large type, shifted by up to ``--jitter`` points) above filler lines, and
    figures in the lower half."""
    margin, line = 24, args.title_size * 1.15
    top = margin + rng.uniform(0, args.jitter)
    for i, word in enumerate(title):  # the period ends the title's sentence in the text layer
        page.insert_text((margin + rng.uniform(0, args.jitter), top + line * (i + 1)),
                         word + ("." if i == len(title) - 1 else ""), fontsize=args.title_size, fontname="helv")
    y = top + line * len(title) + 24
    for _ in range(args.distractors):
        if y > PAGE_H - margin:
            break
        page.insert_text((margin, y), distractor_sentence(rng), fontsize=9, color=(0.35, 0.35, 0.35))
        y += 14
    for _ in range(args.figures):
        x0, y0 = rng.uniform(margin, PAGE_W - 120), rng.uniform(PAGE_H / 2, PAGE_H - 100)
        colour = rng.choice(FIGURE_COLOURS)
        shape = pymupdf.Rect(x0, y0, x0 + rng.uniform(30, 100), y0 + rng.uniform(20, 80))
        if rng.random() < 0.5:
            page.draw_rect(shape, color=colour, fill=colour)
        else:
            page.draw_oval(shape, color=colour, fill=colour)


def write_titles(path: Path, titles: Sequence[Sequence[str]], rng: random.Random, args: argparse.Namespace) -> None:
    pdf = pymupdf.open()
    for title in titles:
        draw_title_page(pdf.new_page(width=PAGE_W, height=PAGE_H), title, rng, args)
    pdf.save(str(path), deflate=True, garbage=3)
    pdf.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep.sample_pdfs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write the PDFs into (report_XX.pdf / titles_XX.pdf)")
    parser.add_argument("--kind", choices=["reports", "titles"], default="reports",
                        help="reports: sentences about a topic (a demonstration); titles: the learnable corpus")
    parser.add_argument("--docs", type=positive_int, default=8)
    parser.add_argument("--pages", type=positive_int, default=4, help="pages per document")
    parser.add_argument("--seed", type=int, default=0)
    titles = parser.add_argument_group("titles (the learnable corpus)")
    titles.add_argument("--vocabulary", type=positive_int, default=16,
                        help=f"title words drawn from the first N of a list of {len(TITLE_WORDS)} (default 16)")
    titles.add_argument("--title_words", type=positive_int, default=2, help="words per title (default 2)")
    titles.add_argument("--title_size", type=positive_float, default=64.0, help="title font size in points "
                        f"(default 64, on a {PAGE_W}x{PAGE_H} pt page)")
    titles.add_argument("--jitter", type=non_negative_float, default=0.0,
                        help="random shift of the title in points (default 0: every word at its line's place)")
    titles.add_argument("--distractors", type=non_negative_int, default=8, help="lines of small filler text")
    titles.add_argument("--figures", type=non_negative_int, default=2, help="coloured shapes per page")
    return parser


@cli
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.vocabulary > len(TITLE_WORDS):
        raise InputError(f"--vocabulary {args.vocabulary}: the title list has {len(TITLE_WORDS)} words")
    if args.title_words > args.vocabulary:
        raise InputError(f"--title_words {args.title_words} is more than --vocabulary {args.vocabulary}")
    out = Path(args.out)
    check_outputs({"--out": out}, {}, directories=("--out",))
    rng = random.Random(args.seed)
    if args.kind == "titles":
        titles = title_sets(args.docs * args.pages, args.vocabulary, args.title_words, rng)
    out.mkdir(parents=True, exist_ok=True)
    for doc in range(1, args.docs + 1):
        if args.kind == "reports":
            write_report(out / f"report_{doc:02d}.pdf", rng, doc, args.pages)
        else:
            first = (doc - 1) * args.pages
            write_titles(out / f"titles_{doc:03d}.pdf", titles[first:first + args.pages], rng, args)
    print(f"wrote {args.docs} PDFs ({args.kind}) of {args.pages} pages to {out}")


if __name__ == "__main__":
    main()
