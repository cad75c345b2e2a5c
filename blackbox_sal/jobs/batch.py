"""Batch jobs: a dataset of texts explained through the engine into a JSONL, CSV or Parquet file
(the output's suffix says which: ``.jsonl``, ``.csv``, ``.parquet``; any other is refused),
resumable at any point.

Rows stream from the input (:mod:`blackbox_sal.jobs.datasets`) into the engine, which packs the
runs of up to ``window`` rows at a time; results come back in input order and each is written
as one line as soon as it is done: ``{"id", "row", ...the CLI's JSON object}``, or for a row
that failed ``{"id", "row", "error", "exit_code"}`` (an empty text, one too long, an unknown
label: the job goes on). A row with ``question`` is an answer span (its text the context), one
with ``choices`` multiple choice, one with ``pair`` a similarity, any other an explanation of
its text; for a per-token model without ``at``, every target of the text: one record with its
matrix. A row's own ``target``, ``at``, ``contrast`` and ``answer`` (:data:`PER_ROW`, from the
columns that ``Columns`` names) override the job's settings for that row; a value the settings
spec refuses is that row's error.

Resumable and exact: every line is written whole with one ``os.write`` and the file synced
every few seconds and at the end. Run again with the same command after a kill (SIGKILL
included), the job reads what is there, drops a partial last line, checks that the output was
written with the same input, model and settings (``OUTPUT.meta.json``), and goes on from the
next row: no row lost, none written twice. A CSV or Parquet output is kept as JSONL
(``OUTPUT.partial.jsonl``) while the job runs and converted when it ends, to the columns id,
row, error, exit_code and result (the JSON object as text). Ctrl-C ends the job with
:class:`~blackbox_sal.vocabulary.errors.Interrupted`, saying how many rows are saved and that the same
command resumes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blackbox_sal.api.explaining import runner, text_explanation
from blackbox_sal.api.per_token import token_targets
from blackbox_sal.api.spans import answer_span
from blackbox_sal.api.tasks import multiple_choice, similarity
from blackbox_sal.engine.drive import drive_many
from blackbox_sal.jobs.datasets import MAX_FIELD, BadRow, Columns, Row, format_of, read_rows
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.progress import Progress
from blackbox_sal.render.json import document
from blackbox_sal.vocabulary.choices import BATCH_SUFFIXES
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import InputError, Interrupted, SalError, UsageError
from blackbox_sal.vocabulary.runs import Work

#: version of the output records (the explanation objects inside keep their schema_version)
RECORD_VERSION = 1
#: seconds between syncs of the output file to disk
SYNC_EVERY = 5.0


@dataclass(frozen=True)
class Summary:
    """What a batch job did: rows read this run, explained, failed; rows already in the output
    from an earlier run (resumed); seconds; texts per second (rows this run / seconds)."""

    rows: int
    explained: int
    failed: int
    resumed: int
    seconds: float
    output: Path

    @property
    def texts_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


#: the settings a row (a dataset record, a server instance) may give for itself: each overrides
#: the job's (or the request's) setting of that name for that row alone
PER_ROW = ("target", "at", "contrast", "answer")


def row_config(row: Row, cfg: ExplainConfig) -> ExplainConfig:
    """The config of one row: ``cfg`` with the row's own settings (:data:`PER_ROW`), checked as
    the job's are (each against its settings-spec entry, then the rules that tie two together);
    UsageError otherwise. Whether a value fits the text (an ``at`` that is in it, a label the
    model has) is decided when the row is explained, as for the job's settings."""
    given = {name: getattr(row, name) for name in PER_ROW if getattr(row, name) is not None}
    return dataclasses.replace(cfg, **given).validated() if given else cfg


def work_for(model: TextModel, row: Row | BadRow, cfg: ExplainConfig) -> Work[Any]:
    """The engine work of one row (a bad row's work, or one whose own settings are refused,
    fails when it starts, with its reason: that row's error, not the job's)."""
    if isinstance(row, BadRow):
        return _failing(row.error)
    return _row_work(model, row, cfg)


def _row_work(model: TextModel, row: Row, cfg: ExplainConfig) -> Work[Any]:
    c = row_config(row, cfg)
    if row.question is not None:  # the row's text is the context
        return (yield from answer_span(model, row.question, row.text, c))
    if row.choices is not None:
        return (yield from multiple_choice(model, row.text, row.choices, c))
    if row.pair is not None:
        return (yield from similarity(model, row.text, row.pair, c))
    if model.task == "per-token" and c.at is None:  # every entity of the text: one record with its matrix
        return (yield from token_targets(model, row.text, c))
    return (yield from text_explanation(model, row.text, c))


def _failing(reason: str) -> Work[Any]:
    raise InputError(reason)
    yield  # a generator, so the engine sees the error when it starts the work


def record(row: Row | BadRow, result: object) -> dict[str, Any]:
    """The output line of one row."""
    head: dict[str, Any] = {"id": row.key, "row": row.index}
    if isinstance(result, SalError):
        return {**head, "error": str(result), "exit_code": result.exit_code}
    return {**head, **document(result)}


def meta_of(model: TextModel, source: Path, cfg: ExplainConfig, columns: Columns) -> dict[str, Any]:
    """What an output was written with: a resumed job must match it."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"}
    model_file = (model.folder / "model.onnx") if model.folder else None
    # the input by its size and modification time too: another file put at the same path must
    # not be resumed into rows written from the first one
    return {"record_version": RECORD_VERSION, "input": str(source.resolve()), "input_file": _stamp(source),
            "model": model.name, "model_file": _stamp(model_file), "task": model.task, "settings": settings,
            "columns": dataclasses.asdict(columns)}


def _stamp(path: Path | None) -> str:
    """A file's size and modification time ("" when there is none)."""
    if path is None or not path.is_file():
        return ""
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


class Output:
    """A JSONL file written a whole line at a time, resumable (see the module docstring)."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.meta_path = path.with_name(path.name + ".meta.json")
        self.resumed = 0
        self.next_row = 0
        if path.exists():
            self._resume(meta)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write_meta(meta)
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise UsageError(f"cannot write {str(path)!r}: {exc.strerror}") from exc
        self.synced = time.monotonic()

    def _write_meta(self, meta: dict[str, Any]) -> None:
        try:
            self.meta_path.write_text(json.dumps(meta, indent=1, default=str) + "\n", encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {str(self.meta_path)!r}: {exc.strerror}") from exc

    def _resume(self, meta: dict[str, Any]) -> None:
        try:
            known = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            known = None
        if not isinstance(known, dict):
            raise UsageError(f"{str(self.path)!r} exists but was not written by a batch job (no readable "
                             f"{self.meta_path.name}): remove it or choose another output")
        if json.loads(json.dumps(meta, default=str)) != known:
            changed = sorted(k for k in set(meta) | set(known) if json.loads(json.dumps(meta.get(k), default=str))
                             != known.get(k))
            raise UsageError(f"{str(self.path)!r} was written with another {', '.join(changed)}: remove it (and "
                             f"{self.meta_path.name}) to start again, or choose another output")
        kept = 0
        last_row = -1
        with open(self.path, "rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # a line cut by a kill: dropped below
                try:
                    row = json.loads(line)["row"]
                except (ValueError, KeyError, TypeError, RecursionError):
                    break
                if isinstance(row, bool) or not isinstance(row, int) or row != last_row + 1:
                    break  # every record is the next row: anything else was not written by this job
                last_row = row
                kept += len(line)
                self.resumed += 1
        with open(self.path, "r+b") as fh:
            fh.truncate(kept)
        self.next_row = last_row + 1

    def write(self, rec: dict[str, Any]) -> None:
        # a lone surrogate in an input's id (or an error quoting it) is written as its JSON escape
        data = (json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8", "backslashreplace")
        view = memoryview(data)
        while view:  # one write in practice; a short write (a full disk) is finished or raises
            written = os.write(self.fd, view)
            view = view[written:]
        if time.monotonic() - self.synced > SYNC_EVERY:
            os.fsync(self.fd)
            self.synced = time.monotonic()

    def close(self) -> None:
        os.fsync(self.fd)
        os.close(self.fd)


def count_rows(path: Path) -> int | None:
    """The number of rows, cheaply where the format allows (None: unknown)."""
    fmt = format_of(path)
    if fmt == "parquet":
        try:
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        except Exception:  # an unreadable file is reported when it is read
            return None
    try:
        with open(path, "rb") as fh:
            if fmt == "jsonl":
                return sum(1 for line in fh if line.strip())
            csv.field_size_limit(MAX_FIELD)  # as the reader has it
            lines = (raw.decode("utf-8", "replace") for raw in fh)
            return max(sum(1 for _ in csv.reader(lines)) - 1, 0)  # records, not lines: a field may hold newlines
    except (OSError, csv.Error):  # a field over MAX_FIELD: the reader says so when it gets there
        return None


def run_batch(model: TextModel, source: str | Path, output: str | Path, cfg: ExplainConfig,
              columns: Columns | None = None, window: int = 64, limit: int | None = None,
              progress: bool | None = None) -> Summary:
    """Explain every row of ``source`` into ``output`` (its suffix picks JSONL, CSV or Parquet; the
    last two are written at the end), resuming where an earlier run of the same job stopped.
    ``limit``: at most this many rows in all. Ctrl-C: :class:`~blackbox_sal.vocabulary.errors.Interrupted`."""
    cfg = cfg.validated()
    columns = columns or Columns()
    source, output = Path(source), Path(output)
    fmt, lines = output_lines(output)
    out = Output(lines, meta_of(model, source, cfg, columns))
    total = count_rows(source)
    if limit is not None:
        total = min(total, limit) if total is not None else limit
    pending: deque[Row | BadRow] = deque()

    def works() -> Iterator[Work[Any]]:
        for row in read_rows(source, columns, start=out.next_row):
            if limit is not None and row.index >= limit:
                return
            pending.append(row)
            yield work_for(model, row, cfg)

    start = time.monotonic()
    explained = failed = 0
    try:
        with Progress(max((total or 0) - out.resumed, 1), "batch", enabled=progress, unit="rows", minimum=1) as bar:
            for result in drive_many(works(), runner(model, cfg), window):
                row = pending.popleft()
                out.write(record(row, result))
                if isinstance(result, SalError):
                    failed += 1
                else:
                    explained += 1
                bar.advance(1)
    except KeyboardInterrupt:
        saved = out.resumed + explained + failed
        where = str(lines) + ("" if fmt == "jsonl" else f", {output} is written when the job ends")
        raise Interrupted(f"interrupted: {saved:,} rows are saved ({where}); run the same command again to "
                          f"resume from row {saved:,}") from None
    finally:
        out.close()
    finish(fmt, lines, output)
    return Summary(explained + failed, explained, failed, out.resumed, time.monotonic() - start, output)


def output_format(output: Path) -> str:
    """jsonl, csv or parquet, from the output's suffix; UsageError (exit 2) for any other."""
    fmt = {suffix: suffix[1:] for suffix in BATCH_SUFFIXES}.get(output.suffix.lower())
    if fmt is None:
        raise UsageError(f"{str(output)!r}: the output's suffix picks its format: "
                         f"{', '.join(BATCH_SUFFIXES)} (got {output.suffix or 'none'!r})")
    return fmt


def output_lines(output: Path) -> tuple[str, Path]:
    """The output's format and the JSONL file the job appends to (the output itself, or for CSV
    and Parquet ``OUTPUT.partial.jsonl``, converted by :func:`finish`). UsageError for a suffix
    that names no format, or Parquet without pyarrow (before any work)."""
    fmt = output_format(output)
    if fmt == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError as exc:
            raise UsageError('writing Parquet needs pyarrow: pip install "blackbox-sal[parquet]"') from exc
    return fmt, output if fmt == "jsonl" else output.with_name(output.name + ".partial.jsonl")


def finish(fmt: str, lines: Path, output: Path) -> None:
    """Write a finished job's CSV or Parquet output from its JSONL (nothing to do for JSONL)."""
    if fmt == "parquet":
        _to_parquet(lines, output)
    elif fmt == "csv":
        _to_csv(lines, output)


def _columns_of(lines: Path) -> tuple[list[Any], list[int], list[str | None], list[int | None], list[str | None]]:
    """The finished JSONL as columns: id, row, error, exit_code, result (the JSON object as text)."""
    ids, rows, errors, codes, results = [], [], [], [], []
    with open(lines, encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            ids.append(rec.pop("id"))
            rows.append(rec.pop("row"))
            errors.append(rec.pop("error", None))
            codes.append(rec.pop("exit_code", None))
            results.append(json.dumps(rec, ensure_ascii=False) if rec else None)
    return ids, rows, errors, codes, results


def _to_csv(lines: Path, output: Path) -> None:
    """The finished JSONL as CSV (RFC 4180, UTF-8): id, row, error, exit_code, result."""
    tmp = output.with_name(output.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", errors="backslashreplace", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["id", "row", "error", "exit_code", "result"])
            for record_ in zip(*_columns_of(lines), strict=True):
                writer.writerow(["" if v is None else v for v in record_])
        os.replace(tmp, output)
    except OSError as exc:
        raise UsageError(f"cannot write {str(output)!r}: {exc.strerror}") from exc


def _to_parquet(lines: Path, output: Path) -> None:
    """The finished JSONL as Parquet: columns id, row, error, exit_code, result (the JSON text)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise UsageError('writing Parquet needs pyarrow: pip install "blackbox-sal[parquet]"') from exc
    ids, rows, errors, codes, results = _columns_of(lines)
    table = pa.table({"id": pa.array(ids, pa.string()), "row": pa.array(rows, pa.int64()),
                      "error": pa.array(errors, pa.string()), "exit_code": pa.array(codes, pa.int64()),
                      "result": pa.array(results, pa.string())})
    tmp = output.with_name(output.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, output)

