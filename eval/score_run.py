"""CLI: score a TREC run file against qrels with trec_eval-exact metrics, JSON on stdout or ``--out``.

Example: ``python -m eval.score_run --run run.trec --qrels qrels.tsv --k 1,5,10``
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from data_prep.errors import InputError, cli
from data_prep.outputs import check_outputs, write_text_atomic
from eval.metrics import DEFAULT_K, evaluate_run, parse_k
from eval.trec import Qrels, Run, read_qrels, read_run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m eval.score_run",
        description="Score a TREC run (qid Q0 docid rank score tag) against qrels (TREC 'qid 0 docid rel' or "
        "BEIR TSV with a 'query-id corpus-id score' header). Metrics come from pytrec_eval and are named "
        "as MTEB writes them (ndcg_at_10, recall_at_100, map_at_10, mrr_at_10, precision_at_1, hit_rate_at_5).",
    )
    p.add_argument("--run", required=True, type=Path, help="TREC run file")
    p.add_argument("--qrels", required=True, type=Path, help="qrels file (TREC or BEIR TSV)")
    p.add_argument("--k", type=parse_k, default=list(DEFAULT_K), help="cutoffs, comma-separated (default 1,3,5,10,100)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here instead of stdout")
    return p.parse_args(argv)


def check_scorable(run: Run, qrels: Qrels, run_path: Path, qrels_path: Path) -> None:
    """Refuse a run or qrels without lines, and a run none of whose queries has qrels: each would be scored as
    an empty set of metrics, which reads like a result."""
    for table, path, what in ((run, run_path, "run file"), (qrels, qrels_path, "qrels file")):
        if not table:
            raise InputError(f"{path}: the {what} has no lines; nothing to score")
    if not set(run) & set(qrels):
        raise InputError(f"{run_path}: none of its {len(run)} queries has qrels in {qrels_path} (e.g. run query "
                         f"{next(iter(run))!r}, qrels query {next(iter(qrels))!r}); score a run against its own qrels")


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_outputs({"--out": args.out}, {"--run": args.run, "--qrels": args.qrels})
    run, qrels = read_run(args.run), read_qrels(args.qrels)
    check_scorable(run, qrels, args.run, args.qrels)
    missing = set(run) - set(qrels)
    if missing:
        warnings.warn(f"{len(missing)} of {len(run)} run queries have no qrels and are not scored", stacklevel=1)
    text = json.dumps(evaluate_run(qrels, run, args.k), indent=2)
    if args.out:
        write_text_atomic(args.out, text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
