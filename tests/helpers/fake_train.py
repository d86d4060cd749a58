"""A stand-in for ``retriever.train`` in search tests: writes ``log.jsonl`` evaluations like the trainer.

``python -m tests.helpers.fake_train --output_dir DIR --learning_rate LR [...]`` logs ``eval_ndcg_at_10`` at steps
1, 2 and 3 (``FAKE_TRAIN_SECONDS`` apart, default 0): the learning rate itself, except for a trial directory named
``trial-1``, which scores 0.001 (a trial a threshold pruner stops). ``--fail`` exits with status 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--output_dir", type=Path, required=True)
    p.add_argument("--learning_rate", type=float, default=0.5)
    p.add_argument("--fail", action="store_true")
    args, _ = p.parse_known_args()
    if args.fail:
        print("fake training failed", file=sys.stderr)
        return 1
    args.output_dir.mkdir(parents=True, exist_ok=True)
    value = 0.001 if args.output_dir.name == "trial-1" else args.learning_rate
    with open(args.output_dir / "log.jsonl", "a") as log:
        for step in (1, 2, 3):
            time.sleep(float(os.environ.get("FAKE_TRAIN_SECONDS", "0")))
            log.write(json.dumps({"step": step, "loss": 1.0 / step, "eval_ndcg_at_10": value}) + "\n")
            log.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
