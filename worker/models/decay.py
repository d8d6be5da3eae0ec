"""Exponential time decay without touching every score at every event.

Instead of multiplying all scores by ``2**(-dt/half_life)`` as time passes, new weight is
added scaled *up* by ``2**((t - t0)/half_life)``; relative order is the same, and only
when the scale grows past a bound do owners rescale their arrays once (``rebase``).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["DecayClock"]

_MAX_EXPONENT = 40.0  # 2**40 ~ 1e12: rebase well before float32 loses the small scores
# A jump of years in event time (a backfill, then live events) asks for 2**thousands,
# which overflows a float. Scores that old are worth nothing next to new weight anyway,
# so the factor stops at 2**120: it divides them to (about) zero and fits in a float32.
_MAX_FACTOR_EXPONENT = 120.0


class DecayClock:
    def __init__(self, half_life_s: float) -> None:
        self.half_life_s = half_life_s
        self.origin: float | None = None
        self.now = 0.0

    def advance(self, t: float) -> float | None:
        """Move the clock to event time ``t`` (never backwards).

        Returns the factor by which owners must divide their stored scores when the
        origin moved, else None.
        """
        if self.origin is None:
            self.origin = t
        self.now = max(self.now, t)
        exponent = (self.now - self.origin) / self.half_life_s
        if exponent <= _MAX_EXPONENT:
            return None
        self.origin = self.now
        return math.pow(2.0, min(exponent, _MAX_FACTOR_EXPONENT))

    def weight(self, t: float) -> float:
        """Scale for weight observed at ``t`` (t <= now gets less than fresher events)."""
        origin = self.origin if self.origin is not None else t
        return math.pow(2.0, (min(t, self.now) - origin) / self.half_life_s)

    def weights(self, times: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Vectorised :meth:`weight` for one micro-batch."""
        origin = self.origin if self.origin is not None else 0.0
        exponent = (np.minimum(times, self.now) - origin) / self.half_life_s
        return np.power(2.0, exponent)

    def current_scale(self) -> float:
        """Scale of 'one unit of weight right now': divide scores by it to read them."""
        return self.weight(self.now)
