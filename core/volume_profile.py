"""The share of a day's volume traded by each moment of the session, used to scale volume so far to a full day.

Volume accrues along a U-shaped intraday profile: the density is proportional to 1 + 1.737 (2f - 1)^2 at session
fraction f, 2.7 times heavier at the open and close than at midday, with about 22% of the day's volume before
10:30. Only real volume so far (an intraday source or a live quote) is scaled by it; daily bars have no volume so
far (common/types.py DAILY).
"""
from __future__ import annotations

import numpy as np

_U_WEIGHT = 1.737  # chosen so that the cumulative profile at 10:30 (f = 60/390) is 0.22


def volume_fraction(fraction: float | np.ndarray) -> float | np.ndarray:
    """Share of the day's volume traded by session fraction f (0..1), from the U-shaped profile."""
    f = np.clip(fraction, 0.0, 1.0)
    cubic = ((2.0 * f - 1.0) ** 3 + 1.0) / 6.0
    return (f + _U_WEIGHT * cubic) / (1.0 + _U_WEIGHT / 3.0)
