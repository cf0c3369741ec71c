"""What a decision epoch leaves behind: its truth rows and its realized rate."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: "Not happened" for int64 times (compares after every real time).
NEVER = np.iinfo(np.int64).max


@dataclass
class EpochTruth:
    """Decisions at one truth cutoff (an epoch start): who, with what probability, outcome."""

    week: int
    index: np.ndarray  # rows of the entity arrays (lead or customer index)
    probability: np.ndarray
    outcome: np.ndarray  # bool
    signals: dict[str, np.ndarray]


@dataclass
class EpochRate:
    """Realized rate at every decision epoch (truth grid or warm-up), for world.json."""

    week: int
    eligible: int
    positives: int
