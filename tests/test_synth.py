"""The synthetic world: contract-valid tables, deterministic, and ground truth that matches them.

One seed-fixed world of 5,000 customers is generated once per module; the
rates and oracle AUCs are checked on it without tolerance tricks (the seed is
fixed, and at this size they sit well inside their bands). The truth is checked
against labels *and signals* recomputed from the raw tables with plain polars,
which is what proves that the true probabilities are functions of what a
feature pipeline can observe.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from rich.console import Console
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from crmdata.contract import (
    COMPANY_SIZES,
    CUSTOM_ATTRIBUTE_DTYPES,
    EARLIEST_TIMESTAMP,
    EVENT_TABLES,
    JOB_SENIORITIES,
    InteractionType,
    LeadActivityType,
)
from crmdata.lake import TRUTH_DIR, read_manifest, read_table
from crmdata.synth import WorldConfig, WorldSummary, generate_world, load_truth, vocab
from crmdata.synth.config import CHURN_EPOCH_WEEKS, LEAD_EPOCH_WEEKS, Calendar
from crmdata.synth.hazards import (
    ChurnSignals,
    LeadSignals,
    churn_probability,
    conversion_probability,
)
from crmdata.synth.params import ChurnParams, LeadBehaviourParams, LeadParams
from crmdata.synth.parquet import FixedIds
from crmdata.synth.sampling import growing_times, rank_auc, thinned_events
from crmdata.truth import VALUE_FILE

DAY = timedelta(days=1)
CONFIG = WorldConfig(customers=5_000, leads=2_500, products=60, seed=3)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, WorldSummary]:
    lake = tmp_path_factory.mktemp("synth") / "lake"
    return lake, generate_world(CONFIG, lake)


@pytest.fixture(scope="module")
def lake(world: tuple[Path, WorldSummary]) -> Path:
    return world[0]


def _table(lake: Path, name: str) -> pl.DataFrame:
    frame = read_table(lake, name)
    assert frame is not None, f"{name} missing"
    return frame


# --- code: determinism and helpers -----------------------------------------------------


def test_same_seed_gives_byte_identical_tables_and_truth(tmp_path: Path) -> None:
    config = WorldConfig(customers=1_500, leads=700, products=30, seed=11)
    first, second = tmp_path / "a", tmp_path / "b"
    generate_world(config, first)
    generate_world(config, second)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file() and p.name != "_lake.json")
    assert len(files) >= len(EVENT_TABLES) + 5
    for rel in files:
        assert (first / rel).read_bytes() == (second / rel).read_bytes(), f"{rel} differs between runs"
    other = tmp_path / "c"
    generate_world(config.model_copy(update={"seed": 12}), other)
    assert (other / "orders.parquet").read_bytes() != (first / "orders.parquet").read_bytes()


def test_rank_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    score = rng.integers(0, 6, 2_000).astype(float)
    label = rng.random(2_000) < 0.2 + 0.1 * score
    assert rank_auc(score, label) == pytest.approx(roc_auc_score(label, score), abs=1e-12)
    assert np.isnan(rank_auc(score, np.zeros(2_000, dtype=bool)))


def test_thinned_events_are_poisson_with_the_given_rates() -> None:
    rng = np.random.default_rng(1)
    rate = np.where(np.arange(100_000) < 50_000, 0.02, 0.1)
    idx = thinned_events(rng, rate.size, 0.25, lambda i: rate[i])
    counts = np.bincount(idx, minlength=rate.size)
    assert counts[:50_000].mean() == pytest.approx(0.02, rel=0.05)
    assert counts[50_000:].mean() == pytest.approx(0.1, rel=0.05)


def test_growing_times_are_sorted_inside_the_span_and_grow() -> None:
    times = growing_times(np.random.default_rng(2), 20_000, 1_000, growth=2.0)
    assert np.all(np.diff(times) >= 0) and times.min() >= 0 and times.max() < 1_000
    assert (times >= 500).sum() > (times < 500).sum()


def test_fixed_ids_are_zero_padded_and_gathered() -> None:
    ids = FixedIds("C", 12)
    assert ids.range(0, 3).to_pylist() == ["C0000001", "C0000002", "C0000003"]
    assert ids.take(np.array([11, 0])).to_pylist() == ["C0000012", "C0000001"]
    assert FixedIds("O", 12_345_678).range(0, 1).to_pylist() == ["O00000001"]


def test_lead_activity_types_are_contract_types() -> None:
    params = LeadBehaviourParams()
    assert set(params.activity_types) <= {t.value for t in LeadActivityType}
    assert set(params.origin_activity) <= set(params.activity_types)
    assert len(params.origin_activity) == len(vocab.LEAD_SOURCES) == len(LeadParams().source)


def test_calendar_epochs_fit_in_the_history_and_skip_the_warm_up() -> None:
    calendar = Calendar.of(CONFIG)
    assert calendar.weeks * 7 >= 2 * 365  # at least 24 months
    assert calendar.churn_epoch_weeks[-1] + CHURN_EPOCH_WEEKS <= calendar.weeks
    assert calendar.lead_epoch_weeks[-1] + LEAD_EPOCH_WEEKS <= calendar.weeks
    assert min(calendar.churn_truth_weeks) >= CONFIG.truth_warmup_weeks
    assert all(w % CHURN_EPOCH_WEEKS == 0 for w in calendar.churn_truth_weeks)
    assert all(w % LEAD_EPOCH_WEEKS == 0 for w in calendar.lead_truth_weeks)


# --- data: the tables follow the contract -------------------------------------------------


def test_every_table_has_exactly_the_contract_dtypes(lake: Path) -> None:
    manifest = read_manifest(lake)
    assert manifest.tables == list(EVENT_TABLES)
    assert "categorical" in manifest.attributes("customers").values()
    assert "numeric" in manifest.attributes("leads").values()
    for name, spec in EVENT_TABLES.items():
        frame = _table(lake, name)
        expected = dict(spec.polars_schema())
        expected |= {c: CUSTOM_ATTRIBUTE_DTYPES[k] for c, k in manifest.attributes(name).items()}
        assert dict(frame.schema) == expected, name
        assert frame.height > 0, name


def test_generated_lake_validates_without_errors(lake: Path) -> None:
    from crmdata.validate import validate_lake

    problems = validate_lake(lake)
    assert [p for p in problems if p.severity == "error"] == []


def test_keys_are_unique_ids_are_formatted_and_foreign_keys_hold(lake: Path) -> None:
    frames = {name: _table(lake, name) for name in EVENT_TABLES}
    for name, spec in EVENT_TABLES.items():
        if spec.key:
            assert frames[name].select(spec.key).is_duplicated().sum() == 0, name
        for fk in spec.foreign_keys:
            values = frames[name][fk.column].drop_nulls()
            assert values.is_in(frames[fk.table][fk.ref_column].implode()).all(), f"{name}.{fk.column}"
    assert frames["customers"]["customer_id"].str.contains(r"^C\d{7}$").all()
    assert frames["orders"]["order_id"].str.contains(r"^O\d{7,}$").all()
    assert frames["leads"]["company_size"].is_in(list(EVENT_TABLES["leads"].column("company_size").allowed)).all()
    assert frames["interactions"]["type"].is_in([t.value for t in InteractionType]).all()


def test_timestamps_lie_in_the_history(lake: Path) -> None:
    calendar = Calendar.of(CONFIG)
    start, end = calendar.origin, calendar.end
    for name, spec in EVENT_TABLES.items():
        frame = _table(lake, name)
        for column in spec.timestamp_columns:
            values = frame[column].drop_nulls()
            assert values.max() < end, f"{name}.{column}"
            # Only the initial customer base signed up (and subscribed) before the origin.
            floor = EARLIEST_TIMESTAMP if column in ("signup_at", "started_at") else start
            assert values.min() >= floor, f"{name}.{column}"


def test_customers_carry_fake_pii_and_a_loyalty_tier(lake: Path) -> None:
    customers = _table(lake, "customers")
    assert customers.select(pl.sum_horizontal(pl.col("name", "email", "phone").null_count())).item() == 0
    assert customers["email"].n_unique() == customers.height
    assert customers["email"].str.contains(r"^[a-z.]+\d+@[a-z.]+$").all()
    assert set(customers["loyalty_tier"].unique()) == set(vocab.LOYALTY_TIERS)
    assert customers["country"].str.contains(r"^[A-Z]{2}$").all()


def test_converted_leads_become_customers_at_conversion(lake: Path) -> None:
    leads = _table(lake, "leads")
    customers = _table(lake, "customers")
    assert (leads["customer_id"].is_not_null() == leads["converted_at"].is_not_null()).all()
    assert (leads["converted_at"].is_not_null() & leads["lost_at"].is_not_null()).sum() == 0
    joined = leads.drop_nulls("customer_id").join(customers, on="customer_id", suffix="_customer")
    assert joined.height == leads["customer_id"].drop_nulls().len() > 0
    assert (joined["signup_at"] == joined["converted_at"]).all()
    assert (joined["industry"] == joined["industry_customer"]).all()
    assert (joined["acquisition_channel"] == "sales").all()


def test_one_subscription_per_subscriber_and_transactional_customers_exist(lake: Path) -> None:
    subscriptions = _table(lake, "subscriptions")
    customers = _table(lake, "customers")
    assert subscriptions["customer_id"].is_duplicated().sum() == 0
    assert 0 < subscriptions.height < customers.height
    assert subscriptions["plan"].is_in(list(vocab.PLAN_NAMES)).all()


def test_non_repeatable_products_are_bought_at_most_once_per_customer(lake: Path) -> None:
    orders = _table(lake, "orders").join(_table(lake, "products"), on="product_id")
    once = orders.filter(~pl.col("is_repeatable"))
    assert once.height > 0
    assert once.select(pl.struct("customer_id", "product_id").is_duplicated().sum()).item() == 0
    assert orders.filter(pl.col("is_repeatable")).select(
        pl.struct("customer_id", "product_id").is_duplicated().any()
    ).item()


def test_orders_average_about_twenty_per_customer(world: tuple[Path, WorldSummary]) -> None:
    _, summary = world
    assert 15 <= summary.orders_per_customer <= 25


# --- model behaviour: the truth is exact, observable and in its bands --------------------------


def test_rates_and_oracle_aucs_are_in_their_bands(world: tuple[Path, WorldSummary]) -> None:
    lake, summary = world
    truth = load_truth(lake)
    churn, leads = truth.churn, truth.lead_conversion
    assert 0.05 <= churn["churned"].mean() <= 0.25
    assert 0.05 <= leads["converted"].mean() <= 0.20
    assert 0.75 <= roc_auc_score(churn["churned"], churn["p_churn"]) <= 0.93
    assert 0.75 <= roc_auc_score(leads["converted"], leads["p_convert"]) <= 0.93
    assert summary.churn.rate == pytest.approx(churn["churned"].mean())
    assert summary.conversion.oracle_auc == pytest.approx(roc_auc_score(leads["converted"], leads["p_convert"]))
    # The probabilities are calibrated: their mean is the realized rate.
    assert churn["p_churn"].mean() == pytest.approx(churn["churned"].mean(), abs=0.015)
    assert leads["p_convert"].mean() == pytest.approx(leads["converted"].mean(), abs=0.02)


def test_truth_cutoffs_are_the_epoch_grid(lake: Path) -> None:
    truth = load_truth(lake)
    calendar = Calendar.of(CONFIG)
    churn_cutoffs = [calendar.week_datetime(w) for w in calendar.churn_truth_weeks]
    lead_cutoffs = [calendar.week_datetime(w) for w in calendar.lead_truth_weeks]
    assert truth.churn["cutoff"].unique().sort().to_list() == churn_cutoffs
    assert truth.lead_conversion["cutoff"].unique().sort().to_list() == lead_cutoffs
    assert truth.churn_cutoffs == [c.isoformat() for c in churn_cutoffs]
    assert truth.world["config"]["seed"] == CONFIG.seed
    assert len(truth.world["churn"]["epochs"]) == len(calendar.churn_epoch_weeks)


def test_churn_labels_equal_labels_recomputed_from_subscriptions(lake: Path) -> None:
    subscriptions = _table(lake, "subscriptions")
    truth = load_truth(lake).churn
    for cutoff in truth["cutoff"].unique():
        active = subscriptions.filter(
            (pl.col("started_at") < cutoff) & (pl.col("ended_at").is_null() | (pl.col("ended_at") >= cutoff))
        ).select(
            "subscription_id",
            "customer_id",
            label=pl.col("ended_at").is_not_null() & (pl.col("ended_at") < cutoff + 90 * DAY),
        )
        rows = truth.filter(pl.col("cutoff") == cutoff)
        joined = active.join(rows, on=["subscription_id", "customer_id"], how="full", coalesce=True)
        assert joined.height == active.height == rows.height, cutoff
        assert (joined["label"] == joined["churned"]).all(), cutoff


def test_conversion_labels_equal_labels_recomputed_from_leads(lake: Path) -> None:
    leads = _table(lake, "leads")
    truth = load_truth(lake).lead_conversion
    for cutoff in truth["cutoff"].unique():
        open_leads = leads.filter(
            (pl.col("created_at") < cutoff)
            & (pl.col("converted_at").is_null() | (pl.col("converted_at") >= cutoff))
            & (pl.col("lost_at").is_null() | (pl.col("lost_at") >= cutoff))
        ).select(
            "lead_id", label=pl.col("converted_at").is_not_null() & (pl.col("converted_at") < cutoff + 60 * DAY)
        )
        rows = truth.filter(pl.col("cutoff") == cutoff)
        joined = open_leads.join(rows, on="lead_id", how="full", coalesce=True)
        assert joined.height == open_leads.height == rows.height, cutoff
        assert (joined["label"] == joined["converted"]).all(), cutoff


def _count(events: pl.DataFrame, key: str, cutoff: object, types: list[str], days: int | None, name: str,
           skip_days: int = 0) -> pl.DataFrame:
    window = pl.col("occurred_at") < cutoff - skip_days * DAY
    if days is not None:
        window &= pl.col("occurred_at") >= cutoff - days * DAY
    return events.filter(pl.col("type").is_in(types) & window).group_by(key).agg(pl.len().alias(name))


def test_churn_probability_is_a_function_of_the_raw_tables(lake: Path) -> None:
    """Signals recomputed from the tables at each cutoff give back p_churn exactly."""
    interactions = _table(lake, "interactions")
    orders = _table(lake, "orders")
    subscriptions = _table(lake, "subscriptions")
    customers = _table(lake, "customers")
    truth = load_truth(lake).churn
    tiers = {t: i for i, t in enumerate(vocab.LOYALTY_TIERS)}
    for cutoff in truth["cutoff"].unique().sort()[::4]:
        rows = truth.filter(pl.col("cutoff") == cutoff).select("customer_id", "subscription_id", "p_churn")
        nps = (
            interactions.filter((pl.col("type") == "nps") & (pl.col("occurred_at") < cutoff))
            .sort("occurred_at")
            .group_by("customer_id")
            .agg(nps_last=pl.col("value").last())
        )
        recency = (
            orders.filter(pl.col("ordered_at") < cutoff)
            .group_by("customer_id")
            .agg(
                days_since_last_order=(cutoff - pl.col("ordered_at").max()).dt.total_microseconds() / 86_400e6,
                orders_182d=(pl.col("ordered_at") >= cutoff - 182 * DAY).sum(),
            )
        )
        frame = rows
        for part in (
            _count(interactions, "customer_id", cutoff, ["login"], 28, "logins_28d"),
            _count(interactions, "customer_id", cutoff, ["login"], 112, "logins_prev_84d", skip_days=28),
            _count(interactions, "customer_id", cutoff, ["support_ticket"], 91, "tickets_91d"),
            _count(interactions, "customer_id", cutoff, ["complaint"], 91, "complaints_91d"),
            nps,
            recency,
            customers.select("customer_id", "loyalty_tier"),
        ):
            frame = frame.join(part, on="customer_id", how="left")
        frame = frame.join(subscriptions.select("subscription_id", "started_at", "monthly_price"), on="subscription_id")
        counts = ["logins_28d", "logins_prev_84d", "tickets_91d", "complaints_91d", "orders_182d"]
        frame = frame.with_columns(pl.col(counts).fill_null(0))
        signals = ChurnSignals(
            **{c: frame[c].to_numpy() for c in counts},
            nps_last=frame["nps_last"].fill_null(np.nan).to_numpy(),
            tenure_days=((cutoff - frame["started_at"]).dt.total_microseconds() / 86_400e6).to_numpy(),
            monthly_price=frame["monthly_price"].to_numpy(),
            days_since_last_order=frame["days_since_last_order"].fill_null(np.nan).to_numpy(),
            loyalty_tier=frame["loyalty_tier"].replace_strict(tiers).to_numpy(),
        )
        np.testing.assert_allclose(churn_probability(signals, ChurnParams()), frame["p_churn"].to_numpy(), rtol=1e-9)


def test_conversion_probability_is_a_function_of_the_raw_tables(lake: Path) -> None:
    """Signals recomputed from leads and lead_activities give back p_convert exactly."""
    leads = _table(lake, "leads")
    activities = _table(lake, "lead_activities")
    truth = load_truth(lake).lead_conversion

    def index(column: str, values: tuple[str, ...]) -> np.ndarray:
        return frame[column].replace_strict({v: i for i, v in enumerate(values)}).to_numpy()

    for cutoff in truth["cutoff"].unique().sort()[::5]:
        frame = truth.filter(pl.col("cutoff") == cutoff).select("lead_id", "p_convert")
        last = (
            activities.filter(pl.col("occurred_at") < cutoff)
            .group_by("lead_id")
            .agg(days_since_last_activity=(cutoff - pl.col("occurred_at").max()).dt.total_microseconds() / 86_400e6)
        )
        for part in (
            _count(activities, "lead_id", cutoff, ["web_visit"], 28, "web_28d"),
            _count(activities, "lead_id", cutoff, ["pricing_page_visit"], 28, "pricing_28d"),
            _count(activities, "lead_id", cutoff, ["email_open", "email_click"], 28, "email_28d"),
            _count(activities, "lead_id", cutoff, ["meeting", "call"], 28, "meetings_28d"),
            _count(activities, "lead_id", cutoff, ["content_download"], None, "content_ever"),
            _count(activities, "lead_id", cutoff, ["demo_request"], None, "demo_ever"),
            last,
        ):
            frame = frame.join(part, on="lead_id", how="left")
        frame = frame.join(leads, on="lead_id").fill_null(0)
        signals = LeadSignals(
            source=index("source", vocab.LEAD_SOURCES),
            company_size=index("company_size", COMPANY_SIZES),
            job_seniority=index("job_seniority", JOB_SENIORITIES),
            industry=index("industry", vocab.INDUSTRIES),
            annual_revenue_musd=frame["annual_revenue_musd"].to_numpy(),
            **{
                c: frame[c].to_numpy()
                for c in ("web_28d", "pricing_28d", "email_28d", "meetings_28d", "content_ever", "demo_ever")
            },
            days_since_last_activity=frame["days_since_last_activity"].to_numpy(),
            age_days=((cutoff - frame["created_at"]).dt.total_microseconds() / 86_400e6).to_numpy(),
        )
        np.testing.assert_allclose(
            conversion_probability(signals, LeadParams()), frame["p_convert"].to_numpy(), rtol=1e-9
        )


def test_purchases_follow_the_true_affinities(lake: Path) -> None:
    truth = load_truth(lake)
    orders = _table(lake, "orders").sample(20_000, seed=0)
    products = _table(lake, "products")["product_id"]
    bought = truth.affinity.true_affinity(orders["customer_id"], orders["product_id"])
    rng = np.random.default_rng(0)
    random_products = products.gather(rng.integers(0, products.len(), orders.height))
    other = truth.affinity.true_affinity(orders["customer_id"], random_products)
    assert bought.mean() > other.mean() + 0.5
    scores = truth.affinity.scores(orders["customer_id"][:5])
    assert scores.shape == (5, products.len())
    column = truth.affinity.product_rows(orders["product_id"][:5])
    np.testing.assert_allclose(scores[np.arange(5), column], bought[:5], rtol=1e-5)
    with pytest.raises(KeyError, match="unknown customer ids"):
        truth.affinity.true_affinity(["C9999999"], products[:1])


def test_truth_files_hold_no_dense_affinity_matrix(lake: Path) -> None:
    # The value truth is one row per cutoff and customer: it grows with customers, not products.
    sizes = {p.name: p.stat().st_size for p in (lake / TRUTH_DIR).iterdir() if p.name != VALUE_FILE}
    factors = np.load(lake / TRUTH_DIR / "affinity_customer_factors.npy")
    assert factors.shape == (CONFIG.customers, CONFIG.factors)
    assert max(sizes.values()) < CONFIG.customers * CONFIG.products * 4


# --- interface: summary and CLI ----------------------------------------------------------------


def test_summary_renders_rows_rates_and_aucs(world: tuple[Path, WorldSummary]) -> None:
    _, summary = world
    console = Console(record=True, width=120)
    console.print(summary.render())
    text = console.export_text()
    assert "orders rows" in text and "churn oracle AUC" in text and "conversion oracle AUC" in text


def test_cli_generate_writes_a_lake(tmp_path: Path) -> None:
    from pipelines.cli import app

    out = tmp_path / "lake"
    result = CliRunner().invoke(
        app, ["generate", "--customers", "400", "--products", "20", "--seed", "5", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "churn oracle AUC" in result.output
    assert read_manifest(out).tables == list(EVENT_TABLES)
    assert (out / TRUTH_DIR / "world.json").exists()
