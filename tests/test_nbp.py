"""Next-best-product behaviour on a hand-built lake: confidences, split, rules, cold start, fold-in.

No MLflow here (tests/test_nbp_e2e.py covers logging and the registry): the
recommender is built from the same pieces ``train_nbp`` uses.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from crmdata.contract import TABLES
from crmdata.errors import CrmscoreError
from tests.factories import ts, write_lake
from training.nbp.interactions import ConfidenceParams, owned_once, read_lake, time_split
from training.nbp.persist import read_recommender, save_recommender
from training.nbp.recommender import (
    REASON_AGAIN,
    REASON_BOUGHT,
    REASON_OVERALL,
    REASON_SEGMENT,
    Recommender,
)
from training.nbp.train import NbpParams, build_recommender, fit_factors

CUTOFF = ts(2024, 6, 1)
# Products: two "kits" that are bought once and their refills, plus a gadget bought once.
PRODUCTS = {
    "KIT_A": ("Kit A", "kits", 100.0, False),
    "REFILL_A": ("Refill A", "refills", 10.0, True),
    "KIT_B": ("Kit B", "kits", 120.0, False),
    "REFILL_B": ("Refill B", "refills", 12.0, True),
    "GADGET": ("Gadget", "gadgets", 50.0, False),
    "POSTER": ("Poster", "gadgets", 5.0, True),
}


def make_tables(seed: int = 0) -> dict[str, pl.DataFrame]:
    """Two taste groups: A-buyers (smb) and B-buyers (enterprise), 40 customers each.

    Each buys their kit once, their refill several times, sometimes the gadget; in the
    month after the cutoff they buy their refill again. N1 has only one order.
    """
    rng = np.random.default_rng(seed)
    customers, orders = [], []
    n = 0

    def order(c: str, p: str, when: datetime, qty: int = 1) -> None:
        nonlocal n
        n += 1
        orders.append({"order_id": f"O{n}", "customer_id": c, "product_id": p, "ordered_at": when,
                       "quantity": qty, "amount": qty * PRODUCTS[p][2]})

    for group, segment in (("A", "smb"), ("B", "enterprise")):
        for i in range(40):
            c = f"{group}{i:02d}"
            customers.append({"customer_id": c, "signup_at": ts(2023, 1, 1), "country": "US", "segment": segment,
                              "industry": "retail", "acquisition_channel": "web"})
            start = ts(2023, 2, 1) + timedelta(days=int(rng.integers(0, 60)))
            order(c, f"KIT_{group}", start)
            for r in range(int(rng.integers(2, 6))):
                order(c, f"REFILL_{group}", start + timedelta(days=30 * (r + 1)), qty=int(rng.integers(1, 3)))
            if i % 3 == 0:
                order(c, "GADGET", start + timedelta(days=10))
            order(c, f"REFILL_{group}", CUTOFF + timedelta(days=5))
            if i % 4 == 0:
                order(c, "POSTER", CUTOFF + timedelta(days=7))
    customers.append({"customer_id": "N1", "signup_at": ts(2024, 5, 1), "country": "US", "segment": "smb",
                      "industry": "retail", "acquisition_channel": "web"})
    order("N1", "KIT_A", ts(2024, 5, 2))
    customers.append({"customer_id": "LATE", "signup_at": ts(2024, 6, 2), "country": "US", "segment": "enterprise",
                      "industry": "retail", "acquisition_channel": "web"})
    order("LATE", "KIT_B", CUTOFF + timedelta(days=2))
    products = [{"product_id": p, "name": v[0], "category": v[1], "price": v[2], "is_repeatable": v[3]}
                for p, v in PRODUCTS.items()]
    return {"customers": table("customers", customers), "products": table("products", products),
            "orders": table("orders", orders)}


def table(name: str, rows: list[dict]) -> pl.DataFrame:
    """A contract table from row dicts (missing columns null)."""
    schema = TABLES[name].polars_schema()
    return pl.DataFrame([{c: r.get(c) for c in schema} for r in rows], schema=schema, orient="row")


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lake(tmp_path_factory.mktemp("nbp") / "lake", make_tables())


PARAMS = NbpParams(factors=4, regularization=0.1, iterations=20, min_orders=2, category_boost=2.0, num_threads=1)


@pytest.fixture(scope="module")
def recommender(lake: Path) -> Recommender:
    data = read_lake(lake)
    split = time_split(data, 30, CUTOFF, PARAMS.confidence)
    u, v = fit_factors(split.train.confidence, "als", PARAMS)
    return build_recommender(data, split, "als", PARAMS, u, v)


# --- confidences and the split -------------------------------------------------------------


def test_confidence_formula_exact(tmp_path: Path) -> None:
    as_of = ts(2024, 1, 1)
    orders = [  # customer, product, days after as_of, quantity, amount
        ("C1", "P1", -100, 1, 10.0), ("C1", "P1", -1, 3, 30.0), ("C1", "P2", -50, 2, 0.0),
        # After as_of: the test window, not the confidences (and C2 is not active before it).
        ("C1", "P1", 1, 1, 10.0), ("C2", "P1", 1, 1, 10.0),
    ]
    tables = {
        "customers": table("customers", [{"customer_id": c, "signup_at": ts(2023, 1, 1), "segment": "smb"}
                                         for c in ("C1", "C2")]),
        "products": table("products", [{"product_id": p, "name": p, "category": "c", "price": 10.0,
                                        "is_repeatable": True} for p in ("P1", "P2")]),
        "orders": table("orders", [{"order_id": f"O{i}", "customer_id": c, "product_id": p,
                                    "ordered_at": as_of + timedelta(days=d), "quantity": q, "amount": a}
                                   for i, (c, p, d, q, a) in enumerate(orders)]),
    }
    params = ConfidenceParams(alpha=2.0, half_life_days=100.0)
    split = time_split(read_lake(write_lake(tmp_path / "lake", tables)), 30, as_of, params)
    # Medians of the orders before as_of: the scale of each product's orders.
    assert split.typical_amount.tolist() == [20.0, 0.0] and split.typical_quantity.tolist() == [2.0, 2.0]
    inter = split.train
    assert inter.customer_ids.tolist() == ["C1"] and inter.orders.tolist() == [3]
    c = inter.confidence.toarray()
    # P1: log2(1 + 10/20)·2^(-100/100) + log2(1 + 30/20)·2^(-1/100)
    r1 = math.log2(1.5) * 0.5 + math.log2(2.5) * 2 ** (-0.01)
    # P2 has a zero median amount: quantity relative to its median quantity, 2/2
    r2 = math.log2(2.0) * 2 ** (-0.5)
    assert c[0, 0] == pytest.approx(1 + 2 * r1, rel=1e-6)
    assert c[0, 1] == pytest.approx(1 + 2 * r2, rel=1e-6)


def test_time_split_tests_active_customers_on_eligible_products(lake: Path) -> None:
    data = read_lake(lake)
    split = time_split(data, 30, CUTOFF, PARAMS.confidence)
    tested = set(split.train.customer_ids[split.test_rows].tolist())
    assert "LATE" not in tested  # no order before the cutoff: not active
    assert "N1" not in tested  # bought nothing in the window
    assert len(tested) == 80
    cols = {p: i for i, p in enumerate(data.catalogue.product_ids)}
    rel = split.relevant.toarray()
    assert rel[:, cols["KIT_A"]].sum() == 0 and rel[:, cols["REFILL_A"]].sum() == 40
    assert rel[:, cols["POSTER"]].sum() == 20


def test_no_orders_before_the_cutoff_is_a_clear_error(lake: Path) -> None:
    with pytest.raises(CrmscoreError, match="before the cutoff"):
        time_split(read_lake(lake), 30, ts(2020, 1, 1), PARAMS.confidence)


# --- the recommendation rules ---------------------------------------------------------------


def test_owned_non_repeatable_products_are_never_recommended(recommender: Recommender) -> None:
    out = {r.customer_id: r for r in recommender.recommend(["A00", "B01", "A03"], k=6)}
    for customer, owned in (("A00", {"KIT_A", "GADGET"}), ("B01", {"KIT_B"}), ("A03", {"KIT_A", "GADGET"})):
        got = [i.product_id for i in out[customer].items]
        assert not owned & set(got), (customer, got)
    # Repeatable products the customer owns may be recommended, and are here.
    assert out["A00"].items[0].product_id == "REFILL_A"
    assert out["A00"].items[0].reason == REASON_AGAIN and out["A00"].items[0].reason_product_id == "REFILL_A"


def test_batch_never_recommends_owned_one_offs(recommender: Recommender) -> None:
    frame = recommender.recommend_all(k=6)
    owned = owned_once(recommender.history, recommender.repeatable).tocoo()
    pairs = {(recommender.customer_ids[r], recommender.product_ids[c]) for r, c in zip(owned.row, owned.col, strict=True)}
    got = set(zip(frame["customer_id"].to_list(), frame["product_id"].to_list(), strict=True))
    assert pairs and not pairs & got


def test_request_exclusions_are_respected(recommender: Recommender) -> None:
    plain = recommender.recommend(["B02"], k=3)[0]
    top = plain.items[0].product_id
    again = recommender.recommend(["B02"], k=3, exclude=[top])[0]
    assert top not in [i.product_id for i in again.items]
    per_customer = recommender.recommend(["B02", "B03"], k=3, exclude={"B02": [top]})
    assert top not in [i.product_id for i in per_customer[0].items]
    assert per_customer[1].items[0].product_id == recommender.recommend(["B03"], k=3)[0].items[0].product_id


def test_reasons_name_a_past_product(recommender: Recommender) -> None:
    rec = recommender.recommend(["A06"], k=4)[0]
    assert not rec.cold_start
    names = {v[0] for v in PRODUCTS.values()}
    assert rec.items[0].reason == REASON_AGAIN
    for item in rec.items:
        if item.reason_product_id is None:
            # Nothing A06 bought pushes this one up: it is there by popularity.
            assert item.reason == REASON_SEGMENT
            continue
        assert item.reason == REASON_AGAIN or (
            item.reason.startswith(REASON_BOUGHT) and item.reason.removeprefix(REASON_BOUGHT) in names)
        assert item.reason_product_id in {"KIT_A", "REFILL_A", "GADGET"}


def test_explain_matches_implicit(recommender: Recommender) -> None:
    """The vectorized reasons are implicit's own ``explain`` top contributor."""
    from implicit.cpu.als import AlternatingLeastSquares

    als = AlternatingLeastSquares(factors=recommender.item_factors.shape[1],
                                  regularization=recommender.spec.regularization, alpha=1.0)
    als.user_factors, als.item_factors = recommender.user_factors, recommender.item_factors
    rows = np.arange(recommender.n_customers)
    ranked = recommender.rank(recommender.customer_ids, 4, reasons=True)
    for u in rows[::7]:
        for r in range(4):
            item = int(ranked.items[u, r])
            if item < 0:
                continue
            _, contributions, _ = als.explain(u, recommender.history, item)
            top, weight = contributions[0]
            # No positive contribution (an item nobody bought yet): popularity reason instead.
            assert ranked.reason_items[u, r] == (top if weight > 0 else -1)


def test_cold_start_for_few_orders_and_unknown_customers(recommender: Recommender) -> None:
    out = {r.customer_id: r for r in recommender.recommend(["N1", "NOBODY", "A01"], k=3,
                                                           segments={"NOBODY": "enterprise"})}
    assert out["N1"].cold_start and out["NOBODY"].cold_start and not out["A01"].cold_start
    assert all(i.reason == REASON_SEGMENT and i.reason_product_id is None for i in out["N1"].items)
    # N1 owns KIT_A (non-repeatable): excluded. It bought a kit, so kits get the category boost.
    n1 = {i.product_id: i.score for i in recommender.recommend(["N1"], k=6)[0].items}
    assert "KIT_A" not in n1
    smb = recommender.popularity[1 + recommender.spec.segments.index("smb")]
    kit_b, refill_b = (int(recommender.product_rows([p])[0]) for p in ("KIT_B", "REFILL_B"))
    assert n1["KIT_B"] == pytest.approx(smb[kit_b] * 3.0, rel=1e-6)
    assert n1["REFILL_B"] == pytest.approx(smb[refill_b], rel=1e-6)
    # NOBODY is an enterprise newcomer: enterprise customers buy B products.
    assert out["NOBODY"].items[0].product_id in {"REFILL_B", "KIT_B"}
    stranger = recommender.recommend(["STRANGER"], k=2)[0]
    assert stranger.cold_start and stranger.items[0].reason == REASON_OVERALL


def test_fold_in_a_new_customer_without_retraining(recommender: Recommender, lake: Path) -> None:
    data = read_lake(lake)
    late = data.orders.filter(pl.col("customer_id") == "LATE").select(TABLES["orders"].column_names[1:])
    extra = pl.DataFrame({"customer_id": ["LATE"], "product_id": ["REFILL_B"],
                          "ordered_at": [CUTOFF + timedelta(days=3)], "quantity": [2], "amount": [24.0]},
                         schema=late.schema)
    folded = recommender.with_orders(pl.concat([late, extra]), CUTOFF + timedelta(days=4), data.customers)
    assert folded.n_customers == recommender.n_customers + 1
    assert recommender.customer_rows(["LATE"])[0] == -1  # the original is untouched
    out = folded.recommend(["LATE"], k=3)[0]
    assert not out.cold_start
    got = [i.product_id for i in out.items]
    assert "KIT_B" not in got  # owned one-off, from the folded-in history
    assert got[0] == "REFILL_B"
    # The folded-in factors are implicit's recalculate_user.
    from implicit.cpu.als import AlternatingLeastSquares

    als = AlternatingLeastSquares(factors=recommender.item_factors.shape[1],
                                  regularization=recommender.spec.regularization, alpha=1.0)
    als.item_factors = recommender.item_factors
    row = folded.customer_rows(["LATE"])[0]
    expected = als.recalculate_user(0, folded.history[row])
    np.testing.assert_allclose(folded.user_factors[row], expected, rtol=1e-5, atol=1e-6)


def test_recommend_all_is_the_batched_recommend(recommender: Recommender) -> None:
    frame = recommender.recommend_all(k=3)
    assert frame.columns == ["customer_id", "rank", "product_id", "score", "reason", "reason_product_id",
                             "cold_start"]
    one = recommender.recommend(["B05"], k=3)[0]
    rows = frame.filter(pl.col("customer_id") == "B05").sort("rank")
    assert rows["product_id"].to_list() == [i.product_id for i in one.items]
    assert rows["reason"].to_list() == [i.reason for i in one.items]
    assert rows["score"].to_numpy() == pytest.approx([i.score for i in one.items], rel=1e-5)
    assert frame.filter(pl.col("customer_id") == "N1")["cold_start"].all()


def test_files_round_trip_without_pickle(recommender: Recommender, tmp_path: Path) -> None:
    paths = save_recommender(recommender, tmp_path)
    assert {p.suffix for p in paths.values()} == {".npy", ".json"}
    back = read_recommender(paths)
    assert back.recommend_all(k=4).equals(recommender.recommend_all(k=4))


def test_bpr_trains_and_cannot_fold_in(lake: Path) -> None:
    data = read_lake(lake)
    params = PARAMS.model_copy(update={"bpr_iterations": 50})
    split = time_split(data, 30, CUTOFF, params.confidence)
    u, v = fit_factors(split.train.confidence, "bpr", params)
    rec = build_recommender(data, split, "bpr", params, u, v)
    out = rec.recommend(["A00"], k=6)[0]
    assert not {"KIT_A", "GADGET"} & {i.product_id for i in out.items}
    assert out.items[0].reason_product_id is not None  # the most similar past product
    folded = rec.with_orders(data.orders.filter(pl.col("customer_id") == "LATE"), CUTOFF + timedelta(days=4))
    assert folded.recommend(["LATE"], k=2)[0].cold_start
