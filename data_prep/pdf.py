"""Opening PDFs with PyMuPDF: password maps, encryption and clear reasons for files that cannot be opened.

Password map: a JSON object ``{key: password}`` where a key is the PDF's path relative to the input root
(``reports/a.pdf``), its file name, or its sha256. ``open_pdf`` raises ``PdfError`` whose message is the reason
recorded in failure logs (``encrypted: ...``, ``empty file``, ``cannot open: ...``).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pymupdf

from data_prep.errors import InputError, read_json_input


class PdfError(RuntimeError):
    """A PDF (or one of its pages) that cannot be processed; the message is the recorded reason."""


def sha256_file(path: str | os.PathLike, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def load_passwords(path: str | os.PathLike | None) -> dict[str, str]:
    """Read a password map file (``None`` -> empty map); clear error for a malformed file."""
    if path is None:
        return {}
    data = read_json_input(path, "password map")
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise InputError(f"{path}: password map must be a JSON object of strings {{path_or_sha256: password}}")
    return data


def password_for(passwords: dict[str, str], relpath: str, sha256: str) -> str | None:
    for key in (relpath, sha256, Path(relpath).name):
        if key in passwords:
            return passwords[key]
    return None


def open_pdf(path: str | os.PathLike, password: str | None = None) -> pymupdf.Document:
    """Open and (if encrypted) authenticate a PDF; raises ``PdfError`` with the reason on failure."""
    pymupdf.TOOLS.mupdf_display_errors(False)
    try:
        doc = pymupdf.open(path, filetype="pdf")
    except pymupdf.EmptyFileError:
        raise PdfError("empty file (0 bytes)") from None
    except Exception as e:  # FileDataError, broken beyond repair, not a PDF, ...
        raise PdfError(f"cannot open: {type(e).__name__}: {e}") from None
    if doc.needs_pass:
        if password is None:
            doc.close()
            raise PdfError("encrypted: needs a password (none given in the password map)")
        if not doc.authenticate(password):
            doc.close()
            raise PdfError("encrypted: wrong password in the password map")
    return doc
