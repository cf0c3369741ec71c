"""RFM scores and segments on hand-built frames: ties, customers without orders, every
segment, snapshots scored apart; and the value table's raw RFM values from a hand-built lake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from features.build import build_features, read_build_summary
from features.catalog import EVENT_TIMESTAMP, FEATURES, VALUE_TABLE, table_file
from features.rfm import SEGMENT_NAMES, SEGMENTS, rfm_scores
from tests.conftest import contract_frame
from tests.factories import write_lake

S1 = datetime(2024, 3, 4, tzinfo=UTC)
S2 = datetime(2024, 3, 11, tzinfo=UTC)
DAY = timedelta(days=1)


def snapshot(recency: list, frequency: list, monetary: list, when: datetime = S1) -> pl.DataFrame:
    n = len(recency)
    return pl.DataFrame(
        {
            "customer_id": [f"C{i}" for i in range(n)],
            EVENT_TIMESTAMP: [when] * n,
            "rfm_recency_days": recency,
            "rfm_frequency": frequency,
            "rfm_monetary": monetary,
        },
        schema_overrides={"rfm_recency_days": pl.Float64, "rfm_frequency": pl.Int64, "rfm_monetary": pl.Float64},
    )


def test_quintile_scores_with_ties_and_a_customer_without_orders() -> None:
    # Ten customers with orders, one (C10) without. Score = 1 + floor(5 * worse / 10).
    frame = snapshot(
        recency=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, None],
        frequency=[1, 1, 1, 1, 1, 2, 2, 3, 5, 8, 0],
        monetary=[10, 10, 10, 20, 20, 30, 40, 50, 60, 70, None],
    )
    out = rfm_scores(frame)
    assert out["customer_id"].to_list() == frame["customer_id"].to_list()  # row order kept
    # Recency: fewer days is better; 1 day has 9 worse customers -> 1 + floor(45 / 10) = 5.
    assert out["rfm_r"].to_list() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1, None]
    # Frequency: the five one-order customers tie at the bottom (1), two orders have 5 worse
    # (3), three have 7 (4), five have 8 and eight have 9 (5).
    assert out["rfm_f"].to_list() == [1, 1, 1, 1, 1, 3, 3, 4, 5, 5, None]
    assert out["rfm_m"].to_list() == [1, 1, 1, 2, 2, 3, 4, 4, 5, 5, None]
    # FM = round-half-up((F + M) / 2); segment = SEGMENTS[R][FM - 1].
    assert out["rfm_segment"].to_list() == [
        "New", "New", "Promising", "Potential loyalists", "About to sleep",
        "Need attention", "At risk", "At risk", "Can't lose them", "Can't lose them", None,
    ]


def test_null_frequency_counts_as_no_orders_and_all_tied_score_one() -> None:
    out = rfm_scores(snapshot(recency=[3, 3, None], frequency=[2, 2, None], monetary=[5, 5, None]))
    assert out["rfm_r"].to_list() == [1, 1, None]
    assert out["rfm_f"].to_list() == [1, 1, None]
    assert out["rfm_segment"].to_list() == ["Lost", "Lost", None]


def test_snapshots_are_scored_apart() -> None:
    first = snapshot(recency=[1, 2], frequency=[1, 2], monetary=[10, 20])
    # The same customers a week later, their ranks swapped.
    second = snapshot(recency=[9, 8], frequency=[3, 4], monetary=[30, 40], when=S2).with_columns(
        pl.Series("customer_id", ["C1", "C0"])
    )
    out = rfm_scores(pl.concat([first, second]))
    # n = 2: 1 + floor(5 * worse / 2), so the better of two scores 3 (few customers leave
    # the top scores unused).
    assert out["rfm_r"].to_list() == [3, 1, 1, 3]
    assert out["rfm_f"].to_list() == [1, 3, 1, 3]


def test_the_map_covers_every_score_and_every_segment_is_reachable() -> None:
    """25 snapshots of five customers: in each, C0 has recency score r and F = M = fm (the
    values 1..5 are spread over the five customers), so C0 lands in every cell of the map."""
    frames = []
    for r in range(1, 6):
        for fm in range(1, 6):
            when = S1 + ((r - 1) * 5 + fm) * DAY
            others = [v for v in range(1, 6) if v != fm]
            recency = [6 - r] + [v for v in (5, 4, 3, 2, 1) if v != 6 - r]
            frames.append(snapshot(recency, [fm, *others], [float(fm), *others], when))
    out = rfm_scores(pl.concat(frames)).filter(pl.col("customer_id") == "C0")
    assert out.height == 25
    for row in out.iter_rows(named=True):
        r, fm = row["rfm_r"], row["rfm_f"]
        assert row["rfm_m"] == fm
        assert row["rfm_segment"] == SEGMENTS[r][fm - 1]
    assert set(out["rfm_segment"]) == set(SEGMENT_NAMES)
    assert len(SEGMENT_NAMES) == 11
    assert sorted(SEGMENTS) == [1, 2, 3, 4, 5] and all(len(row) == 5 for row in SEGMENTS.values())


def value_lake(directory: Path, *, with_orders: bool = True) -> Path:
    """Three customers: V1 with three orders (two on one day, one of them of amount 0),
    V2 with one, V3 with none; support interactions inside and outside 365 days."""
    customers = contract_frame(
        "customers",
        [
            {"customer_id": c, "signup_at": datetime(2022, 1, 1, tzinfo=UTC), "country": "US",
             "segment": "smb", "industry": "retail", "acquisition_channel": "web"}
            for c in ("V1", "V2", "V3")
        ],
    )
    orders = contract_frame(
        "orders",
        [
            {"order_id": "O1", "customer_id": "V1", "ordered_at": S1 - 400 * DAY, "quantity": 1, "amount": 100.0},
            {"order_id": "O2", "customer_id": "V1", "ordered_at": S1 - 10 * DAY, "quantity": 1, "amount": 40.0},
            {"order_id": "O3", "customer_id": "V1", "ordered_at": S1 - 10 * DAY + timedelta(hours=1),
             "quantity": 1, "amount": 0.0},
            {"order_id": "O4", "customer_id": "V2", "ordered_at": S1 - 2 * DAY, "quantity": 1, "amount": 25.0},
            {"order_id": "O5", "customer_id": "V2", "ordered_at": S1, "quantity": 1, "amount": 99.0},  # at as_of: out
        ],
    )
    interactions = contract_frame(
        "interactions",
        [
            {"customer_id": "V1", "occurred_at": S1 - 30 * DAY, "type": "support_ticket"},
            {"customer_id": "V1", "occurred_at": S1 - 365 * DAY, "type": "complaint"},  # window edge: in
            {"customer_id": "V1", "occurred_at": S1 - 366 * DAY, "type": "complaint"},  # out
            {"customer_id": "V2", "occurred_at": S1 - DAY, "type": "login"},
        ],
    )
    tables = {"customers": customers, "interactions": interactions}
    if with_orders:
        return write_lake(directory, tables | {"orders": orders})
    subscriptions = contract_frame(
        "subscriptions",
        [{"subscription_id": "S1", "customer_id": "V1", "plan": "basic", "monthly_price": 9.0,
          "started_at": S1 - 100 * DAY}],
    )
    return write_lake(directory, tables | {"subscriptions": subscriptions})


def test_value_table_from_a_hand_built_lake(tmp_path: Path) -> None:
    out = tmp_path / "features"
    build_features(value_lake(tmp_path / "lake"), out, [S1])
    frame = pl.read_parquet(out / table_file(VALUE_TABLE)).sort("customer_id")
    assert frame.columns == ["customer_id", EVENT_TIMESTAMP, *(s.name for s in FEATURES[VALUE_TABLE])]
    rows = {r["customer_id"]: r for r in frame.to_dicts()}
    v1, v2, v3 = rows["V1"], rows["V2"], rows["V3"]
    assert v1["rfm_frequency"] == 3 and v1["rfm_monetary"] == pytest.approx(140.0 / 3)
    assert v1["rfm_recency_days"] == pytest.approx(10 - 1 / 24)
    assert v1["value_spend_365"] == 40.0 and v1["value_tickets_365"] == 1 and v1["value_complaints_365"] == 1
    assert (v2["rfm_frequency"], v2["rfm_monetary"], v2["rfm_recency_days"]) == (1, 25.0, 2.0)
    assert v2["value_spend_365"] == 25.0 and v2["value_tickets_365"] == 0
    # Two customers with orders (the better of two scores 3): V2 is more recent (R 3 vs 1);
    # V1 orders more (F 3 vs 1) and spends more per order (M 3 vs 1).
    assert (v1["rfm_r"], v1["rfm_f"], v1["rfm_m"], v1["rfm_segment"]) == (1, 3, 3, "At risk")
    assert (v2["rfm_r"], v2["rfm_f"], v2["rfm_m"], v2["rfm_segment"]) == (3, 1, 1, "About to sleep")
    assert v3["rfm_frequency"] == 0 and v3["value_spend_365"] == 0.0
    assert all(v3[c] is None for c in ("rfm_recency_days", "rfm_monetary", "rfm_r", "rfm_f", "rfm_m", "rfm_segment"))
    # Two repeat buyers are far too few for the peer: null, not a crash.
    assert all(r[c] is None for r in rows.values() for c in ("peer_p_alive", "peer_expected_orders", "peer_expected_spend"))


def test_value_table_without_orders_is_all_null_but_present(tmp_path: Path) -> None:
    lake = value_lake(tmp_path / "lake", with_orders=False)
    out = tmp_path / "features"
    summary = build_features(lake, out, [S1])
    frame = pl.read_parquet(out / table_file(VALUE_TABLE))
    assert frame.height == 3
    assert frame.columns == ["customer_id", EVENT_TIMESTAMP, *(s.name for s in FEATURES[VALUE_TABLE])]
    orders_only = [s.name for s in FEATURES[VALUE_TABLE] if "orders" in s.requires]
    assert all(frame[c].null_count() == 3 for c in orders_only)
    assert frame.sort("customer_id")["value_tickets_365"].to_list() == [1, 0, 0]
    value = read_build_summary(out).entities[VALUE_TABLE]
    assert set(value.unavailable) == set(orders_only) and value.unavailable["rfm_r"] == "needs orders"
    assert summary.entities[VALUE_TABLE].note == f"{len(orders_only)} columns all null: the lake has no orders"
