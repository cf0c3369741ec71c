"""Popularity: the baselines of the evaluation and the cold-start fallback.

pop_j = Σ over customers u who bought j of min(1, r_uj), with r_uj the decayed,
size-weighted purchases of the confidence matrix (interactions.py): distinct
buyers, where a customer whose purchases have faded (one order, years ago) counts
less than one. Per segment g, the counts are shrunk towards the overall shares so a
small segment does not rank by three purchases:

    segpop_gj = (n_gj + m · share_j) / (N_g + m),   share_j = pop_j / Σ pop

with m = ``SHRINKAGE`` pseudo-buyers. Rows are stored as shares (each row sums to 1).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

SHRINKAGE = 50.0


def popularity_table(strength: sp.csr_matrix, customer_segments: np.ndarray,
                     n_segments: int) -> np.ndarray:
    """Row 0: the overall share of each product; row 1 + g: segment g's (shrunk) share.

    ``strength`` is the (customers × products) r_uj (``Interactions.strength()``);
    ``customer_segments`` the segment index of each row (-1 unknown: counted in the
    overall row only).
    """
    recency = strength.minimum(1.0).tocsr()
    n_products = recency.shape[1]
    overall = np.asarray(recency.sum(axis=0), dtype=np.float64).ravel()
    total = overall.sum()
    share = overall / total if total > 0 else np.full(n_products, 1.0 / n_products)
    known = customer_segments >= 0
    members = sp.csr_matrix((np.ones(int(known.sum())), (customer_segments[known], np.flatnonzero(known))),
                            shape=(n_segments, recency.shape[0]))
    counts = np.asarray((members @ recency).todense(), dtype=np.float64)  # (segments, products)
    shrunk = (counts + SHRINKAGE * share) / (counts.sum(axis=1, keepdims=True) + SHRINKAGE)
    return np.vstack([share, shrunk]).astype(np.float32)


def popularity_order(scores: np.ndarray) -> np.ndarray:
    """Items from most to least popular; ties to the lower index (deterministic)."""
    return np.argsort(-scores, kind="stable")
