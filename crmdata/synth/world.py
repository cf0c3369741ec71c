"""``generate_world``: simulate a whole CRM history and write it as a lake with ground truth.

Order of work: simulate leads → build the customer roster (direct sign-ups +
converted leads) → simulate customers week by week → choose the product of
every order → write the small tables, the truth and the manifest. The big
tables stream to parquet on a background thread as soon as their arrays exist.
Everything is written into an ``atomic_dir``, so a failed run leaves the
previous lake intact.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from time import perf_counter
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel
from rich.table import Table as RichTable

from crmdata.contract import (
    CUSTOMERS,
    INTERACTIONS,
    LEAD_ACTIVITIES,
    LEADS,
    ORDERS,
    PRODUCTS,
    SUBSCRIPTIONS,
    TABLES,
)
from crmdata.lake import MANIFEST, TRUTH_DIR, LakeManifest, atomic_dir, table_path, write_tables
from crmdata.synth import tables as tb
from crmdata.synth.activity import CustomerHistory, simulate_customers
from crmdata.synth.catalog import build_catalog, customer_factors
from crmdata.synth.config import (
    CHURN_EPOCH_WEEKS,
    CHURN_WINDOW_DAYS,
    LEAD_EPOCH_WEEKS,
    LEAD_WINDOW_DAYS,
    US_PER_S,
    WEEK_S,
    Calendar,
    WorldConfig,
)
from crmdata.synth.customers import build_roster
from crmdata.synth.epochs import EpochRate, EpochTruth
from crmdata.synth.leads import simulate_leads
from crmdata.synth.params import WorldParams
from crmdata.synth.purchases import choose_products, quantities_and_amounts
from crmdata.synth.sampling import rank_auc, stream
from crmdata.synth.value import value_truth, value_weeks
from crmdata.truth import CHURNED, CONVERTED, CUTOFF, P_CHURN, P_CONVERT, write_truth

log = logging.getLogger(__name__)


class OutcomeStats(BaseModel):
    """Realized rate and oracle AUC of one decision over the truth cutoffs."""

    rows: int
    rate: float
    oracle_auc: float
    #: Mean over cutoffs of the per-cutoff rate and AUC (the pooled figures mix cutoffs).
    mean_cutoff_rate: float
    mean_cutoff_auc: float

    @classmethod
    def of(cls, truth: list[EpochTruth]) -> OutcomeStats:
        if not truth:
            nan = float("nan")
            return cls(rows=0, rate=nan, oracle_auc=nan, mean_cutoff_rate=nan, mean_cutoff_auc=nan)
        p = np.concatenate([t.probability for t in truth])
        y = np.concatenate([t.outcome for t in truth])
        per_rate = [float(t.outcome.mean()) for t in truth if t.outcome.size]
        per_auc = [a for a in (rank_auc(t.probability, t.outcome) for t in truth) if not np.isnan(a)]
        return cls(
            rows=int(y.size),
            rate=float(y.mean()) if y.size else float("nan"),
            oracle_auc=rank_auc(p, y),
            mean_cutoff_rate=float(np.mean(per_rate)) if per_rate else float("nan"),
            mean_cutoff_auc=float(np.mean(per_auc)) if per_auc else float("nan"),
        )


class WorldSummary(BaseModel):
    """What ``generate_world`` made, for the CLI and the benchmark."""

    out_dir: str
    seed: int
    rows: dict[str, int]
    churn: OutcomeStats
    conversion: OutcomeStats
    orders_per_customer: float
    seconds: float

    def render(self) -> RichTable:
        table = RichTable(title=f"synthetic world (seed {self.seed}) → {self.out_dir}")
        table.add_column("what")
        table.add_column("value", justify="right")
        for name, n in self.rows.items():
            table.add_row(f"{name} rows", f"{n:,}")
        table.add_row("orders per customer", f"{self.orders_per_customer:.1f}")
        table.add_row(
            f"churn within {CHURN_WINDOW_DAYS} days (active subscribers)",
            f"{self.churn.rate:.1%} of {self.churn.rows:,}",
        )
        table.add_row("churn oracle AUC", f"{self.churn.oracle_auc:.3f}")
        table.add_row(
            f"conversion within {LEAD_WINDOW_DAYS} days (open leads)",
            f"{self.conversion.rate:.1%} of {self.conversion.rows:,}",
        )
        table.add_row("conversion oracle AUC", f"{self.conversion.oracle_auc:.3f}")
        table.add_row("seconds", f"{self.seconds:.1f}")
        return table


def generate_world(config: WorldConfig, out_dir: Path, params: WorldParams | None = None) -> WorldSummary:
    """Simulate the world of ``config`` and write it, with ground truth, to ``out_dir``."""
    started = perf_counter()
    params = params or WorldParams()
    calendar = Calendar.of(config)
    seed = config.seed
    log.info(
        "generating %d customers, %d leads, %d products, seed %d, %s → %s",
        config.customers,
        config.leads,
        config.products,
        seed,
        calendar.origin.date(),
        calendar.end.date(),
    )
    rows: dict[str, int] = {}
    manifest = LakeManifest(source=f"generate seed={seed}", custom_attributes=tb.CUSTOM_ATTRIBUTES)
    # The big tables are written by one background thread while the main thread
    # simulates on (Arrow, numpy and polars release the GIL for their heavy work),
    # which puts the second core to use. Each table's bytes depend only on its data.
    with atomic_dir(out_dir) as tmp, ThreadPoolExecutor(max_workers=1, thread_name_prefix="lake-writer") as writer:
        pending: dict[str, Future[int]] = {}

        def write_big(name: str, job: Callable[[Path], int]) -> None:
            pending[name] = writer.submit(job, table_path(tmp, name))

        def write_small(name: str, frame: pl.DataFrame) -> None:
            write_tables(tmp, {name: frame}, manifest)  # one table per call: see the manifest below
            rows[name] = frame.height

        leads = simulate_leads(config.leads, calendar, params.lead_behaviour, params.lead, stream(seed, "leads"))
        lead_ids = tb.make_ids(LEADS.name, leads.n)
        write_big(LEAD_ACTIVITIES.name, lambda path: tb.write_lead_activities(path, leads, lead_ids, calendar))

        roster = build_roster(config, calendar, leads, params.behaviour, stream(seed, "roster"))
        catalog = build_catalog(config.products, config.factors, params.purchase, stream(seed, "catalog"))
        users = customer_factors(roster, config.factors, params.purchase, stream(seed, "affinity"))
        history = simulate_customers(
            roster,
            calendar,
            params.behaviour,
            params.churn,
            stream(seed, "customers"),
            state_weeks=value_weeks(calendar, params.value.horizon_days),
        )
        log.info("simulated in %.1f s", perf_counter() - started)
        customer_ids = tb.make_ids(CUSTOMERS.name, roster.n)
        product_ids = tb.make_ids(PRODUCTS.name, catalog.n)
        write_big(INTERACTIONS.name, lambda path: tb.write_interactions(path, history, customer_ids, calendar))

        product = choose_products(
            history.order_customer, history.order_s, users, catalog, params.purchase, stream(seed, "purchases")
        )
        quantity, amount = quantities_and_amounts(product, catalog, params.purchase, stream(seed, "amounts"))
        write_big(
            ORDERS.name,
            lambda path: tb.write_orders(
                path,
                history.order_customer,
                history.order_s,
                product,
                quantity,
                amount,
                customer_ids,
                product_ids,
                calendar,
            ),
        )

        customer_series = tb.id_series(customer_ids)
        started_value = perf_counter()
        value_frame, value_summary = value_truth(
            history.states,
            roster,
            users,
            catalog,
            history.order_customer,
            history.order_s,
            product,
            amount,
            history.interaction_customer,
            history.interaction_s,
            history.interaction_type,
            params,
            calendar,
            customer_series,
            stream(seed, "value"),
        )
        log.info("value truth: %d rows in %.2f s", value_frame.height, perf_counter() - started_value)
        lead_series = tb.id_series(lead_ids)
        write_small(CUSTOMERS.name, tb.customers_frame(roster, customer_series, calendar, stream(seed, "pii")))
        write_small(PRODUCTS.name, tb.products_frame(catalog, tb.id_series(product_ids)))
        write_small(SUBSCRIPTIONS.name, tb.subscriptions_frame(roster, history, customer_series, calendar))
        lead_customer = np.full(leads.n, -1, dtype=np.int64)
        from_lead = roster.lead_index >= 0
        lead_customer[roster.lead_index[from_lead]] = np.flatnonzero(from_lead)
        write_small(LEADS.name, tb.leads_frame(leads, lead_series, lead_customer, customer_series, calendar))

        churn_stats = OutcomeStats.of(history.truth)
        conversion_stats = OutcomeStats.of(leads.truth)
        subscription_of = np.cumsum(roster.subscribed) - 1
        subscription_series = tb.id_series(tb.make_ids(SUBSCRIPTIONS.name, int(roster.subscribed.sum())))
        churn_truth = _churn_truth(history.truth, calendar, customer_series, subscription_series, subscription_of)
        lead_truth = _lead_truth(leads.truth, calendar, lead_series)
        for name, future in pending.items():
            rows[name] = future.result()  # re-raises a failed write
        n_orders = rows[ORDERS.name]
        rows = {t: rows[t] for t in TABLES if t in rows}
        write_truth(
            tmp / TRUTH_DIR,
            churn=churn_truth,
            lead_conversion=lead_truth,
            customer_ids=customer_series,
            product_ids=tb.id_series(product_ids),
            customer_factors=users,
            product_factors=catalog.factors,
            product_bias=catalog.bias,
            world=_world_json(
                config, params, calendar, rows, n_orders, roster.n, history, leads.rates, churn_stats, conversion_stats
            )
            | {"value": value_summary},
            value=value_frame,
        )
        # write_tables records only the tables of its own call, and the big tables are
        # streamed outside it: the manifest lists every table of the lake.
        full = manifest.model_copy(update={"tables": list(rows)})
        (tmp / MANIFEST).write_text(full.model_dump_json(indent=2))

    seconds = perf_counter() - started
    summary = WorldSummary(
        out_dir=str(out_dir),
        seed=seed,
        rows=rows,
        churn=churn_stats,
        conversion=conversion_stats,
        orders_per_customer=n_orders / max(roster.n, 1),
        seconds=seconds,
    )
    log.info(
        "world written to %s in %.1f s: churn %.1f%% (AUC %.3f), conversion %.1f%% (AUC %.3f)",
        out_dir,
        seconds,
        100 * churn_stats.rate,
        churn_stats.oracle_auc,
        100 * conversion_stats.rate,
        conversion_stats.oracle_auc,
    )
    return summary


def _truth_frame(
    truth: list[EpochTruth], calendar: Calendar, keys: dict[str, Any], p_name: str, y_name: str, skip: set[str]
) -> pl.DataFrame:
    """Rows of all truth cutoffs: cutoff, the key columns, probability, outcome, signals."""
    frames = []
    for t in truth:
        at = calendar.origin_us + t.week * WEEK_S * US_PER_S
        cutoff = pl.Series(CUTOFF, np.full(t.index.size, at, dtype=np.int64)).cast(pl.Datetime("us", "UTC"))
        columns: dict[str, Any] = {CUTOFF: cutoff}
        columns.update({name: make(t.index) for name, make in keys.items()})
        columns[p_name] = t.probability.astype(np.float64)
        columns[y_name] = t.outcome.astype(bool)
        columns.update({k: v for k, v in t.signals.items() if k not in skip})
        frames.append(pl.DataFrame(columns))
    if not frames:
        return pl.DataFrame(
            {CUTOFF: pl.Series([], dtype=pl.Datetime("us", "UTC")), p_name: pl.Series([], dtype=pl.Float64)}
        )
    return pl.concat(frames)


def _churn_truth(
    truth: list[EpochTruth],
    calendar: Calendar,
    customer_ids: pl.Series,
    subscription_ids: pl.Series,
    subscription_of: np.ndarray,
) -> pl.DataFrame:
    return _truth_frame(
        truth,
        calendar,
        {
            "customer_id": lambda idx: customer_ids.gather(pl.Series(idx)),
            "subscription_id": lambda idx: subscription_ids.gather(pl.Series(subscription_of[idx])),
        },
        P_CHURN,
        CHURNED,
        skip={"loyalty_tier"},
    )


def _lead_truth(truth: list[EpochTruth], calendar: Calendar, lead_ids: pl.Series) -> pl.DataFrame:
    return _truth_frame(
        truth,
        calendar,
        {"lead_id": lambda idx: lead_ids.gather(pl.Series(idx))},
        P_CONVERT,
        CONVERTED,
        # Firmographics are columns of the leads table already.
        skip={"source", "company_size", "job_seniority", "industry", "annual_revenue_musd"},
    )


def _rates(rates: list[EpochRate], calendar: Calendar) -> list[dict[str, Any]]:
    return [
        {
            "cutoff": calendar.week_datetime(r.week).isoformat(),
            "eligible": r.eligible,
            "positives": r.positives,
            "rate": r.positives / r.eligible if r.eligible else None,
        }
        for r in rates
    ]


def _world_json(
    config: WorldConfig,
    params: WorldParams,
    calendar: Calendar,
    rows: dict[str, int],
    n_orders: int,
    n_customers: int,
    history: CustomerHistory,
    lead_rates: list[EpochRate],
    churn: OutcomeStats,
    conversion: OutcomeStats,
) -> dict[str, Any]:
    """Everything about the world except wall time, so the file is reproducible too."""

    def dates(weeks: list[int]) -> list[str]:
        return [calendar.week_datetime(w).isoformat() for w in weeks]

    return {
        "config": config.model_dump(mode="json"),
        "parameters": params.as_dict(),
        "calendar": {
            "origin": calendar.origin.isoformat(),
            "end": calendar.end.isoformat(),
            "weeks": calendar.weeks,
            "churn_epoch_weeks": CHURN_EPOCH_WEEKS,
            "churn_window_days": CHURN_WINDOW_DAYS,
            "lead_epoch_weeks": LEAD_EPOCH_WEEKS,
            "lead_window_days": LEAD_WINDOW_DAYS,
            "churn_epochs": dates(calendar.churn_epoch_weeks),
            "lead_epochs": dates(calendar.lead_epoch_weeks),
            "churn_truth_cutoffs": dates(calendar.churn_truth_weeks),
            "lead_truth_cutoffs": dates(calendar.lead_truth_weeks),
        },
        "rows": {t: rows[t] for t in TABLES if t in rows},
        "orders_per_customer": n_orders / max(n_customers, 1),
        "churn": {"truth": churn.model_dump(), "epochs": _rates(history.rates, calendar)},
        "conversion": {"truth": conversion.model_dump(), "epochs": _rates(lead_rates, calendar)},
    }
