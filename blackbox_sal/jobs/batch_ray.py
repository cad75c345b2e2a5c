"""The batch job through Ray Data, for datasets one machine is too slow for (the ``[ray]`` extra).

The rows are read where the job starts (as the local engine reads them) and handed to Ray
Data in order; ``map_batches`` runs a callable class whose every actor loads the model once
(from its path: a config travels to the workers, never a session) and explains its batches
through the engine, packed as the local job packs them; CPU actors, or one GPU per actor with
``gpus_per_actor=1``. The results come back in input order and are written exactly as the
local job writes them, resumable the same way (:mod:`blackbox_sal.jobs.batch`): for the same rows
and settings the two outputs are identical.

On a cluster: ``ray start --head`` on one machine, ``ray start --address HEAD:6379`` on the
others (each with blackbox-sal and the model folder at the same path), then
``blackbox-sal batch INPUT -o OUTPUT --engine ray --address HEAD:6379 --model PATH``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from blackbox_sal.api.explaining import runner
from blackbox_sal.engine.drive import drive_many
from blackbox_sal.jobs.batch import Output, Summary, finish, meta_of, output_lines, record, work_for
from blackbox_sal.jobs.datasets import BadRow, Columns, Row, read_rows
from blackbox_sal.model.loading import load_model
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import UsageError

#: rows per Ray Data batch (one engine pass packs them)
BATCH_ROWS = 64


class Explainer:
    """What each Ray actor runs: the model loaded once, each batch of rows explained through
    the engine into the rows' output records (JSON text, in order)."""

    def __init__(self, path: str, load: dict[str, Any], settings: dict[str, Any]) -> None:
        self.model = load_model(path, **load)
        self.cfg = ExplainConfig(**settings).validated()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = [_row_of(batch, k) for k in range(len(batch["index"]))]
        works = [work_for(self.model, row, self.cfg) for row in rows]
        results = drive_many(works, runner(self.model, self.cfg), len(works))
        lines = [json.dumps(record(row, result), ensure_ascii=False, allow_nan=False)
                 for row, result in zip(rows, results, strict=True)]
        return {"index": batch["index"], "line": lines}


def _row_of(batch: dict[str, Any], k: int) -> Row | BadRow:
    def get(name: str) -> Any:
        value = batch[name][k]
        return None if value is None or value == "" else value

    index = int(batch["index"][k])
    if get("error") is not None:
        return BadRow(index, str(get("error")), get("id"))
    choices = get("choices")
    return Row(index, str(batch["text"][k]), get("id"), get("label"), get("target"), get("pair"),
               tuple(str(c) for c in choices.split("\x1f")) if choices else None, get("question"), get("at"),
               get("contrast"), get("answer"))


#: the row's fields that travel to the actors as strings (or None)
_FIELDS = ("id", "label", "target", "pair", "question", "at", "contrast", "answer")


def _item(row: Row | BadRow) -> dict[str, Any]:
    if isinstance(row, BadRow):
        return {"index": row.index, "error": row.error, "text": "", "choices": None,
                **{name: row.id if name == "id" else None for name in _FIELDS}}
    return {"index": row.index, "error": None, "text": row.text,
            "choices": "\x1f".join(row.choices) if row.choices is not None else None,
            **{name: None if getattr(row, name) is None else str(getattr(row, name)) for name in _FIELDS}}


def run_batch_ray(model: TextModel, source: str | Path, output: str | Path, cfg: ExplainConfig,
                  columns: Columns | None = None, address: str | None = None, limit: int | None = None,
                  actors: int | None = None, gpus_per_actor: float = 0.0,
                  load: dict[str, Any] | None = None) -> Summary:
    """The batch job of :func:`blackbox_sal.jobs.batch.run_batch` on Ray (see the module docstring).
    ``model`` is loaded here too (to check it and to name the output's settings); the actors
    load it again from its folder with ``load`` (load_model's keyword arguments)."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise UsageError('--engine ray needs Ray Data: pip install "blackbox-sal[ray]"') from exc
    if model.folder is None:
        raise UsageError("--engine ray loads the model from its folder on every actor: give a model path")
    cfg = cfg.validated()
    columns = columns or Columns()
    source, output = Path(source), Path(output)
    fmt, lines = output_lines(output)
    out = Output(lines, meta_of(model, source, cfg, columns))
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"}
    settings["progress"] = False
    load = {"device": model.device_request, "threads": model.threads, **(load or {})}
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False,
                 logging_level=logging.ERROR, num_cpus=None if address else max(actors or 2, 1))
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False

    def rows() -> Iterator[dict[str, Any]]:
        for row in read_rows(source, columns, start=out.next_row):
            if limit is not None and row.index >= limit:
                return
            yield _item(row)

    items = list(rows())
    start = time.monotonic()
    explained = failed = 0
    try:
        if items:
            dataset = ray.data.from_items(items).map_batches(
                Explainer, fn_constructor_kwargs={"path": str(model.folder), "load": load, "settings": settings},
                batch_size=BATCH_ROWS, compute=ray.data.ActorPoolStrategy(size=actors or 1), num_gpus=gpus_per_actor,
                batch_format="pandas")
            for done in dataset.iter_rows():
                rec = json.loads(str(done["line"]))
                out.write(rec)
                failed += "error" in rec
                explained += "error" not in rec
    finally:
        out.close()
    finish(fmt, lines, output)
    return Summary(explained + failed, explained, failed, out.resumed, time.monotonic() - start, output)

