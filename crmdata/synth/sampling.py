"""Random-number plumbing shared by the simulators: named streams and vectorized draws."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence

import numpy as np


def stream(seed: int, name: str) -> np.random.Generator:
    """An independent generator for one component of the world.

    Streams are keyed by name, so drawing more numbers in one component (say,
    purchases) never shifts the numbers another one (say, leads) sees: a change
    in one part of the simulator leaves the rest of a seeded world unchanged.
    """
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


def choose(rng: np.random.Generator, weights: Sequence[float], size: int) -> np.ndarray:
    """Indexes drawn with the given (unnormalised) weights, as int16."""
    cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
    return np.searchsorted(cdf, rng.random(size) * cdf[-1], side="right").astype(np.int16)


def choose_rows(rng: np.random.Generator, weights: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One index per entry of ``rows``, drawn with the weights of that row of ``weights``."""
    cdf = np.cumsum(weights, axis=1)
    cdf = cdf / cdf[:, -1:]
    u = rng.random(rows.size)
    # Count the categories whose cumulative weight is below u (at most a handful of columns).
    return (cdf[rows] < u[:, None]).sum(axis=1).astype(np.int16)


def thinned_events(
    rng: np.random.Generator, n: int, cap: float, rate_at: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Indexes in [0, n) of Poisson events with per-entry rates (capped at ``cap``), by thinning.

    Draws Poisson(n * cap) candidates on uniformly random entries and keeps each
    with probability rate/cap, so each entry gets Poisson(min(rate, cap)) events.
    ``rate_at(idx)`` is evaluated on the candidates only: the cost is proportional
    to the number of events, not to ``n``, which is what makes rare events
    (tickets, complaints, surveys) cheap for a million customers.
    """
    if n == 0:
        return np.empty(0, dtype=np.int32)
    k = int(rng.poisson(n * cap))
    idx = rng.integers(0, n, k, dtype=np.int32)
    keep = rng.random(k) * cap < rate_at(idx)
    return idx[keep]


def growing_times(rng: np.random.Generator, size: int, span_s: int, growth: float) -> np.ndarray:
    """Sorted times in [0, span_s) whose density grows linearly by ``growth`` (end vs start)."""
    u = rng.random(size)
    a = (growth - 1.0) / 2.0
    if abs(a) < 1e-9:
        x = u
    else:
        # Inverse of the CDF F(x) = (x + a x^2) / (1 + a) of the density ∝ 1 + 2a x.
        x = (-1.0 + np.sqrt(1.0 + 4.0 * a * u * (1.0 + a))) / (2.0 * a)
    return np.sort(np.minimum((x * span_s).astype(np.int64), span_s - 1))


def rank_auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney U with average ranks for ties); NaN when a class is missing."""
    label = np.asarray(label, dtype=bool)
    positives = int(label.sum())
    negatives = label.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(score, kind="stable")
    sorted_score = np.asarray(score)[order]
    # Tied scores share the average of the ranks they span.
    first = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    last = np.r_[first[1:], sorted_score.size]
    average = (first + last + 1) / 2.0  # ranks are 1-based
    ranks = np.empty(score.size, dtype=np.float64)
    ranks[order] = np.repeat(average, last - first)
    return float((ranks[label].sum() - positives * (positives + 1) / 2) / (positives * negatives))

