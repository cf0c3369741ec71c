"""Ground truth of a synthetic world: written under ``LAKE/_truth/``, read by ``load_truth``.

Files::

    churn.parquet            cutoff, customer_id, subscription_id, p_churn, churned, <signals>
    lead_conversion.parquet  cutoff, lead_id, p_convert, converted, <signals>
    customer_value.parquet   cutoff, customer_id, horizon_days, expected_/realized_ spend,
                             cost_to_serve and margin, expected_/realized_ orders,
                             tickets and complaints, expected_spend_mc_se
                             (see crmdata.synth.value)
    affinity_customer_factors.npy  (customers × k, float32, rows in customer id order)
    affinity_product_factors.npy   (products × k, float32)
    affinity_product_bias.npy      (products, float32)
    affinity_customers.parquet     customer_id (row i of the customer factors)
    affinity_products.parquet      product_id (row j of the product factors)
    world.json               config, parameters, calendar, epoch grids, measured rates and AUCs

The signal columns are the exact inputs of the decision rules (see
``crmdata.synth.hazards``): a feature pipeline can compare its own values
against them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from crmdata.lake import TRUTH_DIR, LakeError
from crmdata.times import as_utc

CHURN_FILE = "churn.parquet"
LEAD_FILE = "lead_conversion.parquet"
VALUE_FILE = "customer_value.parquet"
WORLD_FILE = "world.json"
CUSTOMER_FACTORS_FILE = "affinity_customer_factors.npy"
PRODUCT_FACTORS_FILE = "affinity_product_factors.npy"
PRODUCT_BIAS_FILE = "affinity_product_bias.npy"
AFFINITY_CUSTOMERS_FILE = "affinity_customers.parquet"
AFFINITY_PRODUCTS_FILE = "affinity_products.parquet"

#: Columns of the truth tables (the signal columns follow them).
CUTOFF = "cutoff"
P_CHURN = "p_churn"
CHURNED = "churned"
P_CONVERT = "p_convert"
CONVERTED = "converted"
#: Columns of the customer value truth (one row per value cutoff and customer signed up before it).
HORIZON_DAYS = "horizon_days"
EXPECTED_SPEND = "expected_spend"
REALIZED_SPEND = "realized_spend"
EXPECTED_COST = "expected_cost_to_serve"
REALIZED_COST = "realized_cost_to_serve"
EXPECTED_MARGIN = "expected_margin"
REALIZED_MARGIN = "realized_margin"
EXPECTED_ORDERS = "expected_orders"
REALIZED_ORDERS = "realized_orders"
#: Support tickets and complaints in the window (interactions of those types): the cost drivers.
EXPECTED_TICKETS = "expected_tickets"
REALIZED_TICKETS = "realized_tickets"
EXPECTED_COMPLAINTS = "expected_complaints"
REALIZED_COMPLAINTS = "realized_complaints"
#: Monte-Carlo standard error of expected_spend (0 where the expectation is closed-form).
EXPECTED_SPEND_SE = "expected_spend_mc_se"


@dataclass(frozen=True)
class Affinity:
    """The true customer × product affinity: score(i, j) = u_i · v_j + b_j.

    Given that customer i orders, the product is drawn with P(j) ∝ exp(score)
    over the products still allowed (owned non-repeatable products excluded), so
    ranking by score is the oracle ranking.
    """

    customer_ids: pl.Series
    product_ids: pl.Series
    customer_factors: np.ndarray
    product_factors: np.ndarray
    product_bias: np.ndarray

    def _rows(self, ids: object, known: pl.Series, what: str) -> np.ndarray:
        wanted = pl.Series("id", ids, dtype=pl.String)
        index = pl.DataFrame({"id": known, "row": np.arange(known.len(), dtype=np.int64)})
        rows = pl.DataFrame({"id": wanted}).join(index, on="id", how="left", maintain_order="left")["row"]
        missing = int(rows.null_count())
        if missing:
            raise KeyError(f"{missing} unknown {what} (e.g. {wanted.filter(rows.is_null())[0]!r})")
        return rows.to_numpy()

    def customer_rows(self, customer_ids: object) -> np.ndarray:
        return self._rows(customer_ids, self.customer_ids, "customer ids")

    def product_rows(self, product_ids: object) -> np.ndarray:
        return self._rows(product_ids, self.product_ids, "product ids")

    def true_affinity(self, customer_ids: object, product_ids: object) -> np.ndarray:
        """Score of each (customer, product) pair; the two sequences have equal length."""
        i = self.customer_rows(customer_ids)
        j = self.product_rows(product_ids)
        if i.size != j.size:
            raise ValueError(f"{i.size} customer ids but {j.size} product ids; pass pairs")
        return np.einsum("nk,nk->n", self.customer_factors[i], self.product_factors[j]) + self.product_bias[j]

    def scores(self, customer_ids: object) -> np.ndarray:
        """(customers × products) scores, columns in ``product_ids`` order. Chunk large inputs."""
        i = self.customer_rows(customer_ids)
        return self.customer_factors[i] @ self.product_factors.T + self.product_bias


@dataclass(frozen=True)
class Truth:
    churn: pl.DataFrame
    lead_conversion: pl.DataFrame
    affinity: Affinity
    world: dict[str, Any]

    @property
    def churn_cutoffs(self) -> list[str]:
        return list(self.world["calendar"]["churn_truth_cutoffs"])

    @property
    def lead_cutoffs(self) -> list[str]:
        return list(self.world["calendar"]["lead_truth_cutoffs"])


def truth_dir(lake: Path) -> Path:
    return Path(lake) / TRUTH_DIR


def write_truth(
    directory: Path,
    churn: pl.DataFrame,
    lead_conversion: pl.DataFrame,
    customer_ids: pl.Series,
    product_ids: pl.Series,
    customer_factors: np.ndarray,
    product_factors: np.ndarray,
    product_bias: np.ndarray,
    world: dict[str, Any],
    value: pl.DataFrame | None = None,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    churn.write_parquet(directory / CHURN_FILE, compression="zstd")
    if value is not None:
        value.write_parquet(directory / VALUE_FILE, compression="zstd")
    lead_conversion.write_parquet(directory / LEAD_FILE, compression="zstd")
    np.save(directory / CUSTOMER_FACTORS_FILE, customer_factors.astype(np.float32))
    np.save(directory / PRODUCT_FACTORS_FILE, product_factors.astype(np.float32))
    np.save(directory / PRODUCT_BIAS_FILE, product_bias.astype(np.float32))
    pl.DataFrame({"customer_id": customer_ids}).write_parquet(directory / AFFINITY_CUSTOMERS_FILE)
    pl.DataFrame({"product_id": product_ids}).write_parquet(directory / AFFINITY_PRODUCTS_FILE)
    (directory / WORLD_FILE).write_text(json.dumps(world, indent=2, sort_keys=False) + "\n")


def load_truth(lake: Path) -> Truth:
    """The ground truth of a generated lake, or a LakeError if it has none."""
    directory = truth_dir(lake)
    if not (directory / WORLD_FILE).exists():
        raise LakeError(f"{lake}: no ground truth ({TRUTH_DIR}/{WORLD_FILE} missing); only generated lakes have one")
    affinity = Affinity(
        customer_ids=pl.read_parquet(directory / AFFINITY_CUSTOMERS_FILE)["customer_id"],
        product_ids=pl.read_parquet(directory / AFFINITY_PRODUCTS_FILE)["product_id"],
        customer_factors=np.load(directory / CUSTOMER_FACTORS_FILE),
        product_factors=np.load(directory / PRODUCT_FACTORS_FILE),
        product_bias=np.load(directory / PRODUCT_BIAS_FILE),
    )
    return Truth(
        churn=pl.read_parquet(directory / CHURN_FILE),
        lead_conversion=pl.read_parquet(directory / LEAD_FILE),
        affinity=affinity,
        world=json.loads((directory / WORLD_FILE).read_text()),
    )


def truth_cutoffs(lake: Path) -> list[datetime]:
    """Cutoff dates recorded in ``_truth/world.json`` (synthetic worlds), else none.

    Any value under a key containing ``cutoff`` that parses as an ISO date counts,
    so the grid follows the generator without depending on its exact layout.
    """
    path = lake / TRUTH_DIR / WORLD_FILE
    if not path.exists():
        return []
    found: list[datetime] = []

    def walk(node: Any, under_cutoff: bool) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, under_cutoff or "cutoff" in str(key).lower())
        elif isinstance(node, list):
            for value in node:
                walk(value, under_cutoff)
        elif under_cutoff and isinstance(node, str):
            try:
                found.append(as_utc(datetime.fromisoformat(node)))
            except ValueError:
                pass

    walk(json.loads(path.read_text()), False)
    return sorted(set(found))


def read_truth_table(lake: Path, file: str, columns: list[str] | None = None) -> pl.DataFrame | None:
    """One truth table of a synthetic world (e.g. ``CHURN_FILE``), or None for other lakes."""
    path = truth_dir(lake) / file
    return pl.read_parquet(path, columns=columns) if path.exists() else None


def read_value_truth(lake: Path) -> pl.DataFrame | None:
    """The customer value truth of a synthetic world (``VALUE_FILE``), or None for other lakes.

    One row per value cutoff and customer signed up before it: the true expected spend,
    cost to serve and margin over the next ``horizon_days``, and the realized ones
    (realized spend = the customer's order amounts in (cutoff, cutoff + horizon]).
    """
    return read_truth_table(lake, VALUE_FILE)


def truth_window_days(lake: Path, kind: str) -> int | None:
    """The label window (days) the world's ``kind`` truth (``churn``, ``lead``) is defined over,
    or None for lakes without ground truth: an oracle only compares to a model of that window."""
    path = truth_dir(lake) / WORLD_FILE
    if not path.exists():
        return None
    value = json.loads(path.read_text()).get("calendar", {}).get(f"{kind}_window_days")
    return int(value) if value is not None else None
