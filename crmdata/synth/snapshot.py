"""A labelled snapshot export of a synthetic world (``crmscore generate --export-snapshot FILE``).

Many CRMs hand over churn data as one row per customer at one date: tenure in
months, contract type, monthly charge, a few usage and service columns, and a
churned flag (the shape of the well-known telco churn exports). This writes that
shape from a world's truth at its newest churn cutoff, so the import path for
snapshot exports (``examples/snapshot/``) can be tested and benchmarked against
known probabilities. The true churn probability goes to a separate file
(``<FILE stem>_truth.csv``): it is for evaluation, never an input.

The usage columns are the world's own churn drivers at the cutoff (logins,
tickets, complaints, last NPS, recent orders), counted before the cutoff; the
flag is the realized outcome in the truth window after it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from crmdata.errors import CrmscoreError
from crmdata.lake import read_table
from crmdata.times import as_utc
from crmdata.truth import CHURN_FILE, CHURNED, CUTOFF, P_CHURN, read_truth_table

log = logging.getLogger(__name__)

#: Days in an average month, for tenure in whole months.
DAYS_PER_MONTH = 30.4375


@dataclass(frozen=True)
class SnapshotExport:
    file: Path
    truth_file: Path
    as_of: datetime
    rows: int
    churn_rate: float


def truth_path(file: Path) -> Path:
    """Where the true probabilities of a snapshot export go: next to it, ``<stem>_truth.csv``."""
    return file.with_name(f"{file.stem}_truth.csv")


def export_snapshot(lake: Path, file: Path) -> SnapshotExport:
    """Write the snapshot CSV of the customers active at the world's newest churn cutoff."""
    truth = read_truth_table(lake, CHURN_FILE)
    customers = read_table(lake, "customers", ["customer_id", "segment", "country", "industry"])
    subscriptions = read_table(lake, "subscriptions", ["subscription_id", "plan"])
    if truth is None or customers is None or subscriptions is None:
        raise CrmscoreError(f"{lake}: --export-snapshot needs a synthetic world with subscriptions and its truth")
    as_of = truth[CUTOFF].max()
    rows = (
        truth.filter(pl.col(CUTOFF) == as_of)
        .join(customers, on="customer_id", how="left")
        .join(subscriptions, on="subscription_id", how="left")
        .sort("customer_id")
    )
    snapshot = rows.select(
        "customer_id",
        pl.col(CUTOFF).dt.strftime("%Y-%m-%d").alias("snapshot_date"),
        # Whole months started, so a customer of a few days has tenure 1 and signed up before the date.
        (pl.col("tenure_days") / DAYS_PER_MONTH).ceil().cast(pl.Int64).alias("tenure_months"),
        pl.col("plan").alias("contract"),
        pl.col("monthly_price").alias("monthly_charges"),
        "segment",
        "country",
        "industry",
        pl.col("logins_28d").alias("logins_last_month"),
        pl.col("logins_prev_84d").alias("logins_prior_3_months"),
        pl.col("tickets_91d").alias("support_tickets_3m"),
        pl.col("complaints_91d").alias("complaints_3m"),
        pl.col("nps_last").fill_nan(None).alias("last_nps"),
        pl.col("orders_182d").alias("orders_6m"),
        pl.when(pl.col(CHURNED)).then(pl.lit("Yes")).otherwise(pl.lit("No")).alias("churned"),
    )
    file.parent.mkdir(parents=True, exist_ok=True)
    snapshot.write_csv(file)
    rows.select("customer_id", P_CHURN).write_csv(truth_path(file))
    rate = float(rows[CHURNED].mean() or 0.0)
    log.info("snapshot export: %d customers active at %s, churn rate %.3f → %s", rows.height,
             f"{as_of:%Y-%m-%d}", rate, file)
    return SnapshotExport(file=file, truth_file=truth_path(file), as_of=as_utc(as_of), rows=rows.height,
                          churn_rate=rate)
