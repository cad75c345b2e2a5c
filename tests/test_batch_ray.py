"""The batch job on a local Ray started by the test: the same output as the local engine.
Runs where Ray Data is installed (pip install ".[test,ray]"); skips elsewhere."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from blackbox_sal import ExplainConfig, default_model_path, load_model
from blackbox_sal.jobs.batch import run_batch
from blackbox_sal.jobs.datasets import Columns

# Ray warns about its own deprecated settings while it starts: not this library's warnings
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
ray = pytest.importorskip("ray", reason="Ray Data is not installed (pip install \".[ray]\")")
pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def test_ray_equals_the_local_engine(local_ray: None, tmp_path: Path) -> None:
    from blackbox_sal.jobs.batch_ray import run_batch_ray

    texts = ["An absolute masterpiece.", "", "A dull, lifeless remake.", "The plot is thin, but the acting is great."]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"t{k}", "text": t}) + "\n" for k, t in enumerate(texts * 5)))
    model = load_model(default_model_path())
    cfg = ExplainConfig(method="ig", steps=16)
    local = run_batch(model, source, tmp_path / "local.jsonl", cfg, Columns(id="id"))
    on_ray = run_batch_ray(model, source, tmp_path / "ray.jsonl", cfg, Columns(id="id"), actors=2)
    assert (on_ray.rows, on_ray.explained, on_ray.failed) == (local.rows, local.explained, local.failed) == (20, 15, 5)
    assert (tmp_path / "ray.jsonl").read_text() == (tmp_path / "local.jsonl").read_text()
