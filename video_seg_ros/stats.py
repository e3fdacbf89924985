"""Small statistics shared by the node's diagnostics, the demo's summary and the benchmarks."""

from __future__ import annotations

import numpy as np


def percentile(values, q: float) -> float | None:
    """The ``q``-th percentile (0..100) of ``values``; None when there are none."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None
