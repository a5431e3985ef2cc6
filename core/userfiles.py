"""The one reader of files a user hands in: probe suites, LED's location
data, ACM's calibration data, refusal phrase lists.

Each problem is one sentence that names what the file was meant to be
(``what``: "probe file", "location data file", ...) and where it went
wrong (line or row); callers add only the checks of their own fields.
In Space mode a path outside the allowed folders is refused before
anything is said about it (policy.check_local_path).
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

from . import policy
from .errors import UserError, quoted


def read_text(path: str, what: str, *, space_check: bool = True) -> str:
    """The file as one string. utf-8-sig: spreadsheet exports often start
    with a byte-order mark. ``space_check=False`` skips the Space's folder
    allow-list, for readers whose files the app chooses itself (probe
    suites: the built-in ones live in assets/probes, uploads in Gradio's
    temp folder; see docs/RELIABILITY.md)."""
    full = os.path.abspath(os.path.expanduser(path))
    if space_check:
        policy.check_local_path(full, path)
    if not os.path.isfile(full):
        raise UserError(f"The {what} {quoted(path)} does not exist.")
    try:
        with open(full, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError:
        raise UserError(f"The {what} {quoted(path)} is not UTF-8 text.")
    except OSError as exc:
        raise UserError(f"Cannot read the {what} {quoted(path)} ({exc.strerror}).")


def json_lines(path: str, what: str, text: str) -> list[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line of a JSONL file's ``text``."""
    rows = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((no, json.loads(line)))
        except (ValueError, RecursionError):   # RecursionError: a line of 1000+ '[' (fuzzing found it)
            raise UserError(f"Line {no} of the {what} {quoted(path)} is not valid JSON.")
    return rows


def csv_rows(path: str, what: str, text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(header, [(row number, {column: value})]) of a CSV file's ``text``,
    names and values stripped. Blank rows are skipped; a row with more or
    fewer fields than the header is refused. Row numbers count the header
    as 1."""
    try:
        reader = csv.DictReader(io.StringIO(text))
        header = [(h or "").strip() for h in (reader.fieldnames or [])]
        rows = []
        for no, rec in enumerate(reader, 2):
            values = [v for v in rec.values() if isinstance(v, str)]
            if not any(v.strip() for v in values) and None not in rec:
                continue   # a blank row (spaces, or only commas)
            if None in rec or None in rec.values():
                raise UserError(f"Row {no} of the {what} {quoted(path)} has a different number of fields "
                                "than the header.")
            rows.append((no, {(k or "").strip(): (v or "").strip() for k, v in rec.items()}))
    except csv.Error as exc:
        raise UserError(f"The {what} {quoted(path)} is not a valid CSV file ({exc}).")
    return header, rows
