"""Append-only CSV tables for commands that resume: the header is written once, rows are appended one batch at a
time, each in a single write to a file opened for appending, so rows from several processes never interleave and
an interrupted run leaves every row it finished. A table is never rewritten.

    start_table(path, COLUMNS)                        # creates it with its header, or checks the header it has
    done = {(row["model"], row["task"]) for row in read_rows(path)}
    append_rows(path, COLUMNS, [{"model": "sparse", "task": "if_equals", ...}])
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def start_table(path: Path, columns: Sequence[str]) -> None:
    """Create the table with its header row, or check that the existing one has exactly these columns."""
    if path.is_file():
        with path.open(newline="") as file:
            header = next(csv.reader(file), [])
        if header != list(columns):
            raise ValueError(
                f"{path} has the columns {header}, not {list(columns)}; move it aside (or pass another output folder)"
            )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    append_rows(path, columns, [dict(zip(columns, columns, strict=True))])


def read_rows(path: Path) -> list[dict[str, str]]:
    """Every row of the table as text (no rows when the file does not exist yet)."""
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def append_rows(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Append the rows (mappings keyed by `columns`) in one write, so no other process's row lands inside them."""
    text = io.StringIO()
    csv.DictWriter(text, fieldnames=columns, lineterminator="\n", extrasaction="raise").writerows(rows)
    data = text.getvalue().encode()
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = 0
        while written < len(data):
            written += os.write(descriptor, data[written:])
    finally:
        os.close(descriptor)
