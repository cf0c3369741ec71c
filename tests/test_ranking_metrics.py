"""Ranking metrics against hand-built cases with exact, hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from training.ranking_metrics import (
    catalog_coverage,
    evaluate_rankings,
    hits_matrix,
    ranking_metrics,
    top_k_from_order,
    top_k_from_scores,
)

LOG2_3 = math.log2(3)


def relevant(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    data = [(u, i) for u, items in enumerate(rows) for i in items]
    r, c = zip(*data, strict=True) if data else ((), ())
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(rows), n_items))


def test_perfect_ranking_scores_one_everywhere() -> None:
    # Two users, each with their relevant items ranked first.
    rec = np.array([[3, 1, 0, 2, 4], [0, 4, 1, 2, 3]])
    m = ranking_metrics(rec, relevant([[3, 1], [0]], 5), n_items=5, ks=(1, 2, 5))
    for name in ("ndcg", "map", "hit_rate"):
        for k in (1, 2, 5):
            assert m[f"{name}_at_{k}"] == pytest.approx(1.0)
    assert m["recall_at_2"] == 1.0
    # precision@2: user 0 has 2 hits / 2, user 1 has 1 hit / 2 → mean 0.75
    assert m["precision_at_2"] == pytest.approx(0.75)
    assert m["precision_at_5"] == pytest.approx((2 / 5 + 1 / 5) / 2)
    assert m["users"] == 2


def test_no_hit_scores_zero() -> None:
    rec = np.array([[0, 1], [2, 3]])
    m = ranking_metrics(rec, relevant([[4], [4, 0]], 5), n_items=5, ks=(2,))
    for name in ("precision", "recall", "ndcg", "map", "hit_rate"):
        assert m[f"{name}_at_2"] == 0.0
    assert m["coverage_at_2"] == pytest.approx(4 / 5)


def test_hand_computed_partial_ranking() -> None:
    # One user, relevant {2, 5}; recommended [7, 2, 9, 5]: hits at ranks 2 and 4.
    rec = np.array([[7, 2, 9, 5]])
    m = ranking_metrics(rec, relevant([[2, 5]], 10), n_items=10, ks=(2, 4))
    assert m["precision_at_2"] == pytest.approx(0.5)
    assert m["recall_at_2"] == pytest.approx(0.5)
    assert m["hit_rate_at_2"] == 1.0
    # DCG@2 = 1/log2(3); IDCG@2 = 1 + 1/log2(3)
    assert m["ndcg_at_2"] == pytest.approx((1 / LOG2_3) / (1 + 1 / LOG2_3))
    # DCG@4 = 1/log2(3) + 1/log2(5)
    assert m["ndcg_at_4"] == pytest.approx((1 / LOG2_3 + 1 / math.log2(5)) / (1 + 1 / LOG2_3))
    # AP@2 = (P@2 · 1) / min(2, 2) = 0.25; AP@4 = (1/2 + 2/4) / 2 = 0.5
    assert m["map_at_2"] == pytest.approx(0.25)
    assert m["map_at_4"] == pytest.approx(0.5)
    assert m["precision_at_4"] == pytest.approx(0.5) and m["recall_at_4"] == 1.0


def test_map_and_ndcg_normalise_by_min_k_relevant() -> None:
    # Three relevant items, k = 1, the top item is relevant: a perfect top-1.
    m = ranking_metrics(np.array([[1, 2, 3]]), relevant([[1, 2, 3]], 4), n_items=4, ks=(1,))
    assert m["map_at_1"] == 1.0 and m["ndcg_at_1"] == 1.0
    assert m["recall_at_1"] == pytest.approx(1 / 3)


def test_empty_slots_are_misses() -> None:
    # Only one candidate left after exclusions; precision still divides by k.
    rec = np.array([[4, -1, -1]])
    m = ranking_metrics(rec, relevant([[4]], 5), n_items=5, ks=(3,))
    assert m["precision_at_3"] == pytest.approx(1 / 3)
    assert m["ndcg_at_3"] == 1.0
    assert catalog_coverage(rec, 3, 5) == pytest.approx(1 / 5)


def test_ties_break_to_the_lower_item_index() -> None:
    # Items 0 and 1 tie; item 1 is the relevant one, so it lands at rank 2.
    scores = np.array([[0.9, 0.9, 0.1]])
    rec = top_k_from_scores(scores, 2)
    assert rec.tolist() == [[0, 1]]
    m = ranking_metrics(rec, relevant([[1]], 3), n_items=3, ks=(1, 2))
    assert m["hit_rate_at_1"] == 0.0
    assert m["ndcg_at_2"] == pytest.approx(1 / LOG2_3)
    assert m["map_at_2"] == pytest.approx(0.5)


def test_all_tied_scores_rank_in_index_order() -> None:
    rec = top_k_from_scores(np.zeros((2, 4)), 3)
    assert rec.tolist() == [[0, 1, 2], [0, 1, 2]]
    m = ranking_metrics(rec, relevant([[3], [2]], 4), n_items=4, ks=(3,))
    # user 0: no hit; user 1: hit at rank 3 → NDCG 1/log2(4) = 0.5
    assert m["ndcg_at_3"] == pytest.approx(0.25)
    assert m["hit_rate_at_3"] == pytest.approx(0.5)


def test_exclusions_leave_empty_slots_and_keep_order() -> None:
    scores = np.array([[0.5, 0.4, 0.3], [0.1, 0.2, 0.3]])
    exclude = np.array([[True, False, True], [False, False, False]])
    assert top_k_from_scores(scores, 3, exclude).tolist() == [[1, -1, -1], [2, 1, 0]]


def test_top_k_from_a_shared_order() -> None:
    order = np.array([2, 0, 1, 3])  # e.g. popularity
    excluded = np.array([[True, False, False, False], [False, False, False, False]])  # in order positions
    assert top_k_from_order(order, 2, excluded).tolist() == [[0, 1], [2, 0]]


def test_hits_matrix_ignores_padding_and_duplicates() -> None:
    rel = sp.csr_matrix((np.ones(3), ([0, 0, 0], [1, 1, 2])), shape=(1, 3))
    assert hits_matrix(np.array([[2, -1, 1]]), rel).tolist() == [[True, False, True]]


def test_users_without_relevant_items_are_refused() -> None:
    with pytest.raises(ValueError, match="relevant"):
        ranking_metrics(np.array([[0]]), relevant([[]], 2), n_items=2, ks=(1,))


def test_evaluate_rankings_slices_and_segments() -> None:
    rec = np.array([[0, 1]] * 4)
    rel = relevant([[0], [0], [1], [3]], 4)
    out = evaluate_rankings(rec, rel, 4, ks=(1,), slices={"warm": np.array([1, 1, 0, 0], bool)},
                            segments=["a", "a", "b", "b"], min_users=2)
    assert out["overall"]["hit_rate_at_1"] == pytest.approx(0.5)
    assert out["by_slice"]["warm"]["hit_rate_at_1"] == 1.0
    assert out["by_segment"]["b"]["hit_rate_at_1"] == 0.0
    assert out["by_segment"]["a"]["users"] == 2
