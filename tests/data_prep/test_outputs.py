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


def test_an_output_of_the_wrong_kind_or_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="--out is a directory, expected a file: give a file path"):
        check_outputs({"--out": tmp_path / "dir"}, {})
    with pytest.raises(InputError, match="--out is a file, expected a directory: give a directory path"):
        check_outputs({"--out": tmp_path / "file"}, {}, directories=("--out",))
    with pytest.raises(InputError, match=rf"--out cannot be created: {tmp_path / 'file'} is a file, not a directory"):
        check_outputs({"--out": tmp_path / "file" / "sub" / "out.jsonl"}, {})
    check_outputs({"--out": tmp_path / "dir", "--log": tmp_path / "new" / "sub" / "log.jsonl"}, {},
                  directories=("--out",))


def test_an_output_where_the_user_may_not_write_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "old.jsonl").write_text("x")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))  # root
    with pytest.raises(InputError, match=rf"--out: no permission to write in {locked}: give a path you may write"):
        check_outputs({"--out": locked / "new" / "out.jsonl"}, {})
    with pytest.raises(InputError, match=rf"{locked}: --store: no permission to write it"):
        check_outputs({"--store": locked}, {}, directories=("--store",))
    with pytest.raises(InputError, match=rf"--out: no permission to write in {locked}"):
        check_outputs({"--out": locked / "old.jsonl"}, {})  # replaced by a rename in its directory


def test_settings_are_recorded_and_a_resume_with_others_refused(tmp_path: Path, caplog) -> None:
    from data_prep.outputs import check_settings, record_settings

    record = tmp_path / "settings.json"
    settings = {"--dpi": 144.0, "--format": "jpeg", "--sizes": (1, 2)}
    check_settings(record, settings, resuming=False, state="page store s")  # a new state: nothing to compare
    record_settings(record, settings)
    check_settings(record, {**settings, "--dpi": 144}, resuming=True, state="page store s")
    with pytest.raises(InputError) as err:
        check_settings(record, {**settings, "--dpi": 72.0, "--format": "png"}, resuming=True, state="page store s")
    assert str(err.value) == (f"{record}: page store s was made with other settings than this run: --dpi 144.0 "
                              "(this run: 72.0), --format 'jpeg' (this run: 'png'); resuming would mix the outputs of "
                              "both: write to a new output path, or rerun with the settings it was made with")
    record.unlink()
    check_settings(record, settings, resuming=True, state="page store s")  # made before records existed
    assert "page store s: no record of the settings it was made with" in caplog.text
