"""The next-best-product recommender as serving and batch jobs use it.

A ``Recommender`` holds plain arrays — factors, id maps, the customers' purchase
history, popularity tables — and answers "what should each of these customers
buy next?", vectorized over customers. It is built by ``training.nbp.train`` and
written to and read back from ``.npy`` + ``.json`` files by ``training.nbp.persist``
(nothing is pickled); this module only answers.

Rules every answer follows:

- an owned non-repeatable product is never recommended; a repeatable one may be;
- the request's own exclusion list is respected;
- customers the model does not know, or with fewer than ``min_orders`` orders,
  get segment popularity (optionally boosted in the categories they bought from)
  and ``cold_start = True``;
- each item carries a reason: the past product that contributed most to its
  score (ALS's own decomposition, as ``implicit``'s ``explain``), or
  "popular in your segment".
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from typing import Literal

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel

from training.nbp.interactions import (
    CUSTOMER_ID,
    SEGMENT,
    ConfidenceParams,
    build_interactions,
    owned_once,
)
from training.ranking_metrics import top_k_from_scores
from training.tasks import NBP

log = logging.getLogger(__name__)

MODEL_NAME = NBP.model_name
Algorithm = Literal["als", "bpr"]

REASON_SEGMENT = "popular in your segment"
REASON_OVERALL = "popular with all customers"
REASON_AGAIN = "you bought it before"
REASON_BOUGHT = "because you bought "

#: Users scored per block in batch calls (bounds the dense score and explain buffers).
BLOCK_USERS = 16_384
#: Float budget of one explain block (users × history length × factors).
EXPLAIN_BUDGET = 24_000_000
#: Floor of a popularity share before its log (a product nobody bought yet).
MIN_SHARE = 1e-5
#: Floats in one block of dense scores (customers × products) in batch top-k.
SCORE_BUDGET = 4_000_000


class NbpSpec(BaseModel):
    """How the factors were made and how the recommender answers; stored as spec.json."""

    model_name: str = MODEL_NAME
    algorithm: Algorithm
    factors: int
    regularization: float
    confidence: ConfidenceParams
    #: Customers with fewer product orders than this get the popularity fallback.
    min_orders: int
    #: Fallback score multiplier for products in a category the customer bought from.
    category_boost: float
    #: Warm score = u · v_j + popularity_weight · ln(segment share of j): the popularity prior
    #: that implicit-feedback ALS lacks (it models "ever bought", not "how often bought").
    popularity_weight: float = 0.0
    #: The history the factors were fitted on ends here (the evaluation cutoff).
    as_of: datetime
    window_days: int
    segments: list[str]
    categories: list[str]
    format_version: int = 1


class Recommendation(BaseModel):
    product_id: str
    score: float
    reason: str
    #: The past product behind the reason (None for popularity).
    reason_product_id: str | None = None


class CustomerRecommendations(BaseModel):
    customer_id: str
    cold_start: bool
    items: list[Recommendation]


@dataclass(frozen=True)
class Ranked:
    """A batch answer in index form: (n, k) product indexes (-1 = empty), scores, reasons."""

    items: np.ndarray
    scores: np.ndarray
    cold: np.ndarray  # bool per row
    reason_items: np.ndarray | None  # (n, k) product index of the reason, -1 = popularity


@dataclass(frozen=True)
class Recommender:
    spec: NbpSpec
    customer_ids: np.ndarray  # str, (U,)
    product_ids: np.ndarray  # str, (P,)
    product_names: np.ndarray  # str, (P,)
    product_categories: np.ndarray  # int, (P,) index into spec.categories, -1 unknown
    repeatable: np.ndarray  # bool, (P,)
    user_factors: np.ndarray  # float32, (U, f)
    item_factors: np.ndarray  # float32, (P, f)
    history: sp.csr_matrix  # (U, P) confidences the factors were fitted on
    orders: np.ndarray  # int64, (U,) product orders per customer
    customer_segments: np.ndarray  # int16, (U,) index into spec.segments, -1 unknown
    popularity: np.ndarray  # float32, (1 + segments, P): overall share, then per segment
    typical_amount: np.ndarray  # float64, (P,)
    typical_quantity: np.ndarray  # float64, (P,)
    name: str = MODEL_NAME
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    num_threads: int = 0

    # --- lookups -------------------------------------------------------------------

    @property
    def n_customers(self) -> int:
        return int(self.customer_ids.size)

    @property
    def n_products(self) -> int:
        return int(self.product_ids.size)

    @cached_property
    def _customer_index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.customer_ids.tolist())}

    @cached_property
    def _product_index(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.product_ids.tolist())}

    def customer_rows(self, customer_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row of each customer, -1 for customers the model does not know.

        Through a dict built once per model, for a request and a batch block alike: a
        vectorized Enum cast rebuilds its map of every known id on each call (1-2 s per
        block at 1M customers, so batch scoring grew with customers x blocks).
        """
        index = self._customer_index
        return np.fromiter((index.get(str(c), -1) for c in customer_ids), dtype=np.int64, count=len(customer_ids))

    def product_rows(self, product_ids: Sequence[str]) -> np.ndarray:
        index = self._product_index
        return np.asarray([index.get(str(p), -1) for p in product_ids], dtype=np.int64)

    # --- the public questions --------------------------------------------------------

    def recommend(self, customer_ids: Sequence[str], k: int = 10,
                  exclude: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
                  segments: Mapping[str, str] | None = None) -> list[CustomerRecommendations]:
        """Top-k products for each customer, with reasons and the cold-start flag.

        ``exclude`` is one list for every customer or a list per customer id;
        ``segments`` gives the segment of customers the model does not know (or
        overrides a known one) for the popularity fallback.
        """
        ids = [str(c) for c in customer_ids]
        ranked = self.rank(ids, k, exclude=exclude, segments=segments, reasons=True)
        out = []
        for i, customer in enumerate(ids):
            items = []
            for r in range(ranked.items.shape[1]):
                j = int(ranked.items[i, r])
                if j < 0:
                    break
                reason_j = int(ranked.reason_items[i, r]) if ranked.reason_items is not None else -1
                items.append(Recommendation(
                    product_id=str(self.product_ids[j]), score=float(ranked.scores[i, r]),
                    reason=self._reason_text(j, reason_j, self._segment_known(customer, segments)),
                    reason_product_id=str(self.product_ids[reason_j]) if reason_j >= 0 else None,
                ))
            out.append(CustomerRecommendations(customer_id=customer, cold_start=bool(ranked.cold[i]), items=items))
        return out

    def recommend_all(self, k: int = 10, customer_ids: Sequence[str] | None = None,
                      reasons: bool = True, segments: Mapping[str, str] | None = None,
                      exclude: Sequence[str] | Mapping[str, Sequence[str]] | None = None) -> pl.DataFrame:
        """Top-k for every known customer (or the given ones) in one vectorized pass.

        One row per (customer, rank): customer_id, rank, product_id, score, reason,
        reason_product_id, cold_start. This is what batch scoring writes. ``segments``
        and ``exclude`` as in ``recommend``.
        """
        ids = self.customer_ids if customer_ids is None else np.asarray([str(c) for c in customer_ids])
        frames = []
        for start in range(0, max(len(ids), 1), BLOCK_USERS):
            block = ids[start:start + BLOCK_USERS]
            if len(block) == 0:
                break
            ranked = self.rank(block, k, exclude=exclude, segments=segments, reasons=reasons)
            frames.append(self._long_frame(block, ranked, segments))
        if not frames:
            return self._long_frame(np.asarray([], dtype=str), Ranked(np.zeros((0, k), np.int64),
                                    np.zeros((0, k)), np.zeros(0, bool), None), segments)
        return pl.concat(frames)

    # --- the vectorized core ---------------------------------------------------------

    def rank(self, customer_ids: Sequence[str] | np.ndarray, k: int,
             exclude: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
             segments: Mapping[str, str] | None = None, reasons: bool = False) -> Ranked:
        """Index-form top-k for a batch of customers (warm: factors; cold: popularity)."""
        rows = self.customer_rows(customer_ids)
        n, k = len(rows), min(k, self.n_products)
        known = rows >= 0
        safe = np.maximum(rows, 0)
        # Warm = known, enough orders, and factors (BPR cannot fold customers in: zero rows).
        warm = known & (self.orders[safe] >= self.spec.min_orders) & np.any(self.user_factors[safe] != 0, axis=1)
        blocked = self._blocked(rows, exclude, [str(c) for c in customer_ids])
        items = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), np.nan, dtype=np.float32)
        reason_items = np.full((n, k), -1, dtype=np.int64) if reasons else None
        if warm.any():
            w = np.flatnonzero(warm)
            pop_rows = self._segment_rows([str(customer_ids[i]) for i in w], rows[w], segments)
            items[w], scores[w] = self._top_k_factors(self.user_factors[rows[w]], pop_rows, blocked[w], k)
            if reasons:
                reason_items[w] = self._explain(rows[w], items[w])
        if (~warm).any():
            c = np.flatnonzero(~warm)
            seg = self._segment_rows([str(customer_ids[i]) for i in c], rows[c], segments)
            history = self.history[np.maximum(rows[c], 0)]
            history = sp.diags(known[c].astype(np.float32)) @ history  # unknown customers: no history
            items[c], scores[c] = self._top_k_popular(seg, history, blocked[c], k)
        return Ranked(items=items, scores=scores, cold=~warm, reason_items=reason_items)

    def _blocked(self, rows: np.ndarray, exclude: Sequence[str] | Mapping[str, Sequence[str]] | None,
                 ids: list[str]) -> sp.csr_matrix:
        """(n, P) pairs never to recommend: owned one-offs plus the request's exclusions."""
        n = len(rows)
        owned = owned_once(self.history[np.maximum(rows, 0)], self.repeatable)
        owned = sp.diags((rows >= 0).astype(np.float32)) @ owned  # unknown customers own nothing
        blocked = sp.csr_matrix(owned, dtype=np.float32)
        if exclude:
            if isinstance(exclude, Mapping):
                pairs = [(i, p) for i, c in enumerate(ids) for p in exclude.get(c, ())]
            else:
                pairs = [(i, p) for i in range(n) for p in exclude]
            if pairs:
                r, products = zip(*pairs, strict=True)
                cols = self.product_rows(list(products))
                ok = cols >= 0
                extra = sp.csr_matrix((np.ones(int(ok.sum()), np.float32), (np.asarray(r)[ok], cols[ok])),
                                      shape=(n, self.n_products))
                blocked = blocked + extra
        blocked = blocked.tocsr()
        blocked.sum_duplicates()
        blocked.data[:] = 1.0
        return blocked

    def _top_k_factors(self, vectors: np.ndarray, pop_rows: np.ndarray, blocked: sp.csr_matrix,
                       k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by factor score for a batch of customers, blocked pairs filtered out.

        One matrix product per block of customers, blocked pairs set to -inf, then a
        partial sort. (implicit's ``topk`` does the same without a filter, but with a
        per-customer filter matrix it slices that matrix row by row: 20 s instead of 1 s
        for 100k customers.) The popularity prior adds ``popularity_weight`` × ln(share
        of the customer's segment) to every score.
        """
        n, n_items = len(vectors), self.n_products
        ids = np.full((n, k), -1, dtype=np.int64)
        scores = np.full((n, k), np.nan, dtype=np.float32)
        prior = None
        if self.spec.popularity_weight:
            prior = (self.spec.popularity_weight * np.log(np.maximum(self.popularity, MIN_SHARE))).astype(np.float32)
        step = max(1, SCORE_BUDGET // max(n_items, 1))
        for start in range(0, n, step):
            stop = min(start + step, n)
            s = vectors[start:stop] @ self.item_factors.T
            if prior is not None:
                s += prior[pop_rows[start:stop]]
            sub = blocked[start:stop]
            s[np.repeat(np.arange(stop - start), np.diff(sub.indptr)), sub.indices] = -np.inf
            top = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < n_items else np.tile(np.arange(n_items), (len(s), 1))
            val = np.take_along_axis(s, top, axis=1)
            order = np.argsort(-val, axis=1, kind="stable")
            top, val = np.take_along_axis(top, order, axis=1), np.take_along_axis(val, order, axis=1)
            empty = ~np.isfinite(val)
            top[empty] = -1
            val[empty] = np.nan
            ids[start:stop, : top.shape[1]], scores[start:stop, : top.shape[1]] = top, val
        return ids, scores

    def popularity_rows(self, rows: np.ndarray) -> np.ndarray:
        """Popularity row of known customers by model row: 1 + segment index, 0 if unknown."""
        return self.customer_segments[rows].astype(np.int64) + 1

    def _segment_rows(self, ids: list[str], rows: np.ndarray, segments: Mapping[str, str] | None) -> np.ndarray:
        """Popularity row per customer: 1 + segment index, or 0 (overall) if unknown."""
        seg = np.where(rows >= 0, self.customer_segments[np.maximum(rows, 0)], -1).astype(np.int64)
        if segments:
            lookup = {s: i for i, s in enumerate(self.spec.segments)}
            for i, c in enumerate(ids):
                if c in segments:
                    seg[i] = lookup.get(str(segments[c]), -1)
        return seg + 1

    def _segment_known(self, customer: str, segments: Mapping[str, str] | None) -> bool:
        if segments and customer in segments:
            return str(segments[customer]) in self.spec.segments
        row = self.customer_rows([customer])[0]
        return bool(row >= 0 and self.customer_segments[row] >= 0)

    def _top_k_popular(self, pop_rows: np.ndarray, history: sp.csr_matrix, blocked: sp.csr_matrix,
                       k: int) -> tuple[np.ndarray, np.ndarray]:
        """Segment popularity, boosted in the categories each customer bought from."""
        items = np.full((len(pop_rows), k), -1, dtype=np.int64)
        scores = np.full((len(pop_rows), k), np.nan, dtype=np.float32)
        cats = self.product_categories
        n_cat = max(len(self.spec.categories), 1)
        for start in range(0, len(pop_rows), BLOCK_USERS):
            sl = slice(start, start + BLOCK_USERS)
            s = self.popularity[pop_rows[sl]].astype(np.float64)
            if self.spec.category_boost and history.nnz:
                h = history[sl].tocoo()
                bought = np.zeros((s.shape[0], n_cat), dtype=bool)
                valid = cats[h.col] >= 0
                bought[h.row[valid], cats[h.col[valid]]] = True
                in_cat = np.where(cats >= 0, bought[:, np.maximum(cats, 0)], False)
                s *= 1.0 + self.spec.category_boost * in_cat
            top = top_k_from_scores(s, k, blocked[sl].toarray() > 0)
            items[sl] = top
            scores[sl] = np.where(top >= 0, np.take_along_axis(s, np.maximum(top, 0), axis=1), np.nan)
        return items, scores

    def _explain(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """For each recommended item, the past product that contributed most to its score.

        ALS: the score of item i for user u decomposes exactly over u's past items j as
        Σ_j c_uj · y_iᵀ W_u y_j with W_u = (YᵀY + λI + Σ_j (c_uj − 1) y_j y_jᵀ)⁻¹ (Hu et al.,
        section 5; implicit's ``explain``). We solve it for a block of users at once
        instead of one Cholesky per user. BPR has no such decomposition: its reason is
        the most similar past product (largest y_iᵀ y_j).
        """
        out = np.full(items.shape, -1, dtype=np.int64)
        history = self.history[rows]
        lengths = np.diff(history.indptr)
        y = self.item_factors.astype(np.float64)
        f = y.shape[1]
        base = y.T @ y + self.spec.regularization * np.eye(f)
        order = np.argsort(lengths, kind="stable")  # similar lengths together: less padding
        start = 0
        while start < len(order):
            block = min(1024, len(order) - start)
            # Sorted ascending, so the block's last user is its longest history.
            while block > 1 and int(lengths[order[start + block - 1]]) * block * f > EXPLAIN_BUDGET:
                block //= 2
            sel = order[start:start + block]
            width = max(int(lengths[sel[-1]]), 1)
            start += block
            sub = history[sel]
            pad_idx = np.zeros((len(sel), width), dtype=np.int64)
            conf = np.zeros((len(sel), width))
            mask = np.arange(width)[None, :] < np.diff(sub.indptr)[:, None]
            pad_idx[mask] = sub.indices
            conf[mask] = sub.data
            yj = y[pad_idx]  # (B, J, f)
            rec = items[sel]
            yr = y[np.maximum(rec, 0)]  # (B, k, f)
            if self.spec.algorithm == "als":
                a = base + np.matmul(yj.transpose(0, 2, 1) * ((conf - 1.0) * mask)[:, None, :], yj)
                w = np.linalg.solve(a, yr.transpose(0, 2, 1))  # (B, f, k)
                contrib = np.matmul(yj, w) * conf[:, :, None]  # (B, J, k)
            else:
                contrib = np.matmul(yj[..., :-1], yr[..., :-1].transpose(0, 2, 1))  # drop the bias column
            contrib[~mask] = -np.inf
            best = np.argmax(contrib, axis=1)  # (B, k)
            reason = np.take_along_axis(pad_idx, best, axis=1)
            # Nothing in the past pushes the item up (e.g. a product with no sales yet):
            # naming a past product would mislead, so it falls back to the popularity reason.
            pushed = np.take_along_axis(contrib, best[:, None, :], axis=1)[:, 0, :] > 0
            reason[(rec < 0) | ~pushed] = -1
            out[sel] = reason
        return out

    # --- text --------------------------------------------------------------------------

    def _reason_text(self, item: int, reason_item: int, segment_known: bool) -> str:
        if reason_item < 0:
            return REASON_SEGMENT if segment_known else REASON_OVERALL
        if reason_item == item:
            return REASON_AGAIN
        return REASON_BOUGHT + str(self.product_names[reason_item])

    def _long_frame(self, ids: np.ndarray, ranked: Ranked, segments: Mapping[str, str] | None) -> pl.DataFrame:
        n, k = ranked.items.shape
        flat = ranked.items.ravel()
        valid = flat >= 0
        reason_items = ranked.reason_items.ravel() if ranked.reason_items is not None else np.full(flat.size, -1)
        rows = self.customer_rows(ids)
        has_segment = np.where(rows >= 0, self.customer_segments[np.maximum(rows, 0)] >= 0, False)
        if segments:
            has_segment = np.asarray([self._segment_known(str(c), segments) for c in ids], dtype=bool)
        frame = pl.DataFrame({
            "customer_id": np.repeat(np.asarray(ids, dtype=str), k),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), n),
            "item": flat,
            "score": ranked.scores.ravel().astype(np.float64),
            "reason_item": reason_items,
            "cold_start": np.repeat(ranked.cold, k),
            "segment_known": np.repeat(has_segment, k),
        }).filter(pl.Series(valid))
        names = pl.Series(self.product_names)
        pids = pl.Series(self.product_ids)
        ri = np.maximum(frame["reason_item"].to_numpy(), 0)
        frame = frame.with_columns(
            product_id=pids.gather(frame["item"].to_numpy()),
            reason_product_id=pl.when(pl.col("reason_item") >= 0).then(pl.lit(pids.gather(ri))),
            reason_name=names.gather(ri),
        )
        frame = frame.with_columns(
            reason=pl.when(pl.col("reason_item") < 0)
            .then(pl.when(pl.col("segment_known")).then(pl.lit(REASON_SEGMENT)).otherwise(pl.lit(REASON_OVERALL)))
            .when(pl.col("reason_item") == pl.col("item"))
            .then(pl.lit(REASON_AGAIN))
            .otherwise(pl.lit(REASON_BOUGHT) + pl.col("reason_name"))
        )
        return frame.select("customer_id", "rank", "product_id", "score", "reason", "reason_product_id",
                            "cold_start")

    # --- fold-in -------------------------------------------------------------------------

    def with_orders(self, orders: pl.DataFrame, as_of: datetime, customers: pl.DataFrame | None = None,
                    recompute_known: bool = False) -> Recommender:
        """A copy that knows these orders: new customers are folded in without retraining.

        Every customer in ``orders`` gets its history (ownership, order count) from them.
        With ALS, customers the model does not know get factors from implicit's
        ``recalculate_user`` (one least-squares solve against the fixed item factors);
        ``recompute_known`` refreshes known customers' factors the same way. BPR has no
        fold-in, so new customers stay on the popularity fallback (cold start).
        ``customers`` (customer_id, segment) gives new customers their segment.
        """
        fresh = build_interactions(orders, self.product_ids, as_of, self.spec.confidence,
                                   self.typical_amount, self.typical_quantity)
        rows = self.customer_rows(fresh.customer_ids)
        new = rows < 0
        all_ids = np.concatenate([self.customer_ids, fresh.customer_ids[new]])
        target = rows.copy()
        target[new] = self.n_customers + np.arange(int(new.sum()))
        # Replace history rows: keep the untouched customers, then add the fresh rows.
        keep = np.ones(len(all_ids), dtype=bool)
        keep[target] = False
        old = sp.vstack([self.history, sp.csr_matrix((int(new.sum()), self.n_products), dtype=np.float32)]).tocsr()
        old = sp.diags(keep.astype(np.float32)) @ old
        placed = sp.csr_matrix((np.ones(len(target), np.float32), (target, np.arange(len(target)))),
                               shape=(len(all_ids), len(target))) @ fresh.confidence
        history = (old + placed).tocsr().astype(np.float32)
        counts = np.concatenate([self.orders, np.zeros(int(new.sum()), np.int64)])
        counts[target] = fresh.orders
        segs = np.concatenate([self.customer_segments, np.full(int(new.sum()), -1, np.int16)])
        if customers is not None and new.any():
            lookup = {s: i for i, s in enumerate(self.spec.segments)}
            seg_of = dict(zip(customers[CUSTOMER_ID].to_list(), customers[SEGMENT].to_list(), strict=True))
            for i, c in zip(target[new], fresh.customer_ids[new], strict=True):
                segs[i] = lookup.get(seg_of.get(c, ""), -1)
        factors = np.vstack([self.user_factors, np.zeros((int(new.sum()), self.user_factors.shape[1]),
                                                        dtype=self.user_factors.dtype)])
        if self.spec.algorithm == "als":
            redo = np.ones(len(target), dtype=bool) if recompute_known else new
            if redo.any():
                factors[target[redo]] = self._recalculate(fresh.confidence[np.flatnonzero(redo)])
        elif new.any():
            # Their factor rows stay zero, which `rank` treats as cold.
            log.info("BPR cannot fold in %d new customers; they get the popularity fallback", int(new.sum()))
        log.info("fold-in: %d new customers, %d histories refreshed", int(new.sum()), len(target))
        return replace(self, customer_ids=all_ids, user_factors=factors, history=history, orders=counts,
                       customer_segments=segs)

    def _recalculate(self, confidence: sp.csr_matrix) -> np.ndarray:
        """implicit's ALS ``recalculate_user`` against this model's item factors."""
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, "blas"):  # implicit threads itself (and warns otherwise)
            als = AlternatingLeastSquares(factors=self.item_factors.shape[1],
                                          regularization=self.spec.regularization, alpha=1.0,
                                          num_threads=self.num_threads)
            als.item_factors = self.item_factors
            return als.recalculate_user(np.arange(confidence.shape[0]), confidence.astype(np.float32))
