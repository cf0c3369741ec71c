"""Point-in-time correctness: no feature value may use an event at or after its cutoff.

The property: adding arbitrary events at or after a cutoff (new orders, tickets,
lead activities, subscription ends, conversions, new customers) never changes a
single feature value at that cutoff, neither in the feature tables nor in a
training frame served by Feast from them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmdata.contract import InteractionType, LeadActivityType
from crmdata.workspace import Workspace
from features.build import build_features
from features.catalog import EVENT_TIMESTAMP, table_file
from features.store import apply_repository, feature_store
from features.training import training_frame
from tests.conftest import contract_frame
from tests.factories import tiny_tables, write_lake

START = datetime(2023, 1, 1, tzinfo=UTC)
CUSTOMERS = ["C1", "C2", "C3"]
LEADS = ["L1", "L2", "L3"]
PRODUCTS = ["P1", "P2"]

offsets = st.integers(min_value=0, max_value=500 * 24)  # hours after START


@st.composite
def worlds(draw: st.DrawFn) -> dict:
    """A cutoff plus random past and future events (future = at or after the cutoff)."""
    cutoff = START + timedelta(hours=draw(st.integers(min_value=24 * 30, max_value=24 * 450)))

    def when(future: bool) -> datetime:
        h = draw(offsets)
        t = START + timedelta(hours=h)
        if future:
            return cutoff + timedelta(hours=h % (24 * 60)) if draw(st.booleans()) else cutoff
        return min(t, cutoff - timedelta(hours=1))

    def events(future: bool, n: int) -> dict[str, list[dict]]:
        return {
            "orders": [
                {"order_id": f"{'F' if future else 'O'}{i}", "customer_id": draw(st.sampled_from(CUSTOMERS)),
                     "product_id": draw(st.sampled_from(PRODUCTS)), "ordered_at": when(future),
                     "quantity": 1, "amount": float(draw(st.integers(1, 100)))}
                for i in range(draw(st.integers(0, n)))
            ],
            "interactions": [
                {"customer_id": draw(st.sampled_from(CUSTOMERS)), "occurred_at": when(future),
                     "type": (kind := draw(st.sampled_from(list(InteractionType)))).value,
                     "value": float(draw(st.integers(0, 5))) if kind in ("nps", "csat") else None}
                for _ in range(draw(st.integers(0, n)))
            ],
            "lead_activities": [
                {"lead_id": draw(st.sampled_from(LEADS)), "occurred_at": when(future),
                     "type": draw(st.sampled_from(list(LeadActivityType))).value}
                for _ in range(draw(st.integers(0, n)))
            ],
        }

    return {
        "cutoff": cutoff,
        "past": events(False, 12),
        "future": events(True, 6),
        "new_customer": draw(st.booleans()),
        "end_subscription_after": draw(st.booleans()),
    }


def _lakes(tmp: Path, world: dict) -> tuple[Path, Path]:
    base = tiny_tables()
    # Every entity exists well before any cutoff.
    base["customers"] = base["customers"].with_columns(pl.lit(START - timedelta(days=30)).alias("signup_at"))
    base["leads"] = base["leads"].with_columns(
        pl.lit(START - timedelta(days=30)).alias("created_at"),
        pl.lit(None, pl.Datetime("us", "UTC")).alias("converted_at"),
        pl.lit(None, pl.Datetime("us", "UTC")).alias("lost_at"),
        pl.lit(None, pl.String).alias("customer_id"),
    )
    base["subscriptions"] = base["subscriptions"].with_columns(
        pl.lit(START - timedelta(days=10)).alias("started_at"),
        pl.lit(None, pl.Datetime("us", "UTC")).alias("ended_at"),
    )

    def tables(extra: dict[str, list[dict]] | None) -> dict[str, pl.DataFrame]:
        out = dict(base)
        rows = {k: list(v) for k, v in world["past"].items()}
        for k, v in (extra or {}).items():
            rows[k] += v
        for name, data in rows.items():
            out[name] = contract_frame(name, data)
        return out

    past = write_lake(tmp / "past", tables(None))
    future_tables = tables(world["future"])
    cutoff = world["cutoff"]
    if world["new_customer"]:
        new = contract_frame("customers", [{"customer_id": "C9", "signup_at": cutoff, "country": "US",
                                                "segment": "smb", "industry": "x", "acquisition_channel": "web"}])
        future_tables["customers"] = pl.concat([future_tables["customers"], new])
    if world["end_subscription_after"]:
        future_tables["subscriptions"] = future_tables["subscriptions"].with_columns(
            pl.lit(cutoff).alias("ended_at")
        )
        future_tables["leads"] = future_tables["leads"].with_columns(
            pl.lit(cutoff).alias("converted_at")
        )
    future = write_lake(tmp / "future", future_tables)
    return past, future


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(world=worlds())
def test_future_events_never_change_feature_tables(tmp_path_factory, world: dict) -> None:
    tmp = tmp_path_factory.mktemp("pit")
    past, future = _lakes(tmp, world)
    cutoff = world["cutoff"]
    build_features(past, tmp / "fp", [cutoff])
    build_features(future, tmp / "ff", [cutoff])
    for entity in ("customer", "lead", "product"):
        a = pl.read_parquet(tmp / "fp" / table_file(entity))
        b = pl.read_parquet(tmp / "ff" / table_file(entity))
        key = a.columns[0]
        assert a.height > 0
        assert a.sort(key).equals(b.sort(key)), entity


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(world=worlds())
def test_training_frames_ignore_events_after_the_cutoff(tmp_path_factory, world: dict) -> None:
    """Through Feast: snapshots at and after the cutoff exist, yet the frame at the
    cutoff is the same whatever happens from the cutoff on."""
    tmp = tmp_path_factory.mktemp("pitf")
    past, future = _lakes(tmp, world)
    cutoff = world["cutoff"]
    labels = pd.DataFrame(
        {"customer_id": CUSTOMERS, EVENT_TIMESTAMP: [cutoff] * 3, "label": [0, 1, 0]}
    )
    frames = []
    for lake in (past, future):
        ws = Workspace(tmp / f"ws-{lake.name}")
        snapshots = [cutoff - timedelta(days=7), cutoff, cutoff + timedelta(days=1)]
        build_features(lake, ws.feature_tables, snapshots)
        store = feature_store(ws)
        apply_repository(store, ws.feature_tables)
        frames.append(training_frame(store, "churn_v1", labels))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert frames[0]["orders_total"].notna().all()
