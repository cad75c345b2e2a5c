"""onnxruntime sessions: choosing the device quietly, creating sessions, running them.

onnxruntime-gpu lists ``CUDAExecutionProvider`` even on machines without a GPU, and asking
for it there prints loud errors. So the provider is requested only when the CUDA driver
itself reports a device (asked through ``libcuda`` with ctypes, which prints nothing).

Every CUDA session computes in float32 (``CUDA_OPTIONS``): the provider's default TF32 matrix
products carry about 5e-4 relative error, which breaks finite differences and the check of
every gradient graph against them (measured on an H200: 11 of 12 directions off by 7-380 %).
Where the CUDA libraries come from pip wheels, ``onnxruntime.preload_dlls()`` loads them
first (quietly). Every onnxruntime failure becomes a :class:`ModelError` (exit 3).

Every run has a time limit (``RUN_TIMEOUT``: 600 s unless :func:`time_limit` or the CLI's
``--timeout`` says otherwise; loading's probe and check runs included): one watchdog thread
sets ``RunOptions.terminate`` on a run that outlives it, and the run ends with a
:class:`DeadlineError` (exit 5). A graph that never ends (a ``Loop`` of 2^62 steps) is stopped
this way. Runs that already carry run options (the engine service's, which stops its rounds
at the request deadlines itself) are left to those. Session creation cannot be stopped so.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import heapq
import io
import itertools
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from blackbox_sal.vocabulary.config import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT  # re-exported: time_limit's default
from blackbox_sal.vocabulary.errors import DeadlineError, ModelError, UnavailableError, UsageError, unknown_choice

DEVICES = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: provider options of every CUDA session: float32 arithmetic, as gradient work needs
CUDA_OPTIONS: dict[str, str] = {"use_tf32": "0"}

_preloaded: list[bool] = []
#: the RunOptions every run in this context goes with (the engine service sets one per round,
#: so that a run can be stopped at a deadline from another thread); None: onnxruntime's default
RUN_OPTIONS: contextvars.ContextVar[ort.RunOptions | None] = contextvars.ContextVar("run_options", default=None)
#: the time limit of each run in this context (None: none); see :func:`time_limit`
RUN_TIMEOUT: contextvars.ContextVar[float | None] = contextvars.ContextVar("run_timeout", default=DEFAULT_TIMEOUT)


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
    check_input_sizes(session)
    return session


#: the most bytes one input of a model may take by its static dimensions (a dynamic one counts
#: 1): its feeds are allocated before the model runs, and a crafted [1, 10^9] would be gigabytes
MAX_INPUT_BYTES = 1 << 30
_ITEM_BYTES = {"tensor(float16)": 2, "tensor(float)": 4, "tensor(int32)": 4, "tensor(bool)": 1,
               "tensor(int8)": 1, "tensor(uint8)": 1}


def check_input_sizes(session: ort.InferenceSession) -> None:
    """ModelError when an input's static dimensions make it over MAX_INPUT_BYTES."""
    for inp in session.get_inputs():
        shape = list(inp.shape or ())
        count = 1
        for dim in shape:
            count *= dim if isinstance(dim, int) and dim > 0 else 1
        size = count * _ITEM_BYTES.get(inp.type, 8)
        if size > MAX_INPUT_BYTES:
            raise ModelError(f"the model's input {inp.name!r} has static shape {shape}: {size / 2**30:,.3g} GiB "
                             f"per run, at most {MAX_INPUT_BYTES / 2**30:g} GiB are accepted")


def on_cuda(session: ort.InferenceSession) -> bool:
    return CUDA in session.get_providers()


def check_timeout(seconds: float | None) -> float | None:
    """``seconds`` if it is a usable run time limit (a number above 0, at most a day), else UsageError."""
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 86_400:
        raise UsageError(f"the timeout must be a number of seconds above 0 and at most 86400, not {seconds!r}")
    return float(seconds)


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Every model run inside this block (this thread, and the engine's run threads, which copy
    its context) is stopped after ``seconds`` (None: never) with a DeadlineError."""
    token = RUN_TIMEOUT.set(check_timeout(seconds))
    try:
        yield
    finally:
        RUN_TIMEOUT.reset(token)


class _Alarm:
    """One armed run: its options, when they are to be terminated, whether that happened."""

    __slots__ = ("at", "cancelled", "fired", "options")

    def __init__(self, at: float, options: ort.RunOptions) -> None:
        self.at, self.options, self.cancelled, self.fired = at, options, False, False


class _Watchdog:
    """One daemon thread terminating the runs that outlive their limit (a thread per run
    would cost more than a small model's run). Alarms are kept in a heap by time; a disarmed
    one stays there until its time comes or the heap is rebuilt (when most of it is disarmed)."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, _Alarm]] = []
        self.cancelled = 0
        self.order = itertools.count()
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None

    def arm(self, options: ort.RunOptions, seconds: float) -> _Alarm:
        alarm = _Alarm(time.monotonic() + seconds, options)
        with self.wake:
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name="blackbox-sal-watchdog", daemon=True)
                self.thread.start()
            first = not self.heap or alarm.at < self.heap[0][0]
            heapq.heappush(self.heap, (alarm.at, next(self.order), alarm))
            if first:
                self.wake.notify()
        return alarm

    def disarm(self, alarm: _Alarm) -> None:
        with self.wake:
            if alarm.fired or alarm.cancelled:  # no longer in the heap, or counted already
                return
            alarm.cancelled = True
            self.cancelled += 1
            if self.cancelled > 64 and self.cancelled * 2 > len(self.heap):
                self.heap = [e for e in self.heap if not e[2].cancelled]
                heapq.heapify(self.heap)
                self.cancelled = 0

    def _loop(self) -> None:
        with self.wake:
            while True:
                now = time.monotonic()
                while self.heap and self.heap[0][0] <= now:
                    _, _, alarm = heapq.heappop(self.heap)
                    if alarm.cancelled:
                        self.cancelled -= 1
                    else:
                        alarm.fired = True
                        alarm.options.terminate = True
                self.wake.wait(self.heap[0][0] - now if self.heap else None)


_WATCHDOG = _Watchdog()


def run(session: ort.InferenceSession, outputs: Sequence[str], feeds: Mapping[str, np.ndarray],
        what: str = "the model") -> list[Any]:
    """``session.run`` with onnxruntime's failures (an out-of-range index, an allocation too
    large, a shape the graph cannot take) as one ModelError line, and a run past its time
    limit (``RUN_TIMEOUT``) stopped with a DeadlineError."""
    options = RUN_OPTIONS.get()
    limit = RUN_TIMEOUT.get() if options is None else None
    alarm = None
    if limit is not None:
        options = ort.RunOptions()
        alarm = _WATCHDOG.arm(options, limit)
    try:
        return list(session.run(list(outputs), dict(feeds), options))
    except MemoryError as exc:
        raise ModelError(f"{what} ran out of memory (lower --batch-size)") from exc
    except Exception as exc:  # onnxruntime's own exception types (Fail, InvalidArgument, RuntimeException)
        if alarm is not None and alarm.fired:
            raise DeadlineError(f"{what} ran longer than {limit:g} s and was stopped (raise the limit with "
                                f"--timeout SECONDS)") from None
        raise ModelError(f"{what} failed when run: {first_line(exc)}") from exc
    finally:
        if alarm is not None:
            _WATCHDOG.disarm(alarm)


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, cut to ``limit`` characters."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering range(n)."""
    for start in range(0, n, max(size, 1)):
        yield slice(start, min(start + size, n))
