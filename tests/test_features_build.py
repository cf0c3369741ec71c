"""The feature pipeline on hand-built lakes: window boundaries, values computed by
hand, custom attributes, missing optional tables, the snapshot grid, reruns."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from crmdata.errors import CrmscoreError
from crmdata.lake import TRUTH_DIR
from features.build import BUILD_SUMMARY, build_features, read_build_summary
from features.catalog import (
    EVENT_TIMESTAMP,
    FEATURES,
    NOT_MODEL_INPUTS,
    attribute_column,
    table_file,
)
from features.grid import parse_dates, parse_every, snapshot_grid
from features.labels import open_leads
from tests.conftest import contract_frame
from tests.factories import tiny_tables, write_lake

CUTOFF = datetime(2024, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)


def ts(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def read(out: Path, entity: str) -> pl.DataFrame:
    return pl.read_parquet(out / table_file(entity))


def row(out: Path, entity: str, key: str, as_of: datetime) -> dict:
    frame = read(out, entity).filter(
        (pl.col(frame_key(entity)) == key) & (pl.col(EVENT_TIMESTAMP) == as_of)
    )
    assert frame.height == 1, f"expected one {entity} row for {key} at {as_of}, got {frame.height}"
    return frame.to_dicts()[0]


def frame_key(entity: str) -> str:
    return {"customer": "customer_id", "lead": "lead_id", "product": "product_id"}[entity]


def boundary_lake(directory: Path) -> Path:
    """One customer; orders exactly at the cutoff, 1, 30, 31, 89, 90, 91 days before it."""
    customers = contract_frame(
        "customers",
        [
            {"customer_id": "B1", "signup_at": ts(2023, 1, 1), "country": "US", "segment": "smb",
                 "industry": "retail", "acquisition_channel": "web"},
        ],
    )
    offsets = {"at": 0, "d1": 1, "d30": 30, "d31": 31, "d90": 90, "d91": 91}
    orders = contract_frame(
        "orders",
        [
            {"order_id": name, "customer_id": "B1", "product_id": None,
                 "ordered_at": CUTOFF - days * DAY, "quantity": 1, "amount": float(10 * (i + 1))}
            for i, (name, days) in enumerate(offsets.items())
        ],
    )
    return write_lake(directory, {"customers": customers, "orders": orders})


def test_window_boundaries(tmp_path: Path) -> None:
    lake = boundary_lake(tmp_path / "lake")
    out = tmp_path / "features"
    build_features(lake, out, [CUTOFF])
    r = row(out, "customer", "B1", CUTOFF)
    # orders_30d counts as_of - 30d <= ordered_at < as_of:
    #   the order at the cutoff is excluded, 1 and 30 days before are in, 31 is not.
    assert r["orders_30d"] == 2
    assert r["revenue_30d"] == 20.0 + 30.0
    # 90-day window: 1, 30, 31 and 90 days before; 91 is outside.
    assert r["orders_90d"] == 4
    assert r["orders_365d"] == 5
    assert r["orders_total"] == 5
    assert r["revenue_total"] == 20.0 + 30.0 + 40.0 + 50.0 + 60.0
    assert r["days_since_last_order"] == 1.0
    # Previous 90 days = [as_of - 120d, as_of - 30d): the 31-, 90- and 91-day orders.
    assert r["orders_trend"] == pytest.approx(2 - 3 * 30 / 90)


def test_a_snapshot_on_the_order_day_excludes_it(tmp_path: Path) -> None:
    lake = boundary_lake(tmp_path / "lake")
    out = tmp_path / "features"
    build_features(lake, out, [CUTOFF, CUTOFF + timedelta(microseconds=1)])
    before = row(out, "customer", "B1", CUTOFF)
    after = row(out, "customer", "B1", CUTOFF + timedelta(microseconds=1))
    assert after["orders_total"] == before["orders_total"] + 1
    assert after["days_since_last_order"] == pytest.approx(1e-6 / 86400 * 1)


def test_values_match_hand_computation(tmp_path: Path) -> None:
    lake = write_lake(tmp_path / "lake")  # tests/factories.tiny_tables
    out = tmp_path / "features"
    build_features(lake, out, [ts(2023, 3, 1), ts(2024, 2, 1), ts(2023, 1, 4), ts(2023, 3, 10)])

    c1 = row(out, "customer", "C1", ts(2023, 3, 1))
    assert c1["tenure_days"] == 55.0  # signup 2023-01-05
    assert (c1["orders_30d"], c1["revenue_30d"]) == (1, 46.5)  # O2 2023-02-01 only
    assert (c1["orders_90d"], c1["revenue_90d"]) == (2, 166.5)
    assert c1["avg_order_value"] == 83.25
    assert c1["days_since_last_order"] == 28.0
    assert c1["orders_trend"] == pytest.approx(1 - 1 / 3)  # O1 in the previous 90 days
    assert (c1["distinct_products"], c1["distinct_categories"]) == (2, 2)
    assert c1["days_since_last_login"] == 53.0  # login 2023-01-07
    assert c1["last_nps"] == 9.0 and c1["last_csat"] is None
    assert c1["email_open_rate_90d"] is None  # no sends: a rate is undefined
    assert (c1["subscription_active"], c1["subscription_plan"]) == (1, "basic")
    assert (c1["subscription_monthly_price"], c1["subscription_age_days"]) == (19.0, 55.0)
    assert c1["segment"] == "smb" and c1["country"] == "US"

    # C2 signs up exactly on 2023-03-01: not a customer yet at that snapshot.
    assert read(out, "customer").filter(
        (pl.col("customer_id") == "C2") & (pl.col(EVENT_TIMESTAMP) == ts(2023, 3, 1))
    ).is_empty()
    c2 = row(out, "customer", "C2", ts(2024, 2, 1))
    assert (c2["subscription_active"], c2["subscriptions_ended"]) == (0, 1)  # ended 2024-01-01
    assert c2["subscription_plan"] is None
    assert c2["last_csat"] == 4.0
    assert c2["days_since_last_ticket"] == (ts(2024, 2, 1) - ts(2023, 4, 1)).days
    assert (c2["tickets_30d"], c2["tickets_90d"]) == (0, 0)

    l1 = row(out, "lead", "L1", ts(2023, 1, 4))
    assert l1["days_since_created"] == 3.0
    assert (l1["activities_7d"], l1["web_visit_7d"], l1["demo_request_7d"]) == (2, 1, 1)
    assert (l1["demo_requested"], l1["days_since_last_activity"]) == (1, 1.0)
    assert (l1["company_size"], l1["company_size_rank"]) == ("11-50", 1)
    assert (l1["job_seniority"], l1["job_seniority_rank"]) == ("manager", 1)
    assert l1["engagement_velocity"] == pytest.approx(2 / 7 - 2 / 30)
    assert l1["pricing_page_visits"] == 0

    p2 = row(out, "product", "P2", ts(2023, 3, 10))
    assert p2["product_orders_30d"] == 1  # O3 2023-03-02; O2 2023-02-01 is 37 days back
    assert (p2["product_orders_90d"], p2["product_buyers_90d"]) == (2, 2)
    assert p2["product_repeat_rate"] == 0.0
    assert (p2["product_price"], p2["product_category"], p2["product_is_repeatable"]) == (
        15.5, "consumables", 1,
    )


def test_lead_status_as_of_each_snapshot(tmp_path: Path) -> None:
    """``lead_status`` / ``lead_closed_at`` follow the labels' open rule at each snapshot:
    a lead is closed by a conversion or loss strictly before as_of, and the date is the
    UTC day of that event."""
    first, second = ts(2022, 10, 1), ts(2022, 12, 2)
    profile = {"source": "web", "country": "US", "industry": "retail", "company_size": "11-50",
               "job_seniority": "manager", "created_at": ts(2022, 1, 3)}
    leads = contract_frame(
        "leads",
        [
            {"lead_id": "OPEN", **profile},
            {"lead_id": "CONV", **profile, "converted_at": ts(2022, 5, 10, 15, 30)},
            {"lead_id": "LOST", **profile, "lost_at": ts(2022, 9, 7, 23, 59)},
            {"lead_id": "LATE", **profile, "converted_at": ts(2022, 12, 1, 9)},  # after the first
            {"lead_id": "EDGE", **profile, "lost_at": first},  # at as_of: not before it
        ],
    )
    tables = tiny_tables()
    lake = write_lake(
        tmp_path / "lake", {"customers": tables["customers"], "orders": tables["orders"], "leads": leads}
    )
    out = tmp_path / "features"
    build_features(lake, out, [first, second])

    def status(as_of: datetime) -> dict[str, tuple[str, str | None]]:
        frame = read(out, "lead").filter(pl.col(EVENT_TIMESTAMP) == as_of)
        return {r["lead_id"]: (r["lead_status"], r["lead_closed_at"]) for r in frame.to_dicts()}

    assert status(first) == {
        "OPEN": ("open", None),
        "CONV": ("converted", "2022-05-10"),
        "LOST": ("lost", "2022-09-07"),
        "LATE": ("open", None),
        "EDGE": ("open", None),
    }
    assert status(second) == {
        "OPEN": ("open", None),
        "CONV": ("converted", "2022-05-10"),
        "LOST": ("lost", "2022-09-07"),
        "LATE": ("converted", "2022-12-01"),
        "EDGE": ("lost", "2022-10-01"),
    }
    for as_of in (first, second):  # the same rule as lead scoring's population
        opened = sorted(k for k, (s, _) in status(as_of).items() if s == "open")
        assert opened == open_leads(lake, as_of)["lead_id"].to_list()


def test_a_new_lead_gets_the_features_the_build_gives_a_stored_one(tmp_path: Path) -> None:
    """features/new_lead.py (serving's brand-new leads) and the feature SQL agree on every
    feature a lead's attributes determine: the attributes, their ranks, days since created."""
    from features.new_lead import ATTRIBUTES, new_lead_row

    as_of = ts(2022, 3, 1)
    profile = {"source": "web", "country": "US", "industry": "retail", "company_size": "11-50",
               "job_seniority": "manager", "created_at": ts(2022, 1, 3, 12)}
    leads = contract_frame("leads", [{"lead_id": "L1", **profile}])
    tables = tiny_tables()
    lake = write_lake(tmp_path / "lake", {"customers": tables["customers"], "orders": tables["orders"],
                                          "leads": leads})
    build_features(lake, tmp_path / "features", [as_of])
    stored = read(tmp_path / "features", "lead").to_dicts()[0]
    row, given = new_lead_row({a: profile[a] for a in ATTRIBUTES}, {}, profile["created_at"], as_of)
    assert given == {*ATTRIBUTES, "company_size_rank", "job_seniority_rank", "days_since_created"}
    assert {f: row[f] for f in given} == {f: stored[f] for f in given}
    assert (row["company_size_rank"], row["job_seniority_rank"]) == (1, 1)  # "11-50", "manager"


def test_status_fields_are_served_but_not_model_inputs() -> None:
    assert NOT_MODEL_INPUTS == {"lead_status", "lead_closed_at"}
    specs = {s.name: s for s in FEATURES["lead"]}
    assert all(specs[name].kind == "str" and not specs[name].model_input for name in NOT_MODEL_INPUTS)
    # The set is by name across entities: no model input anywhere may share one.
    inputs = {s.name for entity_specs in FEATURES.values() for s in entity_specs if s.model_input}
    assert not inputs & NOT_MODEL_INPUTS


def test_types_follow_the_catalogue(tmp_path: Path) -> None:
    lake = write_lake(tmp_path / "lake")
    out = tmp_path / "features"
    build_features(lake, out, [ts(2024, 2, 1)])
    kinds = {"int": pl.Int64, "float": pl.Float64, "str": pl.String}
    for entity, specs in FEATURES.items():
        schema = read(out, entity).schema
        assert schema[EVENT_TIMESTAMP] == pl.Datetime("us", "UTC")
        for spec in specs:
            assert schema[spec.name] == kinds[spec.kind], (entity, spec.name)


def test_custom_attributes_become_features(tmp_path: Path) -> None:
    tables = tiny_tables()
    tables["customers"] = tables["customers"].with_columns(
        pl.Series("tier", ["gold", "silver", None]), pl.Series("credit", [1.5, None, 3.0])
    )
    lake = write_lake(
        tmp_path / "lake", tables, {"customers": {"tier": "categorical", "credit": "numeric"}}
    )
    out = tmp_path / "features"
    summary = build_features(lake, out, [ts(2024, 3, 1)])
    assert summary.entities["customer"].attributes == ["attr_tier", "attr_credit"]
    frame = read(out, "customer").sort("customer_id")
    assert frame.schema[attribute_column("tier")] == pl.String
    assert frame.schema[attribute_column("credit")] == pl.Float64
    assert frame["attr_tier"].to_list() == ["gold", "silver", None]


def test_customers_and_orders_only(tmp_path: Path) -> None:
    """A CDNOW-shaped lake: the features it can support, and a clear account of the rest."""
    tables = tiny_tables()
    orders = tables["orders"].with_columns(pl.lit(None, pl.String).alias("product_id"))
    lake = write_lake(tmp_path / "lake", {"customers": tables["customers"], "orders": orders})
    out = tmp_path / "features"
    summary = build_features(lake, out, [ts(2024, 3, 1)])
    customer = summary.entities["customer"]
    assert "orders_30d" in customer.features and "avg_order_value" in customer.features
    assert "last_nps" not in customer.features and "subscription_plan" not in customer.features
    assert customer.unavailable["last_nps"] == "needs interactions"
    assert customer.unavailable["distinct_categories"] == "needs products"
    assert "orders_30d" in read(out, "customer").columns
    assert "last_nps" not in read(out, "customer").columns
    assert summary.entities["lead"].rows == 0 and "no leads table" in summary.entities["lead"].note
    assert summary.entities["product"].rows == 0
    assert summary.tables_missing == ["products", "subscriptions", "interactions", "leads", "lead_activities"]
    assert "lake lacks" in summary.render()


def test_customers_and_subscriptions_only(tmp_path: Path) -> None:
    """A subscription business without orders: subscription features, no order features."""
    tables = tiny_tables()
    lake = write_lake(tmp_path / "lake", {k: tables[k] for k in ("customers", "subscriptions")})
    out = tmp_path / "features"
    summary = build_features(lake, out, [ts(2023, 12, 1), ts(2024, 3, 1)])
    customer = summary.entities["customer"]
    assert customer.unavailable["orders_30d"] == "needs orders"
    assert customer.unavailable["days_since_last_order"] == "needs orders"
    frame = read(out, "customer").sort(EVENT_TIMESTAMP, "customer_id")
    assert "orders_total" not in frame.columns
    # C1 subscribed 2023-01-05 and never left; C2's subscription ended 2024-01-01; C3 has none.
    assert frame.select("customer_id", "subscription_active", "subscriptions_ended").rows() == [
        ("C1", 1, 0), ("C2", 1, 0), ("C1", 1, 0), ("C2", 0, 1), ("C3", 0, 0),
    ]
    assert summary.entities["product"].rows == 0


def test_lake_without_required_table_is_an_error(tmp_path: Path) -> None:
    tables = tiny_tables()
    lake = write_lake(tmp_path / "lake", {"orders": tables["orders"]})
    with pytest.raises(CrmscoreError, match="no customers table"):
        build_features(lake, tmp_path / "out", [ts(2024, 1, 1)])
    lake = write_lake(tmp_path / "lake2", {"customers": tables["customers"]})
    with pytest.raises(CrmscoreError, match="neither orders nor subscriptions"):
        build_features(lake, tmp_path / "out", [ts(2024, 1, 1)])


def test_rerun_replaces_never_duplicates(tmp_path: Path) -> None:
    lake = write_lake(tmp_path / "lake")
    out = tmp_path / "features"
    build_features(lake, out, [ts(2024, 1, 1), ts(2024, 2, 1)])
    build_features(lake, out, [ts(2024, 2, 1), ts(2024, 2, 1)])
    frame = read(out, "customer")
    assert frame[EVENT_TIMESTAMP].unique().to_list() == [ts(2024, 2, 1)]
    assert frame.height == frame.select("customer_id", EVENT_TIMESTAMP).unique().height
    assert read_build_summary(out).as_of == [ts(2024, 2, 1)]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".features")]


def test_added_snapshots_keep_the_old_ones_and_equal_a_full_build(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    lake = write_lake(tmp_path / "lake")
    out = tmp_path / "features"
    build_features(lake, out, [ts(2023, 6, 1), ts(2024, 1, 1)])
    result = CliRunner().invoke(app, ["features", "build", "--lake", str(lake), "--out", str(out),
                                      "--add", "2023-09-01,2024-01-01"])
    assert result.exit_code == 0, result.output
    assert read_build_summary(out).as_of == [ts(2023, 6, 1), ts(2023, 9, 1), ts(2024, 1, 1)]
    build_features(lake, tmp_path / "whole", [ts(2023, 6, 1), ts(2023, 9, 1), ts(2024, 1, 1)])
    for entity in ("customer", "lead", "product"):
        assert read(out, entity).equals(read(tmp_path / "whole", entity)), entity
    summary = read_build_summary(out)
    assert summary.entities["customer"].rows == read(out, "customer").height
    # Rerun: nothing to add, nothing rewritten.
    stamp = (out / BUILD_SUMMARY).stat().st_mtime_ns
    CliRunner().invoke(app, ["features", "build", "--lake", str(lake), "--out", str(out), "--add", "2023-09-01"])
    assert (out / BUILD_SUMMARY).stat().st_mtime_ns == stamp


def test_snapshot_grid_is_deterministic_and_includes_truth_cutoffs(tmp_path: Path) -> None:
    lake = write_lake(tmp_path / "lake")  # last event: order 2024-02-11
    grid = snapshot_grid(lake, periods=3)
    assert grid == [ts(2024, 1, 29), ts(2024, 2, 5), ts(2024, 2, 12)]
    assert all(d.weekday() == 0 and d.hour == 0 for d in grid)
    assert snapshot_grid(lake, periods=3) == grid
    (lake / TRUTH_DIR).mkdir()
    (lake / TRUTH_DIR / "world.json").write_text(
        json.dumps({"seed": 1, "labels": {"cutoffs": ["2023-10-01", "2023-12-15T00:00:00+00:00"]}})
    )
    assert snapshot_grid(lake, periods=3) == [ts(2023, 10, 1), ts(2023, 12, 15), *grid]
    assert snapshot_grid(lake, periods=3, include_truth=False) == grid
    # A snapshot exactly at the last event would miss it: the anchor is strictly after.
    assert max(grid) > ts(2024, 2, 11)


def test_parsers() -> None:
    assert parse_every("7d") == timedelta(days=7)
    assert parse_every("2w") == timedelta(weeks=2)
    assert parse_dates("2024-01-01, 2024-04-01") == [ts(2024, 1, 1), ts(2024, 4, 1)]
    with pytest.raises(CrmscoreError, match="--every"):
        parse_every("weekly")
    with pytest.raises(CrmscoreError, match="not an ISO date"):
        parse_dates("2024-13-01")


def test_summary_is_written(tmp_path: Path) -> None:
    lake = write_lake(tmp_path / "lake")
    out = tmp_path / "features"
    build_features(lake, out, [ts(2024, 1, 1)])
    assert (out / BUILD_SUMMARY).exists()
    with pytest.raises(CrmscoreError, match="features build"):
        read_build_summary(tmp_path / "nothing")
