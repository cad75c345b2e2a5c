"""Numbers people can read, the same in the terminal and HTML.

A single value (f(x), f(x'), a delta) shows four significant digits (``5.989``, ``-0.03117``,
``2.5e-07``). A column of scores shares one format fixed by its largest magnitude: the peak shows
four significant digits and every other score as many decimals, so the column lines up and a
score a thousand times smaller than the peak reads as ``0.000`` beside it, whatever the model's
scale (a fixed four decimals printed ``+0.0000`` for every token of a model whose scores are
1e-5). Peaks below 1e-3 or from 1e5 on use scientific notation. Scores that cannot be negative
(the l2, l1 and max reductions: norms) carry no ``+``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: reductions whose scores are never negative
NONNEGATIVE = frozenset({"l2", "l1", "max"})


def value(v: float | None, signed: bool = False) -> str:
    """One number, four significant digits; ``n/a`` for None, ``nan``/``inf`` as Python."""
    if v is None:
        return "n/a"
    return f"{v:+.4g}" if signed else f"{v:.4g}"


def is_signed(reduce: str | None) -> bool:
    """Whether scores of this reduction can be negative (and so carry their sign)."""
    return reduce not in NONNEGATIVE


def column_format(values: Sequence[float], signed: bool = True) -> str:
    """The format spec shared by a column of ``values``: fixed decimals giving the peak four
    significant digits, or scientific notation for peaks below 1e-3 or from 1e5 on."""
    sign = "+" if signed else ""
    peak = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    if peak == 0.0:
        return f"{sign}.1f"
    if peak < 1e-3 or peak >= 1e5:
        return f"{sign}.3e"
    exponent = int(f"{peak:.3e}".split("e")[1])  # of the peak as shown: 9.99996 counts as 10.00
    return f"{sign}.{max(0, 3 - exponent)}f"


def column(values: Sequence[float], signed: bool = True) -> list[str]:
    """``values`` formatted with their shared :func:`column_format`."""
    spec = column_format(values, signed)
    return [format(v, spec) for v in values]
