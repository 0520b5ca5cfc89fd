"""Colour scales the pages read with: viridis for values, Okabe-Ito for categories.

Viridis (Smith and van der Walt, the matplotlib default; CC0) rises in lightness from end to end,
so a value reads the same in grey, and to the common colour-vision deficiencies, as in colour: its
nine anchor colours are interpolated here in sRGB. Okabe and Ito's eight colours stay apart for
deuteranopes and protanopes; the pages put a text label beside every category as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["CATEGORICAL", "Scale", "category", "luminance", "viridis"]

_VIRIDIS = (
    (68, 1, 84),
    (71, 44, 122),
    (59, 81, 139),
    (44, 113, 142),
    (33, 144, 141),
    (39, 173, 129),
    (92, 200, 99),
    (170, 220, 50),
    (253, 231, 37),
)
# Okabe & Ito (2008), "Color Universal Design": orange, sky blue, bluish green, yellow, blue, vermillion,
# reddish purple, grey (the grey instead of their black, which vanishes in dark mode).
CATEGORICAL = ("#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7", "#999999")


def viridis(t: float) -> str:
    """The viridis colour at ``t`` in [0, 1] (clamped) as ``#rrggbb``."""
    t = 0.0 if math.isnan(t) else min(1.0, max(0.0, t))
    x = t * (len(_VIRIDIS) - 1)
    i = min(int(x), len(_VIRIDIS) - 2)
    f = x - i
    lo, hi = _VIRIDIS[i], _VIRIDIS[i + 1]
    r, g, b = (round(a + (c - a) * f) for a, c in zip(lo, hi, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def luminance(colour: str) -> float:
    """The relative luminance (WCAG 2) of ``#rrggbb``: 0 for black, 1 for white."""
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def category(index: int) -> str:
    """The ``index``-th categorical colour (repeats after eight; labels tell repeats apart)."""
    return CATEGORICAL[index % len(CATEGORICAL)]


@dataclass(frozen=True, slots=True)
class Scale:
    """A value range mapped onto viridis, with the unit its legend shows."""

    lo: float
    hi: float
    unit: str | None = None

    @classmethod
    def around(cls, values: list[float], unit: str | None, fixed: tuple[float, float] | None = None) -> Scale:
        """The fixed range of a metric when it has one (0 to 100 %), else the values' own range, rounded outward."""
        if fixed is not None:
            return cls(fixed[0], fixed[1], unit)
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return cls(0.0, 1.0, unit)
        lo, hi = min(finite), max(finite)
        if hi <= lo:
            return cls(lo - 1, hi + 1, unit) if lo else cls(0.0, 1.0, unit)
        step = 10 ** math.floor(math.log10(hi - lo))
        return cls(math.floor(lo / step) * step, math.ceil(hi / step) * step, unit)

    def position(self, value: float) -> float:
        """Where ``value`` lies in the range: 0 at ``lo``, 1 at ``hi`` (clamped)."""
        if self.hi <= self.lo:
            return 0.0
        return min(1.0, max(0.0, (value - self.lo) / (self.hi - self.lo)))

    def colour(self, value: float) -> str:
        """The colour of ``value``."""
        return viridis(self.position(value))

    def ink(self, value: float) -> str:
        """Text colour readable on ``colour(value)``: black on the light end, white on the dark."""
        return "#000000" if luminance(self.colour(value)) > 0.18 else "#ffffff"
