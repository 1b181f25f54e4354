"""What every bench reports its figures with."""

from __future__ import annotations

import numpy as np


def pct(values: list[float], q: float) -> float | None:
    """The ``q`` quantile of ``values`` (nearest rank), to 0.1; None if empty."""
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(round(q * (len(v) - 1))))], 1)


def logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> np.ndarray:
    """L2-regularised logistic regression by Newton's method; the first
    column of ``x`` is the bias (unpenalised)."""
    w = np.zeros(x.shape[1])
    penalty = np.r_[0.0, np.ones(x.shape[1] - 1)] * l2
    for _ in range(50):
        p = 1 / (1 + np.exp(-x @ w))
        grad = x.T @ (p - y) + penalty * w
        hess = (x.T * (p * (1 - p))) @ x + np.diag(penalty)
        w -= np.linalg.solve(hess, grad)
    return w
