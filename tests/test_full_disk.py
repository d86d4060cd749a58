"""Full disks: render, training checkpoints, evaluation state and generated queries stop with one line naming the
file, keep what was committed, and resume to the results of an uninterrupted run.

How a full disk is simulated without root: ``RLIMIT_FSIZE`` caps the size of any file a process writes. Python
ignores SIGXFSZ, so a write past the cap fails with EFBIG ("File too large") exactly where a full disk fails
with ENOSPC: in the middle of a shard, a checkpoint or a state file, after some output was already committed.
The limit is set in a child process (never in the test process, whose captured output lives in files): either
from the start, sized between the sizes of the outputs (render: shards of blank pages fit, shards of dense pages
do not), or lowered while the job runs, at a chosen point (training, evaluation: the disk fills up mid-run).
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pymupdf
import pytest

from data_prep.rasterize import RenderSettings
from data_prep.render import render
from data_prep.split_pdfs import split_pdfs
from data_prep.store import PageStore
from retriever.training.logs import read_log
from tests.helpers.paths import REPO_ROOT
from tests.helpers.training_runs import run_train, train_args

REPO = REPO_ROOT


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def _file_size_limit(limit: int):
    """preexec_fn: the child may write no file beyond ``limit`` bytes."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def _one_error_line(stderr: str) -> str:
    """The single ``error:`` line of a failed command (progress bars may precede it; tracebacks may not)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


# -- render --------------------------------------------------------------------------------------------------------
def _pdf(path: Path, n_pages: int, dense: bool) -> None:
    doc = pymupdf.open()
    for i in range(n_pages):
        page = doc.new_page(width=300, height=400)
        text = " ".join(f"w{i}{j}" for j in range(400)) if dense else f"p{i}"
        page.insert_textbox(pymupdf.Rect(10, 10, 290, 390), text, fontsize=7)
    doc.save(path)


def _render_cmd(pages: Path, store: Path) -> list[str]:
    return [sys.executable, "-m", "data_prep.render", "--pages", str(pages), "--out", str(store), "--dpi", "60",
            "--shard_pages", "2"]


def test_render_stops_on_full_disk_and_resumes_to_identical_store(tmp_path):
    (tmp_path / "pdfs").mkdir()
    _pdf(tmp_path / "pdfs" / "a_blank.pdf", 4, dense=False)
    _pdf(tmp_path / "pdfs" / "b_dense.pdf", 4, dense=True)
    pages = tmp_path / "pages.jsonl"
    split_pdfs([str(tmp_path / "pdfs")], pages)
    reference = tmp_path / "reference"
    render(pages, reference, RenderSettings(dpi=60), shard_pages=2)
    sizes = [shard.stat().st_size for shard in sorted(reference.glob("shard-*.h5"))]
    limit = max(sizes[:2]) + 64
    assert len(sizes) == 4 and limit < min(sizes[2:]), f"shards of blank and dense pages should differ: {sizes}"

    store = tmp_path / "store"
    full = subprocess.run(_render_cmd(pages, store), env=_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=300, preexec_fn=_file_size_limit(limit))
    assert full.returncode == 2, full.stderr[-3000:]
    assert _one_error_line(full.stderr).startswith(
        f"error: {store / 'shard-00002.h5'}: no space left to write it (File too large); the 4 pages of the "
        "committed shards are intact")
    assert sorted(p.name for p in store.glob("shard-*")) == ["shard-00000.h5", "shard-00001.h5"]  # no .tmp left
    assert len(PageStore(store)) == 4

    resumed = subprocess.run(_render_cmd(pages, store), env=_env(), cwd=REPO, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(4 were done before this run)" in resumed.stdout
    ref, got = PageStore(reference), PageStore(store)
    assert sorted(got.ids()) == sorted(ref.ids()) and len(got) == 8
    assert all(got.get_bytes(i) == ref.get_bytes(i) for i in ref.ids())


# -- evaluation state ------------------------------------------------------------------------------------------------
EVAL_CHILD = textwrap.dedent('''
    import resource, sys
    sys.path.insert(0, sys.argv[1])
    from tests.helpers.toy_retrieval import KnownAnswerEncoder
    from data_prep.errors import cli
    from eval.datasets import load_retrieval_data
    from eval.engine import ScoringSettings
    from eval.evaluate import evaluate_task
    from retriever.process_group import RankInfo

    class DiskFillsUp(KnownAnswerEncoder):
        calls = 0

        def encode_pages(self, images, batch_size=8, ids=None, progress=False):
            DiskFillsUp.calls += 1
            if DiskFillsUp.calls == 3:  # after two chunks' states were saved, no file may grow past 100 bytes
                resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
            return super().encode_pages(images, batch_size, ids, progress)

    @cli
    def main(argv):
        data = load_retrieval_data(argv[0], name="toy")
        evaluate_task(DiskFillsUp(True), data, RankInfo(), k_values=[3],
                      settings=ScoringSettings(chunk_pages=5, state_dir=argv[1]))

    main(sys.argv[2:])
''')


def test_evaluation_state_survives_full_disk_and_resumes_identically(tmp_path):
    from eval.datasets import load_retrieval_data
    from eval.engine import ScoringSettings
    from eval.evaluate import evaluate_task
    from retriever.process_group import RankInfo
    from tests.helpers.toy_retrieval import N_PAGES, KnownAnswerEncoder, make_beir

    beir = make_beir(tmp_path / "beir")
    data = load_retrieval_data(str(beir), name="toy")
    expected, _ = evaluate_task(KnownAnswerEncoder(True), data, RankInfo(), k_values=[3],
                                settings=ScoringSettings(chunk_pages=5))

    state = tmp_path / "state"
    full = subprocess.run([sys.executable, "-c", EVAL_CHILD, str(REPO), str(beir), str(state)], env=_env(),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert full.returncode == 2, full.stderr[-3000:]
    [state_file] = state.glob("topk_*.pt")
    assert _one_error_line(full.stderr) == (
        f"error: {state_file}: no space left to write it (File too large); the state saved after 2 scored chunk(s) is "
        "intact; "
        "free space and run the same command again to resume")
    assert not list(state.glob("*.tmp"))

    seen: list[int] = []

    class Counting(KnownAnswerEncoder):
        def encode_pages(self, images, batch_size=8, ids=None, progress=False):
            seen.append(len(images))
            return super().encode_pages(images, batch_size, ids, progress)

    resumed, _ = evaluate_task(Counting(True), data, RankInfo(), k_values=[3],
                               settings=ScoringSettings(chunk_pages=5, state_dir=state))
    assert resumed == expected
    assert sum(seen) == N_PAGES - 10  # the two chunks saved before the disk filled are not scored again


# -- training checkpoints --------------------------------------------------------------------------------------------
TRAIN_CHILD = textwrap.dedent('''
    import resource, sys
    import retriever.training.recipe as recipe
    from retriever.train import main

    real_save = recipe.save_checkpoint

    def save_on_a_filling_disk(backend, output_dir, state, limit, settings):
        if state.global_step == 3:  # the disk is full from the third checkpoint on
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        return real_save(backend, output_dir, state, limit, settings)

    recipe.save_checkpoint = save_on_a_filling_disk
    main(sys.argv[1:])
''')


def test_training_checkpoint_on_full_disk_then_resume_matches_uninterrupted_run(tiny_model_dir, train_data,
                                                                                  tmp_path):
    data = train_data
    model = tiny_model_dir("qwen2_vl")
    steps = ["--max_steps", "4", "--save_steps", "1", "--per_device_train_batch_size", "2"]
    reference = run_train(train_args(model, data, tmp_path / "reference", *steps))
    assert reference.returncode == 0, reference.stderr[-4000:]

    out = tmp_path / "run"
    full = subprocess.run([sys.executable, "-c", TRAIN_CHILD, *train_args(model, data, out, *steps)], env=_env(),
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert full.returncode == 2, full.stderr[-4000:]
    assert _one_error_line(full.stderr).startswith(
        f"error: {out / 'checkpoint-3'}: no space left to write it (")
    assert f"the last complete checkpoint {out / 'checkpoint-2'} is intact" in full.stderr
    assert (out / "checkpoint-2" / "COMPLETE").exists() and not (out / "checkpoint-3" / "COMPLETE").exists()

    resumed = run_train(train_args(model, data, out, *steps, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"skipping {out / 'checkpoint-3'}: no COMPLETE marker" in resumed.stderr
    assert f"resumed from {out / 'checkpoint-2'}" in resumed.stderr
    expected, got = read_log(tmp_path / "reference" / "log.jsonl"), read_log(out / "log.jsonl")
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4]
    for step in expected:
        assert got[step]["loss"] == pytest.approx(expected[step]["loss"], rel=1e-5, abs=1e-6), f"step {step}"


# -- incomplete checkpoints ------------------------------------------------------------------------------------------
def test_incomplete_checkpoint_is_never_loaded_and_latest_skips_it(tmp_path, caplog):
    from retriever.model.saved import IncompleteCheckpointError, load_encoder
    from retriever.training.checkpoints import load_checkpoint, resolve_resume

    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text('{"global_step": %d}' % step)
    (tmp_path / "checkpoint-2" / "COMPLETE").write_text("ok\n")
    incomplete = tmp_path / "checkpoint-4"
    with pytest.raises(IncompleteCheckpointError, match=rf"{incomplete} is not a complete checkpoint"):
        load_checkpoint(strategy=None, path=incomplete, settings={})
    with pytest.raises(IncompleteCheckpointError, match=rf"{incomplete} is an incomplete training checkpoint"):
        load_encoder(incomplete)
    with pytest.raises(ValueError, match=r"checkpoint-2 is a training checkpoint .*not a model; load the run's final"):
        load_encoder(tmp_path / "checkpoint-2")
    with caplog.at_level("WARNING"):
        assert resolve_resume("latest", tmp_path) == tmp_path / "checkpoint-2"
    assert f"skipping {incomplete}: no COMPLETE marker" in caplog.text


# -- line-by-line outputs (query generation) ------------------------------------------------------------------------
APPEND_CHILD = textwrap.dedent('''
    import resource, sys
    from data_prep.errors import cli
    from data_prep.outputs import JsonlAppender

    @cli
    def main(argv):
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        with JsonlAppender(argv[0]) as out:
            for i in range(100):
                out.write({"id": f"page/{i}", "query": "x" * 30})

    main(sys.argv[1:])
''')


def test_jsonl_output_keeps_whole_lines_on_full_disk_and_resumes(tmp_path):
    from data_prep.jsonl import iter_jsonl
    from data_prep.outputs import JsonlAppender

    out = tmp_path / "queries.jsonl"
    full = subprocess.run([sys.executable, "-c", APPEND_CHILD, str(out)], env=_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert full.returncode == 2
    assert _one_error_line(full.stderr) == (f"error: {out}: no space left to write it (File too large); every line "
                                            "written before is intact; free space and run the same command again "
                                            "to resume")
    assert out.read_bytes().endswith(b"\n") and out.stat().st_size <= 1000
    done = [record["id"] for _, record in iter_jsonl(out)]
    assert done == [f"page/{i}" for i in range(len(done))] and len(done) > 10
    with open(out, "ab") as fh:
        fh.write(b'{"id": "page/torn", "que')  # what a kill mid-line leaves
    with JsonlAppender(out) as resumed:
        for i in range(len(done), 100):
            resumed.write({"id": f"page/{i}", "query": "x" * 30})
    assert [record["id"] for _, record in iter_jsonl(out)] == [f"page/{i}" for i in range(100)]


# -- query generation journal ------------------------------------------------------------------------------------
GENERATE_CHILD = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from tests.helpers.openai_stub import StubServer
    from query_generation.generate import main

    def answer(body):  # one query per page, a different one for every page (its seed)
        return json.dumps({"queries": [{"query": f"query {body['seed']}", "kind": "topical"}]})

    with StubServer(answer=answer) as stub:
        main([*sys.argv[2:], "--base_url", stub.base_url])
''')


def test_generate_stops_on_full_disk_keeping_whole_pages_and_resumes_to_identical_output(tmp_path):
    from tests.helpers.query_data import make_store

    store = make_store(tmp_path / "store", [f"doc{d}/{p}" for d in range(3) for p in (1, 2)])

    def generate(out: Path, limit: int | None = None) -> subprocess.CompletedProcess:
        args = ["--store", str(store), "--out", str(out), "--backend", "openai", "--model", "stub", "--batch_size",
                "1", "--max_retries", "0"]
        return subprocess.run([sys.executable, "-c", GENERATE_CHILD, str(REPO), *args], env=_env(), cwd=REPO,
                              capture_output=True, text=True, timeout=120,
                              preexec_fn=_file_size_limit(limit) if limit else None)

    reference = tmp_path / "reference.jsonl"
    assert generate(reference).returncode == 0
    lines = reference.read_bytes().splitlines(keepends=True)
    assert len(lines) == 6 and len(set(lines)) == 6
    kept = b"".join(lines[:3])

    out = tmp_path / "queries.jsonl"
    full = generate(out, limit=len(kept) + len(lines[3]) // 2)  # the fourth page's line does not fit
    assert full.returncode == 2, full.stderr[-3000:]
    assert _one_error_line(full.stderr) == (f"error: {out}: no space left to write it (File too large); every "
                                            "complete page is kept; free space and run the same command again to "
                                            "resume")
    assert out.read_bytes() == kept  # the cut line was truncated away at once
    assert (tmp_path / "queries.failures.jsonl").read_bytes() == b""  # no page was recorded as failed

    resumed = generate(out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "(2 were done before this run)" in resumed.stdout  # the journal's last page is always regenerated
    assert out.read_bytes() == reference.read_bytes()


# -- whole-file outputs of the data tools ------------------------------------------------------------------------
def test_build_splits_on_full_disk_keeps_the_previous_splits(tmp_path):
    """``build_splits`` writes each split through ``atomic_output``: a full disk names the split, leaves the previous
    version (here: of an earlier, smaller run) untouched and no ``.tmp`` file behind."""
    pairs = tmp_path / "pairs.jsonl"
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    command = [sys.executable, "-m", "data_prep.build_splits", "--pairs", str(pairs), "--train", str(train),
               "--test", str(test), "--test_fraction", "0.5"]

    def write_pairs(n: int) -> None:
        pairs.write_text("".join(f'{{"query": "q{i} {"x" * 200}", "pos": ["d{i}/p0"], "source": "s", '
                                 f'"doc_id": "d{i}"}}\n' for i in range(n)))

    write_pairs(4)
    subprocess.run(command, env=_env(), cwd=REPO, check=True, capture_output=True, timeout=120)
    before = train.read_bytes(), test.read_bytes()
    write_pairs(400)  # about 45 kB per split, over the 20 kB cap below
    full = subprocess.run(command, env=_env(), cwd=REPO, capture_output=True, text=True, timeout=120,
                          preexec_fn=_file_size_limit(20_000))
    assert full.returncode == 2
    assert _one_error_line(full.stderr) == (f"error: {train}: no space left to write it (File too large); its "
                                            "previous version is intact; free space and run the same command "
                                            "again to resume")
    assert (train.read_bytes(), test.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl", "test.jsonl", "train.jsonl"]
