"""The one colour convention of every output: terminal, HTML, the server's page and the plots.

Blue is *for* the target (the score pushes it up), red is *against* it, white is neutral. The
two ends are ColorBrewer's RdBu ends (#2166ac, #b2182b): a diverging blue-red pair that stays
distinguishable with red-green colour blindness (deuteranopia, protanopia) and in greyscale,
unlike the green/red it replaces. A score is drawn as an opaque mix of white and its end colour,
the mix ``|score| / peak`` (the strongest score of the text is the full colour); text on it is
black or white, whichever contrasts more (never below 4.5:1). Plots use the same two colours
for signed bars and :func:`colormap` for images; lines that stand for categories (methods)
take :data:`CATEGORICAL`, Okabe and Ito's colour-blind safe set.

The server's page (``server/page.html``) holds the same two colours in its script;
``tests/test_render.py`` checks that they agree.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matplotlib is an optional extra, imported where a plot is drawn
    from matplotlib.colors import Colormap

RGB = tuple[int, int, int]

#: for the target: pushes the explained output up
FOR: RGB = (0x21, 0x66, 0xAC)
#: against the target: pushes it down
AGAINST: RGB = (0xB2, 0x18, 0x2B)
NEUTRAL: RGB = (0xFF, 0xFF, 0xFF)
BLACK: RGB = (0, 0, 0)
WHITE: RGB = (0xFF, 0xFF, 0xFF)

#: colours for lines that are categories, not signs (methods in a curve plot): Okabe & Ito's
#: colour-blind safe set (blue, vermillion, bluish green, orange, reddish purple, sky blue,
#: yellow, black), in that order
CATEGORICAL = ("#0072b2", "#d55e00", "#009e73", "#e69f00", "#cc79a7", "#56b4e9", "#f0e442", "#000000")

#: the legend's words, shared by the terminal and HTML
LEGEND = "blue: for the target, red: against it; the stronger the colour, the larger |score| (the strongest is full)"


def hex_of(rgb: RGB) -> str:
    """``#rrggbb``."""
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def end_of(score: float) -> RGB:
    """The end colour of a score's sign (zero and NaN count as for)."""
    return AGAINST if score < 0 else FOR


def strength(score: float, peak: float) -> float:
    """|score| / peak in [0, 1]; 0 for a zero peak or a score that is not finite."""
    if not peak > 0 or not math.isfinite(score):
        return 0.0
    return min(abs(score) / peak, 1.0)


def mix(score: float, peak: float) -> RGB:
    """The opaque colour of a score: white mixed with its end colour by :func:`strength`."""
    a, end = strength(score, peak), end_of(score)
    r, g, b = (math.floor(255 + (c - 255) * a + 0.5) for c in end)  # JavaScript's Math.round, as the page
    return (r, g, b)


def _luminance(rgb: RGB) -> float:
    def linear(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def ink(rgb: RGB) -> RGB:
    """Black or white text on ``rgb``, whichever has the higher WCAG contrast."""
    lum = _luminance(rgb)
    return BLACK if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else WHITE


def colormap() -> Colormap:
    """The same convention as a matplotlib colour map (red, white, blue from -1 to +1): use it
    with a symmetric ``vmin=-vmax`` so that white is zero."""
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list(
        "blackbox-sal", [tuple(c / 255 for c in AGAINST), (1.0, 1.0, 1.0), tuple(c / 255 for c in FOR)])
