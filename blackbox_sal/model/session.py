"""onnxruntime sessions: choosing the device quietly, creating sessions, running them.

onnxruntime-gpu lists ``CUDAExecutionProvider`` even on machines without a GPU, and asking
for it there prints loud errors. So the provider is requested only when the CUDA driver
itself reports a device (asked through ``libcuda`` with ctypes, which prints nothing).

Every CUDA session computes in float32 (``CUDA_OPTIONS``): the provider's default TF32 matrix
products carry about 5e-4 relative error, which breaks finite differences and the check of
every gradient graph against them (measured on an H200: 11 of 12 directions off by 7-380 %).
Where the CUDA libraries come from pip wheels, ``onnxruntime.preload_dlls()`` loads them
first (quietly). Every onnxruntime failure becomes a :class:`ModelError` (exit 3).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import io
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from blackbox_sal.vocabulary.errors import ModelError, UnavailableError, unknown_choice

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: provider options of every CUDA session: float32 arithmetic, as gradient work needs
CUDA_OPTIONS: dict[str, str] = {"use_tf32": "0"}

_preloaded: list[bool] = []
#: the RunOptions every run in this context goes with (the engine service sets one per round,
#: so that a run can be stopped at a deadline from another thread); None: onnxruntime's default
RUN_OPTIONS: contextvars.ContextVar[ort.RunOptions | None] = contextvars.ContextVar("run_options", default=None)


def cuda_device_count() -> int:
    """GPUs the CUDA driver reports; 0 when there is no driver or no device."""
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    return 0


def cuda_available() -> bool:
    """Whether onnxruntime has the CUDA provider and the driver reports a GPU."""
    return CUDA in ort.get_available_providers() and cuda_device_count() > 0


def _preload_cuda_libraries() -> None:
    """``onnxruntime.preload_dlls()`` once, where it exists (CUDA and cuDNN from pip wheels);
    its messages are swallowed: a machine with system-wide libraries needs none of it."""
    if _preloaded:
        return
    _preloaded.append(True)
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            preload()
        except Exception:  # a missing optional wheel is not an error: the system may have the libraries
            pass


def wants_cuda(device: str) -> bool:
    """Whether ``device`` (auto, cpu, cuda) means the GPU here; UnavailableError for cuda without one."""
    if device not in DEVICES:
        raise unknown_choice("device", device, DEVICES)
    if device == "cuda" and not cuda_available():
        raise UnavailableError("--device cuda: no usable CUDA GPU (onnxruntime-gpu and a driver are needed)")
    return device == "cuda" or (device == "auto" and cuda_available())


def providers_for(device: str) -> list[str | tuple[str, dict[str, str]]]:
    """The provider list a session on ``device`` is created with."""
    if wants_cuda(device):
        _preload_cuda_libraries()
        return [(CUDA, dict(CUDA_OPTIONS)), CPU]
    return [CPU]


def create_session(model: bytes | str, device: str = "auto", threads: int = 0,
                   optimize: bool = True) -> ort.InferenceSession:
    """An InferenceSession for a serialized model (or a path) on ``device`` (auto, cpu, cuda).

    ``auto`` takes CUDA when :func:`cuda_available`, else the CPU; ``cuda`` fails with
    UnavailableError (exit 4) when no GPU can be used. ``threads`` = 0 lets onnxruntime choose.
    ``optimize`` False turns graph optimisations off (probe runs read every tensor as written).
    """
    providers = providers_for(device)
    opts = ort.SessionOptions()
    # onnxruntime's own warnings (unused initializers, fallbacks) are silenced for this session
    # alone: the library says what matters itself, and the host's default logger stays its own
    opts.log_severity_level = 4
    opts.intra_op_num_threads = threads
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(model, sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
        raise ModelError(f"onnxruntime cannot load the model: {first_line(exc)}") from exc
    if device == "cuda" and CUDA not in session.get_providers():
        raise UnavailableError("--device cuda: onnxruntime could not start its CUDA provider")
    return session


def on_cuda(session: ort.InferenceSession) -> bool:
    return CUDA in session.get_providers()


def run(session: ort.InferenceSession, outputs: Sequence[str], feeds: Mapping[str, np.ndarray],
        what: str = "the model") -> list[Any]:
    """``session.run`` with onnxruntime's failures (an out-of-range index, an allocation too
    large, a shape the graph cannot take) as one ModelError line."""
    try:
        return list(session.run(list(outputs), dict(feeds), RUN_OPTIONS.get()))
    except MemoryError as exc:
        raise ModelError(f"{what} ran out of memory (lower --batch-size)") from exc
    except Exception as exc:  # onnxruntime's own exception types (Fail, InvalidArgument, RuntimeException)
        raise ModelError(f"{what} failed when run: {first_line(exc)}") from exc


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, cut to ``limit`` characters."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering range(n)."""
    for start in range(0, n, max(size, 1)):
        yield slice(start, min(start + size, n))
