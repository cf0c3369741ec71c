"""Customer value truth of the synthetic world: realized values equal the tables, expectations
are right (closed-form pieces against simulation of the generator's own functions, and the
world's mean expected spend against its mean realized spend), cost to serve makes some
customers unprofitable, and the truth is deterministic."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from crmdata.lake import read_table
from crmdata.synth import WorldConfig, WorldParams, generate_world, load_truth
from crmdata.synth.activity import advance_health, complaint_rate
from crmdata.synth.catalog import build_catalog
from crmdata.synth.config import Calendar
from crmdata.synth.params import BehaviourParams, PurchaseParams, ValueParams
from crmdata.synth.purchases import quantities_and_amounts
from crmdata.synth.value import (
    _CapExcess,
    _Horizon,
    _Moments,
    normal_cdf,
    product_amounts,
    value_weeks,
)
from crmdata.truth import (
    EXPECTED_COST,
    EXPECTED_MARGIN,
    EXPECTED_ORDERS,
    EXPECTED_SPEND,
    EXPECTED_SPEND_SE,
    REALIZED_COST,
    REALIZED_MARGIN,
    REALIZED_ORDERS,
    REALIZED_SPEND,
    read_value_truth,
)

CONFIG = WorldConfig(customers=3_000, leads=1_500, products=60, seed=5)
CONTRACT = {
    "cutoff": pl.Datetime("us", "UTC"),
    "customer_id": pl.String,
    "horizon_days": pl.Int64,
    EXPECTED_SPEND: pl.Float64,
    REALIZED_SPEND: pl.Float64,
    EXPECTED_COST: pl.Float64,
    REALIZED_COST: pl.Float64,
    EXPECTED_MARGIN: pl.Float64,
    REALIZED_MARGIN: pl.Float64,
}


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("value") / "lake"
    generate_world(CONFIG, out)
    return out


@pytest.fixture(scope="module")
def value(lake: Path) -> pl.DataFrame:
    frame = read_value_truth(lake)
    assert frame is not None
    return frame


def _window_sums(
    events: pl.DataFrame, at: str, value: pl.Expr, cutoffs: list, days: int
) -> pl.DataFrame:
    """Per cutoff and customer: sum of ``value`` over events with cutoff < at <= cutoff + days."""
    parts = []
    for cutoff in cutoffs:
        inside = events.filter(
            (pl.col(at) > cutoff) & (pl.col(at) <= cutoff + pl.duration(days=days))
        )
        parts.append(
            inside.group_by("customer_id")
            .agg(value.alias("total"))
            .with_columns(cutoff=pl.lit(cutoff))
        )
    return pl.concat(parts).with_columns(pl.col("cutoff").cast(pl.Datetime("us", "UTC")))


# --- the table and its contract ---------------------------------------------------------------


def test_value_truth_has_the_contract_columns_and_one_row_per_signed_up_customer(
    lake: Path, value: pl.DataFrame
) -> None:
    assert {name: value.schema[name] for name in CONTRACT} == CONTRACT
    calendar = Calendar.of(CONFIG)
    weeks = value_weeks(calendar, 365)
    assert value["cutoff"].unique().sort().to_list() == [calendar.week_datetime(w) for w in weeks]
    assert weeks and all(w in calendar.churn_truth_weeks for w in weeks)
    assert value.select(pl.struct("cutoff", "customer_id").is_unique().all()).item()
    customers = read_table(lake, "customers")
    assert customers is not None
    for cutoff, rows in value.group_by("cutoff"):
        signed_up = customers.filter(pl.col("signup_at") < cutoff[0])
        assert sorted(rows["customer_id"].to_list()) == sorted(signed_up["customer_id"].to_list())
    assert (value["horizon_days"] == 365).all()


def test_world_json_records_the_value_parameters_and_measurements(lake: Path) -> None:
    summary = load_truth(lake).world["value"]
    defaults = ValueParams()
    assert summary["horizon_days"] == defaults.horizon_days
    assert summary["gross_margin"] == defaults.gross_margin
    assert summary["ticket_cost"] == defaults.ticket_cost
    assert summary["complaint_cost"] == defaults.complaint_cost
    assert summary["mc_replicates"] == defaults.mc_replicates
    calendar = Calendar.of(CONFIG)
    assert summary["cutoffs"] == [
        calendar.week_datetime(w).isoformat() for w in value_weeks(calendar, 365)
    ]
    assert 0.0 < summary["mc_standard_error"]["total_relative_max"] < 0.01
    assert 0.0 < summary["mc_standard_error"]["share_of_squared_error"] < 0.01


def test_read_value_truth_is_none_without_ground_truth(tmp_path: Path) -> None:
    assert read_value_truth(tmp_path) is None


# --- realized values are the tables ------------------------------------------------------------


def test_realized_spend_is_the_order_amounts_in_the_window_to_the_cent(
    lake: Path, value: pl.DataFrame
) -> None:
    orders = read_table(lake, "orders")
    assert orders is not None
    cutoffs = value["cutoff"].unique().to_list()
    cents = (pl.col("amount") * 100).round().cast(pl.Int64)
    spent = _window_sums(orders, "ordered_at", cents.sum(), cutoffs, 365)
    counted = _window_sums(orders, "ordered_at", pl.len(), cutoffs, 365)
    got = value.join(spent, on=["cutoff", "customer_id"], how="left").join(
        counted.rename({"total": "n"}), on=["cutoff", "customer_id"], how="left"
    )
    assert (
        got.filter(pl.col("total").is_null())[REALIZED_SPEND].to_list()
        == [0.0] * got["total"].null_count()
    )
    assert (got[REALIZED_SPEND] * 100).round().cast(pl.Int64).to_list() == got["total"].fill_null(
        0
    ).to_list()
    assert got[REALIZED_ORDERS].to_list() == got["n"].fill_null(0).cast(pl.Int64).to_list()
    # The window's other orders are those of customers who signed up after the cutoff.
    customers = read_table(lake, "customers")
    assert customers is not None
    others = spent.join(value, on=["cutoff", "customer_id"], how="anti").join(
        customers, on="customer_id"
    )
    assert others.height > 0 and (others["signup_at"] >= others["cutoff"]).all()


def test_realized_cost_counts_tickets_and_complaints_in_the_window(
    lake: Path, value: pl.DataFrame
) -> None:
    interactions = read_table(lake, "interactions")
    assert interactions is not None
    p = ValueParams()
    cutoffs = value["cutoff"].unique().to_list()
    unit = (
        pl.when(pl.col("type") == "support_ticket")
        .then(p.ticket_cost)
        .when(pl.col("type") == "complaint")
        .then(p.complaint_cost)
        .otherwise(0.0)
    )
    cost = _window_sums(interactions, "occurred_at", unit.sum(), cutoffs, 365)
    got = value.join(cost, on=["cutoff", "customer_id"], how="left").with_columns(
        pl.col("total").fill_null(0.0)
    )
    assert got[REALIZED_COST].to_list() == got["total"].to_list()
    assert (
        got[REALIZED_MARGIN].to_list()
        == (p.gross_margin * got[REALIZED_SPEND] - got[REALIZED_COST]).to_list()
    )
    assert (
        value[EXPECTED_MARGIN].to_list()
        == (p.gross_margin * value[EXPECTED_SPEND] - value[EXPECTED_COST]).to_list()
    )


# --- the expectations ---------------------------------------------------------------------------


def test_mean_expected_agrees_with_mean_realized_within_sampling_error(value: pl.DataFrame) -> None:
    """At every cutoff: |mean realized - mean expected| < 4 standard errors (customer sampling + MC)."""
    for (cutoff,), rows in value.group_by("cutoff"):
        n = rows.height
        for expected, realized in (
            (EXPECTED_ORDERS, REALIZED_ORDERS),
            (EXPECTED_SPEND, REALIZED_SPEND),
        ):
            gap = rows[realized].cast(pl.Float64) - rows[expected]
            se = float(np.sqrt(gap.var() / n + (rows[EXPECTED_SPEND_SE] ** 2).sum() / n**2))
            assert abs(gap.mean()) < 4 * se, (
                f"{cutoff}: {expected} off by {gap.mean():.2f} (se {se:.2f})"
            )
        gap = rows[REALIZED_COST] - rows[EXPECTED_COST]
        assert abs(gap.mean()) < 4 * float(np.sqrt(gap.var() / n)), (
            f"{cutoff}: cost off by {gap.mean():.2f}"
        )


def test_expected_spend_ranks_realized_spend(value: pl.DataFrame) -> None:
    for _, rows in value.group_by("cutoff"):
        rho = rows.select(pl.corr(EXPECTED_SPEND, REALIZED_SPEND, method="spearman")).item()
        assert rho > 0.6


def test_some_customers_have_a_negative_expected_margin_at_every_cutoff(
    value: pl.DataFrame,
) -> None:
    shares = value.group_by("cutoff").agg((pl.col(EXPECTED_MARGIN) < 0).mean().alias("share"))[
        "share"
    ]
    assert shares.min() >= 0.05
    assert shares.max() < 0.5  # most customers are profitable


def test_health_moments_match_simulated_health_paths() -> None:
    """The closed-form E[exp(beta h_k)] against 200k paths drawn with the simulator's health step."""
    b = BehaviourParams()
    h0 = np.array([-1.5, 0.0, 0.8], dtype=np.float32)
    mean = np.array([-0.3, 0.2, 0.5], dtype=np.float32)
    paths = 200_000
    h = np.repeat(h0, paths)
    mu = np.repeat(mean, paths)
    rng = np.random.default_rng(0)
    weeks = 30
    draws = {
        beta: np.empty((3, weeks)) for beta in (b.order_health, b.ticket_health, b.complaint_health)
    }
    errors = {beta: np.empty((3, weeks)) for beta in draws}
    for k in range(weeks):
        advance_health(h, mu, b, rng)
        for beta, mean_k in draws.items():
            e = np.exp(beta * h.astype(np.float64)).reshape(3, paths)
            mean_k[:, k] = e.mean(axis=1)
            errors[beta][:, k] = e.std(axis=1) / np.sqrt(paths)
    for beta in sorted(draws):
        m = _Moments(beta, weeks, b)
        exact = np.stack(
            [m.sums(h0, mean, np.eye(weeks)[k][None, :])[:, 0] for k in range(weeks)], axis=1
        )
        z = (draws[beta] - exact) / errors[beta]
        assert np.abs(z).max() < 4.5, f"beta {beta}: worst z {np.abs(z).max():.1f}"


def test_cap_excess_matches_simulated_health_paths() -> None:
    """What the complaint cap takes off, tabulated, against 100k paths of the simulator's health step."""
    b = BehaviourParams()
    hz = _Horizon(365, b)
    cap = _CapExcess(b.complaint_health, b.complaint_cap, hz, b)
    h0 = np.array([-1.5, 0.0], dtype=np.float32)
    mean = np.array([-0.8, 0.3], dtype=np.float32)
    paths = 100_000
    h, mu = np.repeat(h0, paths), np.repeat(mean, paths)
    ones = np.ones(h.size, dtype=np.float32)
    rng = np.random.default_rng(3)
    excess = np.zeros(h.size)
    for k in range(hz.weeks):
        advance_health(h, mu, b, rng)
        excess += hz.weight[k] * np.maximum(complaint_rate(h, ones, b) - b.complaint_cap, 0.0)
    excess = excess.reshape(2, paths)
    m = np.multiply.outer(h0.astype(np.float64), cap.a) + np.multiply.outer(
        mean.astype(np.float64), 1 - cap.a
    )
    table = cap.sums(
        cap.position(m), np.full(2, np.log(b.complaint_base)), (hz.weight @ cap.linear)[None, :]
    )
    se = excess.std(axis=1) / np.sqrt(paths)
    assert np.all(np.abs(excess.mean(axis=1) - table) < 4 * se + 0.02 * table)
    assert table[0] > 10 * table[1] > 0  # the cap bites the unhealthy customer


def test_normal_cdf_is_accurate_in_the_tails() -> None:
    import math

    x = np.linspace(-9.0, 9.0, 2001)
    exact = np.array([0.5 * math.erfc(-v / math.sqrt(2.0)) for v in x])
    assert np.max(np.abs(normal_cdf(x) / exact - 1.0)) < 2e-7


def test_product_amounts_are_the_generators_mean_order_line() -> None:
    p = PurchaseParams()
    catalog = build_catalog(12, 4, p, np.random.default_rng(1))
    expected = product_amounts(catalog, p)
    lines = 400_000
    product = np.repeat(np.arange(catalog.n), lines)
    _, amount = quantities_and_amounts(product, catalog, p, np.random.default_rng(2))
    amount = amount.reshape(catalog.n, lines)
    z = (amount.mean(axis=1) - expected) / (amount.std(axis=1) / np.sqrt(lines) + 1e-12)
    assert np.abs(z).max() < 4.5
    fixed = ~catalog.repeatable
    # A non-repeatable product is one unit: the mean is exact over the three discounts.
    weights = np.asarray(p.discount_weights) / sum(p.discount_weights)
    for j in np.flatnonzero(fixed):
        assert expected[j] == pytest.approx(
            np.round(catalog.price[j] * np.asarray(p.discount_factors), 2) @ weights
        )


def test_order_factor_after_a_churn_decision_counts_end_and_dormancy() -> None:
    b = BehaviourParams()
    hz = _Horizon(365, b)
    assert hz.weeks == 53 and hz.weight[-1] == pytest.approx(1 / 7) and hz.weight[:-1].sum() == 52
    assert hz.epochs == [13, 26, 39]
    # Before any end the factor is 1; once every end has come it decays towards the dormant factor.
    assert hz.order_factor[0] == pytest.approx(1.0, abs=1e-6)
    keep = np.exp(-b.dormancy_rate)
    window_weeks = 90 / 7
    m = 20  # every end has happened (ends are within 90 days)
    ends = np.arange(14)
    share = np.diff(np.r_[0.0, np.minimum(1.0, (ends * 7 * 86_400 + 1) / (90 * 86_400))])
    factor = (
        share
        * (
            b.order_factor_churned * keep ** (m - ends)
            + b.order_factor_dormant * (1 - keep ** (m - ends))
        )
    ).sum()
    assert hz.order_factor[m] == pytest.approx(factor)
    assert window_weeks < 13


# --- configuration and determinism ---------------------------------------------------------------


def test_costs_and_horizon_follow_the_world_params(tmp_path: Path) -> None:
    config = WorldConfig(customers=600, leads=300, products=30, seed=2, weeks=120)
    params = WorldParams(
        value=replace(ValueParams(), horizon_days=180, ticket_cost=0.0, complaint_cost=0.0)
    )
    out = tmp_path / "lake"
    generate_world(config, out, params)
    frame = read_value_truth(out)
    assert frame is not None and frame.height > 0
    assert (frame["horizon_days"] == 180).all()
    assert (frame[EXPECTED_COST] == 0.0).all() and (frame[REALIZED_COST] == 0.0).all()
    calendar = Calendar.of(config)
    assert frame["cutoff"].unique().sort().to_list() == [
        calendar.week_datetime(w) for w in value_weeks(calendar, 180)
    ]
    assert load_truth(out).world["value"]["share_negative_margin"] == 0.0


def test_same_seed_gives_the_same_value_truth(tmp_path: Path) -> None:
    config = WorldConfig(customers=500, leads=250, products=30, seed=9, weeks=120)
    generate_world(config, tmp_path / "a")
    generate_world(config, tmp_path / "b")
    first, second = read_value_truth(tmp_path / "a"), read_value_truth(tmp_path / "b")
    assert first is not None and second is not None and first.height > 0
    assert first.equals(second)


def test_a_horizon_longer_than_the_history_leaves_an_empty_table(tmp_path: Path) -> None:
    config = WorldConfig(customers=300, leads=100, products=20, seed=4, weeks=110)
    out = tmp_path / "lake"
    generate_world(config, out, WorldParams(value=replace(ValueParams(), horizon_days=800)))
    frame = read_value_truth(out)
    assert frame is not None and frame.height == 0
    assert {name: frame.schema[name] for name in CONTRACT} == CONTRACT
    summary = load_truth(out).world["value"]
    assert summary["cutoffs"] == [] and summary["share_negative_margin"] is None
