"""Text inputs that are not UTF-8, or not what they claim to be, are one error naming the file and the line."""
from __future__ import annotations

from pathlib import Path

import pytest

from data_prep.academic import _load_json as load_annotations
from data_prep.errors import InputError
from data_prep.failures import FailureLog
from data_prep.jsonl import iter_jsonl
from data_prep.page_list import find_pdfs
from data_prep.pdf import load_passwords
from query_generation.prompt import GENERATION_SLOTS, PromptFile

LATIN1 = "caf\xe9".encode("latin-1")  # b"caf\xe9": 0xe9 starts a UTF-8 sequence that the next byte breaks


def test_jsonl_names_the_line_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(b'{"query": "q", "pos": ["a/1"]}\n\n{"query": "' + LATIN1 + b'", "pos": ["a/2"]}\n')
    with pytest.raises(InputError, match=rf"^{path}: line 3: JSONL file is not UTF-8 text \(invalid continuation "
                                         r"byte 0xe9\); convert it to UTF-8$"):
        list(iter_jsonl(path))


@pytest.mark.parametrize("kind", ["password map", "list of PDF paths", "prompt file", "annotation file"])
def test_whole_file_readers_name_the_line_that_is_not_utf8(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "input.txt"
    path.write_bytes(b"# first line\n" + LATIN1 + b" {image} {num_queries}\n")
    read = {"password map": load_passwords, "list of PDF paths": lambda p: find_pdfs([str(p)]),
            "prompt file": lambda p: PromptFile.load(p, GENERATION_SLOTS),
            "annotation file": load_annotations}[kind]
    with pytest.raises(InputError, match=rf"^{path}: line 2: {kind} is not UTF-8 text \(invalid continuation byte "
                                         r"0xe9\)"):
        read(path)


def test_a_failures_log_that_is_not_one_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "pages.jsonl"
    path.write_bytes(b'{"id": "a/1", "doc": "a", "reason": "timeout"}\n{"id": "a/2", "doc_id": "a"}\n{"torn": ')
    before = path.read_bytes()
    with pytest.raises(InputError, match=rf"^{path}: line 2: not a failure record"):
        FailureLog(path)
    path.write_bytes(b'{"id": "a/1", "reason": "' + LATIN1 + b'"}\n')
    with pytest.raises(InputError, match=rf"^{path}: line 1: not a failure record"):
        FailureLog(path)
    path.write_bytes(before)
    with pytest.raises(InputError):
        FailureLog(path)
    assert path.read_bytes() == before  # the torn line of a file that is no failures log is not cut
