"""Every policy ranked for the same test customers, their metrics, and the champion comparison.

The test rows are the split's (``interactions.time_split``): customers active before
the cutoff who bought an eligible product in the window. On exactly those rows the
model is compared with a popularity baseline, a per-segment popularity baseline
and, on a synthetic world, the oracle ranking by the true affinities; the promotion
gate ranks the champion on them too, so the two NDCG@10 are comparable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from crmdata.errors import CrmscoreError
from crmdata.truth import load_truth, truth_dir
from training.nbp.interactions import ORDERED_AT, LakeData, Split, index_of, owned_once, time_split
from training.nbp.persist import load_recommender
from training.nbp.popularity import popularity_order, popularity_table
from training.nbp.recommender import BLOCK_USERS, MODEL_NAME, Recommender
from training.ranking_metrics import (
    DEFAULT_KS,
    HEADLINE,
    evaluate_rankings,
    metric_key,
    ranking_metrics,
    top_k_from_order,
    top_k_from_scores,
)

log = logging.getLogger(__name__)

#: Depth of the evaluated rankings (the plot goes to here; the table is at DEFAULT_KS).
MAX_K = 20


@dataclass(frozen=True)
class Evaluation:
    """Rankings of every policy on the same test customers, and their metrics."""

    recommended: dict[str, np.ndarray]  # policy → (test customers, MAX_K) product indexes
    metrics: dict[str, dict]  # policy → evaluate_rankings dict
    cold: np.ndarray  # the model's cold-start rows


def evaluated_customers(split: Split) -> np.ndarray:
    """The ids of the split's test customers."""
    return split.train.customer_ids[split.test_rows]


def model_rankings(rec: Recommender, split: Split, data: LakeData, k: int = MAX_K) -> tuple[np.ndarray, np.ndarray]:
    """A recommender's top-k for the split's test customers, in the split's product order.

    A recommender trained on this split already holds its history; any other (the
    champion) is first given the split's pre-cutoff orders, so ownership, order counts
    and fold-in of customers it never saw come from the same data as the challenger's.
    """
    same = rec.history is split.train.confidence
    if not same:
        rec = rec.with_orders(data.orders.filter(pl.col(ORDERED_AT) < split.cutoff), split.cutoff, data.customers)
    ranked = rec.rank(evaluated_customers(split), k)
    items = ranked.items
    if not same or not np.array_equal(rec.product_ids, data.catalogue.product_ids):
        mapping = index_of(rec.product_ids, data.catalogue.product_ids)
        items = np.where(items >= 0, mapping[np.maximum(items, 0)], -1)
    return items, ranked.cold


def popularity_rankings(rec: Recommender, owned: sp.csr_matrix, pop_rows: np.ndarray, k: int = MAX_K) -> np.ndarray:
    """Top-k by a popularity row (0 = overall, 1+g = segment g), owned one-offs skipped."""
    out = np.full((len(pop_rows), k), -1, dtype=np.int64)
    orders = {int(r): popularity_order(rec.popularity[r]) for r in np.unique(pop_rows)}
    for start in range(0, len(pop_rows), BLOCK_USERS):
        sl = slice(start, start + BLOCK_USERS)
        dense = owned[sl].toarray() > 0
        for r, order in orders.items():
            rows = np.flatnonzero(pop_rows[sl] == r)
            if rows.size:
                out[start + rows] = top_k_from_order(order, k, dense[rows][:, order])
    return out


def oracle_rankings(lake: Path, split: Split, data: LakeData, owned: sp.csr_matrix, k: int = MAX_K) -> np.ndarray | None:
    """Top-k by the true affinities of a synthetic world (None for a real lake)."""
    if not truth_dir(lake).is_dir():
        return None
    try:
        affinity = load_truth(lake).affinity
        columns = affinity.product_rows(data.catalogue.product_ids)
    except Exception as exc:  # noqa: BLE001  (a partial, older or edited truth folder: no oracle)
        log.warning("no oracle: cannot use the ground truth of %s (%s)", lake, exc)
        return None
    customers = evaluated_customers(split)
    out = np.full((len(customers), k), -1, dtype=np.int64)
    for start in range(0, len(customers), BLOCK_USERS):
        sl = slice(start, start + BLOCK_USERS)
        scores = affinity.scores(customers[sl])[:, columns]
        out[sl] = top_k_from_scores(scores, k, owned[sl].toarray() > 0)
    return out


def evaluate_policies(lake: Path, rec: Recommender, split: Split, data: LakeData,
                      ks: Sequence[int] = DEFAULT_KS) -> Evaluation:
    """The model, both popularity baselines and (synthetic worlds) the oracle, on the same rows."""
    owned = owned_once(split.train.confidence[split.test_rows], data.catalogue.repeatable)
    model, cold = model_rankings(rec, split, data)
    pop_rows = rec.popularity_rows(np.asarray(split.test_rows))
    recommended = {
        "model": model,
        "popularity": popularity_rankings(rec, owned, np.zeros(len(split.test_rows), dtype=np.int64)),
        "segment popularity": popularity_rankings(rec, owned, pop_rows),
    }
    oracle = oracle_rankings(lake, split, data, owned)
    if oracle is not None:
        recommended["oracle"] = oracle
    segments = np.asarray(rec.spec.segments + ["unknown"], dtype=object)[pop_rows - 1]
    slices = {"warm": ~cold, "cold_start": cold}
    metrics = {
        policy: evaluate_rankings(r[:, :max(ks)], split.relevant, data.catalogue.n, ks, slices=slices,
                                  segments=segments)
        for policy, r in recommended.items()
    }
    return Evaluation(recommended=recommended, metrics=metrics, cold=cold)


def flat_metrics(evaluation: Evaluation) -> dict[str, float]:
    """The model's metrics overall, per segment and per slice; the other policies overall.

    (Everything else is in metrics.json: MLflow metrics are for comparing runs.)
    """
    from training.metrics import flatten

    m = evaluation.metrics["model"]
    flat = flatten(m)
    flat.update({f"slice.{s}.{k}": v for s, vals in m["by_slice"].items() for k, v in vals.items() if not np.isnan(v)})
    prefixes = {"popularity": "baseline.", "segment popularity": "segment_baseline.", "oracle": "oracle."}
    for policy, prefix in prefixes.items():
        if policy in evaluation.metrics:
            flat.update(flatten({"overall": evaluation.metrics[policy]["overall"]}, prefix=prefix))
    return flat


def compare_with_champion(client: Any, split: Split, data: LakeData,
                          new: dict[str, float]) -> tuple[bool, str, dict | None]:
    """The gate: promote only if there is no champion or the challenger's NDCG@10 beats it on the same rows.

    Also returns the champion's metrics on those rows when it could be ranked (the
    run logs them next to the challenger's).
    """
    from training.registry import CHAMPION, version_by_alias

    current = version_by_alias(client, MODEL_NAME, CHAMPION)
    if current is None:
        return True, "no champion yet", None
    try:
        champion = load_recommender(version=str(current.version), client=client)
    except CrmscoreError as exc:
        return False, f"champion v{current.version} cannot be loaded ({exc}); promote by hand", None
    if champion.spec.as_of > split.cutoff:
        return False, (f"champion v{current.version} was fitted on orders up to {champion.spec.as_of:%Y-%m-%d}, "
                       f"after this split's cutoff {split.cutoff:%Y-%m-%d}: not comparable; promote by hand"), None
    items, cold = model_rankings(champion, split, data)
    champ = evaluate_rankings(items[:, :10], split.relevant, data.catalogue.n, DEFAULT_KS,
                              slices={"warm": ~cold, "cold_start": cold})
    ours, theirs = new[HEADLINE], champ["overall"][HEADLINE]
    facts = (f"NDCG@10 {ours:.4f} vs champion v{current.version} {theirs:.4f} on the same "
             f"{len(split.test_rows)} test customers")
    if ours > theirs:
        return True, f"beats the champion: {facts}", champ
    return False, f"does not beat the champion: {facts}", champ


def overall_popularity_rankings(split: Split, repeatable: np.ndarray, k: int = MAX_K) -> np.ndarray:
    """Top-k of the split's test customers by the popularity of the orders before its cutoff.

    The trainer's baseline (``popularity_table``'s overall row: distinct buyers, a faded
    purchase counting less than one), computed from the split's own history, so it
    needs no model; owned one-off products are skipped, as the model skips them.
    """
    history = split.train
    share = popularity_table(history.strength(), np.full(history.confidence.shape[0], -1, dtype=np.int16), 0)[0]
    order = popularity_order(share)
    owned = owned_once(history.confidence[split.test_rows], repeatable)
    out = np.full((len(split.test_rows), k), -1, dtype=np.int64)
    for start in range(0, len(split.test_rows), BLOCK_USERS):
        sl = slice(start, start + BLOCK_USERS)
        top = top_k_from_order(order, k, (owned[sl].toarray() > 0)[:, order])
        out[sl, :top.shape[1]] = top
    return out


def evaluate_at_origin(rec: Recommender, data: LakeData, origin: datetime, window_days: int,
                       k: int = 10) -> dict[str, float]:
    """A recommender used on ``origin`` and judged on the purchases of the window after it.

    The recommender (fitted on whatever it was fitted on) is given the orders before the
    origin, as scoring at that date would give it; the customers judged are those with an
    order before the origin who bought an eligible product in the window (the only ones
    whose NDCG is defined). The popularity baseline ranks the same customers by the
    products most bought before the origin. Returns ``rows`` and, for the model and
    ``popularity_``, NDCG@k and hit rate@k.
    """
    split = time_split(data, window_days, origin, rec.spec.confidence)
    model, _ = model_rankings(rec, split, data, k)
    popular = overall_popularity_rankings(split, data.catalogue.repeatable, k)
    out: dict[str, float] = {"rows": float(len(split.test_rows))}
    for prefix, ranked in (("", model), ("popularity_", popular)):
        got = ranking_metrics(ranked, split.relevant, data.catalogue.n, (k,))
        for name in ("ndcg", "hit_rate"):
            out[f"{prefix}{metric_key(name, k)}"] = got[metric_key(name, k)]
    return out
