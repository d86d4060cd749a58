"""check_outputs: an output path that would overwrite an input (or another output) is refused before any write."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from data_prep.errors import InputError
from data_prep.outputs import check_outputs


def test_distinct_paths_pass(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text("x\n")
    check_outputs({"--out": tmp_path / "out.jsonl", "--failures": None}, {"--queries": tmp_path / "in.jsonl"})


def test_output_equal_to_input_is_refused_and_the_input_kept(tmp_path: Path) -> None:
    source = tmp_path / "queries.jsonl"
    source.write_text("kept\n")
    with pytest.raises(InputError, match=r"--out is the input --queries"):
        check_outputs({"--out": tmp_path / "." / "queries.jsonl"}, {"--queries": source})
    assert source.read_text() == "kept\n"


def test_links_are_seen_through(tmp_path: Path) -> None:
    source = tmp_path / "run.trec"
    source.write_text("q 0 d 1 1.0 r\n")
    os.symlink(source, tmp_path / "soft")
    os.link(source, tmp_path / "hard")
    for alias in ("soft", "hard"):
        with pytest.raises(InputError, match="--out is the input --run"):
            check_outputs({"--out": tmp_path / alias}, {"--run": source})


def test_output_inside_an_input_directory_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    with pytest.raises(InputError, match="--png is inside the input STORE"):
        check_outputs({"--png": store / "shard-00000.h5"}, {"STORE": store})


def test_output_directory_holding_an_input_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "out" / "model"
    model.mkdir(parents=True)
    with pytest.raises(InputError, match="--out contains the input --model"):
        check_outputs({"--out": tmp_path / "out"}, {"--model": model})


def test_two_outputs_on_one_path_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="given as both --out and --rejected"):
        check_outputs({"--out": tmp_path / "a.jsonl", "--rejected": tmp_path / "a.jsonl"}, {})


def test_a_locked_directory_refuses_a_second_holder_until_released(tmp_path: Path) -> None:
    from data_prep.outputs import BusyError, lock_directory

    first = lock_directory(tmp_path, "busy")
    with pytest.raises(BusyError, match="busy"):
        lock_directory(tmp_path, "busy")
    first.close()
    lock_directory(tmp_path, "busy").close()
