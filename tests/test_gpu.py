"""CUDA sessions, proved without a GPU: CUDA is made to look available, the sessions that
reach onnxruntime are recorded (and run on the CPU underneath)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort
import pytest
import tiny

from blackbox_sal import ExplainConfig, explain, load_model
from blackbox_sal.gradient_graph.store import gradient_session
from blackbox_sal.model import session as session_mod

D = 6
TABLE = tiny.table(D, seed=5)
W1, B1, W2 = tiny.mlp_weights(D, 7, 3, seed=5)
REAL_SESSION = ort.InferenceSession


class Recorded:
    """An InferenceSession that records its providers and runs on the CPU."""

    providers: ClassVar[list[Any]] = []

    def __init__(self, model: Any, sess_options: Any = None, providers: Any = None) -> None:
        Recorded.providers.append(providers)
        self._inner = REAL_SESSION(model, sess_options=sess_options, providers=["CPUExecutionProvider"])
        self._cuda = any((p[0] if isinstance(p, tuple) else p) == "CUDAExecutionProvider" for p in providers or [])

    def get_providers(self) -> list[str]:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if self._cuda else ["CPUExecutionProvider"]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[int]:
    Recorded.providers = []
    preloads = [0]

    def preload() -> None:
        preloads[0] += 1

    monkeypatch.setenv("BLACKBOX_SAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(session_mod, "cuda_available", lambda: True)
    monkeypatch.setattr(session_mod, "_preloaded", [])
    monkeypatch.setattr(ort, "InferenceSession", Recorded)
    monkeypatch.setattr(ort, "preload_dlls", preload, raising=False)
    return preloads


def test_every_cuda_session_computes_in_float32(fake_gpu: list[int], tmp_path: Path) -> None:
    d = tiny.write_model_dir(tmp_path / "m", tiny.tanh_mlp(TABLE, W1, B1, W2), ["a", "b", "c"])
    model = load_model(d, device="cuda")
    assert model.device == "cuda"
    graph = explain(model, tiny.TEXT, ExplainConfig(method="ig", steps=8, backend="graph"))
    fd = explain(model, tiny.TEXT, ExplainConfig(method="grad-x-input", backend="fd"))
    assert graph.backend == "graph" and fd.backend == "fd" and graph.settings["device"] == "cuda"
    cuda = [p for p in Recorded.providers if p != ["CPUExecutionProvider"]]
    # the model, the original (split check) and the gradient graph; probe runs stay on the CPU
    assert len(cuda) >= 3
    assert all(p == [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"] for p in cuda), cuda
    assert fake_gpu[0] == 1  # the pip-wheel CUDA libraries are preloaded once, before the first CUDA session
    assert gradient_session(model).reduce_on_device  # per-token derivatives come back as [rows, S]


def test_cuda_sizes_runs_by_tokens_and_keeps_the_cpu_results(fake_gpu: list[int], tmp_path: Path) -> None:
    d = tiny.write_model_dir(tmp_path / "m", tiny.tanh_mlp(TABLE, W1, B1, W2), ["a", "b", "c"])
    on_gpu = explain(load_model(d, device="cuda"), tiny.TEXT, ExplainConfig(method="ig", steps=12))
    on_cpu = explain(load_model(d, device="cpu"), tiny.TEXT, ExplainConfig(method="ig", steps=12))
    n = len(on_cpu.tokens)
    assert on_gpu.settings["batch_size"] == min(4096, 16384 // n) and on_cpu.settings["batch_size"] == 64
    np.testing.assert_allclose([t.score for t in on_gpu.tokens], [t.score for t in on_cpu.tokens],
                               rtol=1e-5, atol=1e-7)
    assert on_gpu.convergence_delta == pytest.approx(on_cpu.convergence_delta, abs=1e-6)
