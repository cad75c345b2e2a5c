"""Batch jobs over an encoder/decoder model: one JSONL record per row with its two matrices.

Each row's text is the source; its output is generated greedily (``generate_tokens``) or, when
the dataset has a target column (``--target-column``), that row's target text, explained by
teacher forcing. A record is ``{"id", "row"}`` and the generation's JSON document
(:mod:`blackbox_sal.render.generation`), or ``{"id", "row", "error", "exit_code"}`` for a row
that fails (the job goes on). JSONL only, written from the start (no resume, unlike
:func:`blackbox_sal.jobs.batch.run_batch`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from blackbox_sal.jobs.batch import Summary
from blackbox_sal.jobs.datasets import BadRow, Columns, read_rows
from blackbox_sal.model.encoder_decoder import Pair
from blackbox_sal.model.pair_files import FilePair
from blackbox_sal.render.generation import generation_json
from blackbox_sal.seq2seq.explaining import explain_generation
from blackbox_sal.vocabulary.errors import InputError, SalError, UsageError


def run_generation_batch(pair: Pair | FilePair, source: str | Path, output: str | Path, *, generate_tokens: int | None,
                         method: str = "ig", steps: int = 32, baseline: str = "pad", batch_size: int = 64,
                         backend: str = "auto", columns: Columns | None = None,
                         limit: int | None = None) -> Summary:
    """Explain every row of ``source`` into the JSONL file ``output`` (see the module docstring).
    UsageError for an output that is not .jsonl, or rows with neither a target nor
    ``generate_tokens``."""
    output = Path(output)
    if output.suffix != ".jsonl":
        raise UsageError("a batch over an encoder/decoder model writes JSONL: name the output *.jsonl")
    start = time.monotonic()
    explained = failed = 0
    try:
        fh = output.open("w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {str(output)!r}: {exc.strerror}") from exc
    with fh:
        for row in read_rows(source, columns or Columns()):
            if limit is not None and row.index >= limit:
                break
            head: dict[str, Any] = {"id": row.key, "row": row.index}
            try:
                if isinstance(row, BadRow):
                    raise InputError(row.error)
                target = row.target if row.target else None
                if target is None and generate_tokens is None:
                    raise UsageError("the row has no target text and no --generate N was given")
                result = explain_generation(pair, row.text, generate_tokens=None if target else generate_tokens,
                                            target_text=target, method=method, steps=steps, baseline=baseline,
                                            batch_size=batch_size, backend=backend)
                fh.write(json.dumps({**head, **generation_json(result)}) + "\n")
                explained += 1
            except SalError as exc:
                fh.write(json.dumps({**head, "error": str(exc), "exit_code": exc.exit_code}) + "\n")
                failed += 1
    return Summary(explained + failed, explained, failed, 0, time.monotonic() - start, output)
