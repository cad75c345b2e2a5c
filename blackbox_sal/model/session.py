"""onnxruntime sessions: choosing the device quietly, creating sessions, running in batches.

onnxruntime-gpu lists ``CUDAExecutionProvider`` even on machines without a GPU, and asking
for it there prints loud errors. So the provider is requested only when the CUDA driver
itself reports a device (asked through ``libcuda`` with ctypes, which prints nothing).
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Iterator

import numpy as np
import onnxruntime as ort

from blackbox_sal.errors import ModelError, UnavailableError, unknown_choice

DEVICES = ("auto", "cpu", "cuda")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


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
    return _CUDA in ort.get_available_providers() and cuda_device_count() > 0


def create_session(model_bytes: bytes, device: str = "auto", threads: int = 0) -> ort.InferenceSession:
    """An InferenceSession for a serialized model on ``device`` (auto, cpu or cuda).

    ``auto`` takes CUDA when :func:`cuda_available`, else the CPU; ``cuda`` fails with
    UnavailableError (exit 4) when no GPU can be used. ``threads`` = 0 lets onnxruntime choose.
    """
    if device not in DEVICES:
        raise unknown_choice("device", device, DEVICES)
    want_cuda = device == "cuda" or (device == "auto" and cuda_available())
    if device == "cuda" and not cuda_available():
        raise UnavailableError("--device cuda: no usable CUDA GPU (onnxruntime-gpu and a driver are needed)")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = threads
    providers = [_CUDA, _CPU] if want_cuda else [_CPU]
    try:
        session = ort.InferenceSession(model_bytes, sess_options=opts, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped Fail/InvalidGraph errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"onnxruntime cannot load the model: {first}") from exc
    if device == "cuda" and _CUDA not in session.get_providers():
        raise UnavailableError("--device cuda: onnxruntime could not start its CUDA provider")
    return session


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering range(n)."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def run_batched(
    run: Callable[[slice], np.ndarray], n: int, batch_size: int
) -> np.ndarray:
    """Concatenate ``run(rows)`` over batches of rows; keeps memory bounded by batch_size."""
    parts = [run(rows) for rows in batches(n, batch_size)]
    return np.concatenate(parts, axis=0)
