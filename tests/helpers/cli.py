"""Running a tool's ``main`` in-process and reading the one ``error:`` line of a user error."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest


def one_error_line(main: Callable[[Sequence[str]], Any], args: Sequence[str], capsys: pytest.CaptureFixture) -> str:
    """The single line a user error prints (exit status 2, no traceback); argparse's own refusals count too, their
    line being ``<prog>: error: ...``."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in args])
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if "error: " in line]
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
