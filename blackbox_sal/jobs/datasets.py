"""Reading datasets of texts: JSONL, CSV or Parquet, one row at a time.

A row has a text (the ``text`` column by default) and, where asked for, an id, a label (the
true class: evaluation), a target (the class to explain), a second text (``pair``: a
similarity or a context/answer pair) and answer choices (``choices``: a JSON list, or texts
separated by ``|`` in CSV). A row may also give its own ``at`` (a per-token model's position),
``contrast`` (the class its target is explained against) and ``answer`` (an answer span in
its context): each overrides the job's setting of that name for the row alone
(:func:`blackbox_sal.jobs.batch.row_config` checks it against the settings spec). For a
model that takes numbers, ``features`` names the columns whose values make its input (in
order). Rows are read lazily, so memory does not grow with
the file; a row that cannot be read (a malformed JSON line, a missing text, bytes that are not
UTF-8) comes out as a :class:`BadRow` with the reason, and the rows after it still come:
nothing is replaced silently.

Parquet needs pyarrow (``pip install "blackbox-sal[parquet]"``).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blackbox_sal.vocabulary.errors import UsageError

FORMATS = ("jsonl", "csv", "parquet")
#: the longest field a CSV row may hold (csv's default, 128 KiB, is below the text limit)
MAX_FIELD = 16 * 1024**2


@dataclass(frozen=True)
class Columns:
    """Which column holds what (None: the dataset has none of it)."""

    text: str = "text"
    id: str | None = None
    label: str | None = None
    target: str | None = None
    pair: str | None = None
    choices: str | None = None
    features: tuple[str, ...] | None = None
    #: a question per row: the row's text is its context (extractive question answering)
    question: str | None = None
    #: per row: a per-token model's position, the contrast class, a question's answer span
    at: str | None = None
    contrast: str | None = None
    answer: str | None = None

    def per_row(self) -> list[str]:
        """The columns that give a row its own settings (at, contrast, answer), where named."""
        return [c for c in (self.at, self.contrast, self.answer) if c is not None]

    def __post_init__(self) -> None:
        named = [self.text, self.id, self.label, self.target, self.pair, self.choices, self.question,
                 *self.per_row(), *(self.features or ())]
        if any(name is not None and not name.strip() for name in named):
            raise UsageError("a column name cannot be empty (--text-column, --id-column, ...)")


@dataclass(frozen=True)
class Row:
    """One row: its position in the file (0-based), and its fields."""

    index: int
    text: str
    id: str | None = None
    label: str | None = None
    target: str | None = None
    pair: str | None = None
    choices: tuple[str, ...] | None = None
    question: str | None = None
    #: the row's own settings (None: the job's); the server's instances may give an index as a number
    at: str | int | None = None
    contrast: str | int | None = None
    answer: str | None = None

    @property
    def key(self) -> str:
        """What identifies the row in outputs: its id, else its position."""
        return self.id if self.id is not None else str(self.index)


@dataclass(frozen=True)
class BadRow:
    """A row that could not be read, and why."""

    index: int
    error: str
    id: str | None = None

    @property
    def key(self) -> str:
        return self.id if self.id is not None else str(self.index)


def format_of(path: str | Path) -> str:
    """jsonl, csv or parquet, from the file name; UsageError for any other."""
    name = str(path).lower()
    for suffix, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl"), (".csv", "csv"),
                        (".tsv", "csv"), (".parquet", "parquet")):
        if name.endswith(suffix):
            return fmt
    raise UsageError(f"{str(path)!r}: a dataset is .jsonl, .csv or .parquet")


def read_rows(path: str | Path, columns: Columns = Columns(), start: int = 0) -> Iterator[Row | BadRow]:
    """The rows of a dataset from position ``start`` on, one at a time (see the module
    docstring). UsageError when the file cannot be opened or lacks the text column."""
    fmt = format_of(path)
    records = {"jsonl": _jsonl, "csv": _csv, "parquet": _parquet}[fmt](Path(path))
    checked = False
    for index, record in enumerate(records):
        if index < start:
            continue
        if isinstance(record, str):  # a line that is not a JSON object
            yield BadRow(index, record)
            continue
        if not checked and fmt != "jsonl":
            _check_columns(path, record, columns)
        checked = True
        undecodable = _undecodable(record, columns) if fmt == "csv" else None
        yield BadRow(index, undecodable) if undecodable is not None else _row(index, record, columns)


def _check_columns(path: str | Path, record: dict[str, Any], columns: Columns) -> None:
    wanted = [c for c in (columns.id, columns.label, columns.target, columns.pair, columns.choices, columns.question,
                          *columns.per_row()) if c]
    wanted += list(columns.features) if columns.features else [columns.text]
    missing = [c for c in wanted if c not in record]
    if missing:
        raise UsageError(f"{str(path)!r} has no column {', '.join(repr(m) for m in missing)} "
                         f"(it has: {', '.join(record)})")


def _field(record: dict[str, Any], name: str | None) -> str | None:
    if name is None:
        return None
    value = record.get(name)
    return None if value is None or value == "" else str(value)


def _undecodable(record: dict[str, Any], columns: Columns) -> str | None:
    """Why a CSV record is refused for bytes that are not UTF-8 (read as lone surrogates, by
    the surrogateescape error handler), in a column the row uses; None when it is not."""
    used = [columns.text, columns.id, columns.label, columns.target, columns.pair, columns.choices, columns.question,
            *columns.per_row(), *(columns.features or ())]
    for name in used:
        value = record.get(name) if name is not None else None
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                byte = ord(value[exc.start]) - 0xDC00
                return f"column {name!r} is not valid UTF-8 (byte 0x{byte:02x} at character {exc.start})"
    return None


def _row(index: int, record: dict[str, Any], columns: Columns) -> Row | BadRow:
    ident = _field(record, columns.id)
    if columns.features:
        values = [record.get(c) for c in columns.features]
        if any(v is None or v == "" for v in values):
            return BadRow(index, "a feature column is empty", ident)
        text = ",".join(str(v) for v in values)
    else:
        value = record.get(columns.text)
        if not isinstance(value, str):
            return BadRow(index, f"no text in column {columns.text!r}" if value is None else
                          f"column {columns.text!r} holds {type(value).__name__}, not a text", ident)
        text = value
    choices: tuple[str, ...] | None = None
    if columns.choices:
        raw = record.get(columns.choices)
        if isinstance(raw, list):
            choices = tuple(str(c) for c in raw)
        elif isinstance(raw, str) and raw.strip():
            try:
                parsed = json.loads(raw) if raw.lstrip().startswith("[") else raw.split("|")
            except (ValueError, RecursionError):  # not JSON after all (or beyond what Python parses)
                parsed = raw.split("|")
            choices = tuple(str(c) for c in parsed)
    return Row(index, text, ident, _field(record, columns.label), _field(record, columns.target),
               _field(record, columns.pair), choices, _field(record, columns.question), _field(record, columns.at),
               _field(record, columns.contrast), _field(record, columns.answer))


def _jsonl(path: Path) -> Iterator[dict[str, Any] | str]:
    for raw in _lines(path):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start} of the line)"
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield f"not a JSON object: {exc.msg} at column {exc.colno}"
            continue
        except ValueError:  # the one json.loads raises beyond JSONDecodeError: Python's int_max_str_digits
            yield "not a JSON object: it holds an integer of more than 4,300 digits"
            continue
        except RecursionError:
            yield "not a JSON object: nested too deeply"
            continue
        yield record if isinstance(record, dict) else f"not a JSON object but {type(record).__name__}"


def _lines(path: Path) -> Iterator[bytes]:
    try:
        fh = open(path, "rb") if str(path) != "-" else sys.stdin.buffer
    except OSError as exc:
        raise UsageError(f"cannot read {str(path)!r}: {exc.strerror}") from exc
    with fh:
        for k, raw in enumerate(fh):
            if k == 0 and raw.startswith(codecs.BOM_UTF8):  # as editors on Windows write UTF-8
                raw = raw[len(codecs.BOM_UTF8):]
            yield raw


def _csv(path: Path) -> Iterator[dict[str, Any]]:
    csv.field_size_limit(MAX_FIELD)
    try:
        # -sig: a spreadsheet's BOM; bytes that are not UTF-8 become lone surrogates, and their rows BadRows
        fh = open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as exc:
        raise UsageError(f"cannot read {str(path)!r}: {exc.strerror}") from exc
    with fh:
        sample = fh.read(64 * 1024)
        fh.seek(0)
        delimiter = "\t" if str(path).lower().endswith(".tsv") or sample.count("\t") > sample.count(",") else ","
        try:
            reader = csv.DictReader(fh, delimiter=delimiter)
            names = [n for n in reader.fieldnames or [] if n]
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:  # DictReader would keep the last of them, silently
                raise UsageError(f"{str(path)!r} has the column name {', '.join(repr(n) for n in twice)} more than "
                                 f"once: rename them so that each column is read as meant")
            yield from reader
        except csv.Error as exc:
            raise UsageError(f"{str(path)!r} is not a readable CSV file: {exc}") from exc


def _parquet(path: Path) -> Iterator[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UsageError('reading Parquet needs pyarrow: pip install "blackbox-sal[parquet]"') from exc
    try:
        table = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{str(path)!r} is not a readable Parquet file: {exc}") from exc
    for batch in table.iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def sniff_columns(path: str | Path) -> list[str]:
    """The column names of a dataset (the first record's keys for JSONL)."""
    fmt = format_of(path)
    if fmt == "csv":
        with open(path, encoding="utf-8", errors="replace", newline="") as fh:
            return next(csv.reader(io.StringIO(fh.readline())), [])
    first = next(iter({"jsonl": _jsonl, "parquet": _parquet}[fmt](Path(path))), None)
    return list(first) if isinstance(first, dict) else []
