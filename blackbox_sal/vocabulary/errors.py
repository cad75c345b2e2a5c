"""One error tree for the library, the CLI and (later) the server.

Every error a user can cause is a :class:`SalError` subclass carrying the CLI exit code; the
CLI prints ``blackbox-sal: error: <message>`` and exits with that code. Anything else that
escapes is a bug and keeps its traceback.

==========  ===========================================================================
exit code   meaning
==========  ===========================================================================
0           success
1           internal error (a bug: please report it with the traceback)
2           bad usage or bad input: unknown option value, empty or too long text,
            unknown label, a baseline token the tokenizer lacks
3           the model cannot be loaded or used: missing path, not an ONNX file, no
            embedding lookup to split at, an output of the wrong shape, unsafe file
4           the requested backend or device is not available here
5           a deadline passed: one model run (loading's checks included) took longer than
            ``--timeout`` seconds and was stopped (a runaway graph, a Loop of 2^62 steps)
130         interrupted (Ctrl-C)
==========  ===========================================================================
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SalError(Exception):
    """Base of every error a user can cause; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(SalError):
    """A bad option value or a bad request (exit code 2)."""

    exit_code = 2


class InputError(SalError):
    """Text that cannot be explained: empty, too long, untokenizable (exit code 2)."""

    exit_code = 2


class TooLongError(InputError):
    """A text over the character or token limit (exit code 2; a server answers 413)."""


class ModelError(SalError):
    """The model cannot be loaded or used (exit code 3)."""

    exit_code = 3


class UnavailableError(SalError):
    """The requested backend or device is not available on this machine (exit code 4)."""

    exit_code = 4


class Interrupted(SalError, KeyboardInterrupt):
    """Ctrl-C during a job that saves its work, with what was saved and how to go on (exit code
    130). A KeyboardInterrupt too, so that code catching the interrupt still does."""

    exit_code = 130
class DeadlineError(SalError):
    """A model run took longer than its time limit and was stopped (exit code 5; a server
    answers 504). Not a ModelError: a slow run says nothing about whether the model can be
    used, so nothing caches it as a failure or falls back to another backend on it."""

    exit_code = 5


def unknown_choice(kind: str, name: str, choices: Iterable[str]) -> UsageError:
    """A UsageError for an unknown registry name: lists the choices, suggests the closest."""
    options = sorted(choices)
    close = difflib.get_close_matches(name, options, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return UsageError(f"unknown {kind} {name!r}{hint} (choose from: {', '.join(options)})")
