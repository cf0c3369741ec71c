"""Label builders on hand-built lakes, with the window edges checked exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from crmdata.errors import CrmscoreError
from features.labels import (
    LABEL,
    churn_labels,
    churn_labels_subscription,
    churn_labels_transactional,
    lead_conversion_labels,
    next_product_labels,
)
from tests.conftest import contract_frame
from tests.factories import tiny_tables, write_lake

CUT = datetime(2024, 1, 1, tzinfo=UTC)
D = timedelta(days=1)
END = CUT + 200 * D  # the lake's last event, far enough for every window


def customers(*ids: str) -> pl.DataFrame:
    return contract_frame(
        "customers",
        [{"customer_id": i, "signup_at": CUT - 400 * D, "country": "US", "segment": "s", "industry": "i",
              "acquisition_channel": "web"} for i in ids],
    )


def orders(*rows: tuple[str, datetime, str | None]) -> pl.DataFrame:
    data = [{"order_id": f"O{n}", "customer_id": c, "product_id": p, "ordered_at": t, "quantity": 1, "amount": 1.0}
            for n, (c, t, p) in enumerate(rows)]
    data.append({"order_id": "END", "customer_id": "Z", "product_id": None, "ordered_at": END, "quantity": 1, "amount": 1.0})
    return contract_frame("orders", data)


def as_dict(frame: pl.DataFrame, key: str = "customer_id") -> dict[str, int]:
    return dict(zip(frame[key], frame[LABEL], strict=True))


def test_subscription_churn(tmp_path: Path) -> None:
    subs = contract_frame("subscriptions", [
        {"subscription_id": "S1", "customer_id": "A", "plan": "p", "monthly_price": 1.0, "started_at": CUT - 10 * D, "ended_at": CUT + 89 * D},  # ends inside W
        {"subscription_id": "S2", "customer_id": "B", "plan": "p", "monthly_price": 1.0, "started_at": CUT - 10 * D, "ended_at": CUT + 90 * D},  # ends at the horizon: still active
        {"subscription_id": "S3", "customer_id": "C", "plan": "p", "monthly_price": 1.0, "started_at": CUT - 10 * D, "ended_at": CUT + 5 * D},  # plan change...
        {"subscription_id": "S4", "customer_id": "C", "plan": "q", "monthly_price": 2.0, "started_at": CUT + 5 * D, "ended_at": None},  # ...is not churn
        {"subscription_id": "S5", "customer_id": "E", "plan": "p", "monthly_price": 1.0, "started_at": CUT - 10 * D, "ended_at": CUT - D},  # ended before: not at risk
        {"subscription_id": "S6", "customer_id": "F", "plan": "p", "monthly_price": 1.0, "started_at": CUT, "ended_at": None},  # starts at the cutoff: not yet active
        {"subscription_id": "S7", "customer_id": "G", "plan": "p", "monthly_price": 1.0, "started_at": CUT - 10 * D, "ended_at": CUT},  # ends exactly at the cutoff
    ])
    lake = write_lake(tmp_path, {"customers": customers(*"ABCEFGZ"), "orders": orders(), "subscriptions": subs})
    labels = churn_labels_subscription(lake, [CUT], window_days=90)
    assert as_dict(labels) == {"A": 1, "B": 0, "C": 0, "G": 1}
    assert labels.columns == ["customer_id", "event_timestamp", LABEL]
    assert churn_labels(lake, [CUT], window_days=90).equals(labels)  # auto picks subscriptions


def test_transactional_churn(tmp_path: Path) -> None:
    rows = [
        ("A", CUT - 10 * D, None),              # active, buys again at +89d: retained
        ("A", CUT + 89 * D, None),
        ("B", CUT - 10 * D, None),              # active, next order at +90d: churned
        ("B", CUT + 90 * D, None),
        ("C", CUT - 366 * D, None),             # outside the 365-day look-back: not at risk
        ("E", CUT - 365 * D, None),             # exactly at the look-back edge: at risk, churned
        ("F", CUT, None),                       # first order at the cutoff: not yet active
    ]
    lake = write_lake(tmp_path, {"customers": customers(*"ABCEFZ"), "orders": orders(*rows)})
    labels = churn_labels_transactional(lake, [CUT], window_days=90, lookback_days=365)
    assert as_dict(labels) == {"A": 0, "B": 1, "E": 1}
    assert churn_labels(lake, [CUT], window_days=90).equals(labels)  # auto: no subscriptions table


def test_lead_conversion(tmp_path: Path) -> None:
    def lead(i: str, created: datetime, converted: datetime | None = None, lost: datetime | None = None) -> dict:
        return {"lead_id": i, "created_at": created, "source": "web", "country": "US", "industry": "x",
                    "company_size": "1-10", "job_seniority": "manager", "converted_at": converted, "lost_at": lost}

    leads = contract_frame("leads", [
        lead("L1", CUT - D, converted=CUT + 59 * D),   # converts inside W
        lead("L2", CUT - D, converted=CUT + 60 * D),   # at the horizon: outside
        lead("L3", CUT - D, converted=CUT - D),        # converted before: not open
        lead("L4", CUT - D, lost=CUT - D),             # lost before: not open
        lead("L5", CUT),                               # created at the cutoff: not yet a lead
        lead("L6", CUT - D, converted=CUT),            # converts exactly at the cutoff: open, positive
        lead("L7", CUT - D, lost=CUT + D),             # lost later: open, negative
    ])
    lake = write_lake(tmp_path, {"customers": customers("Z"), "orders": orders(), "leads": leads})
    labels = lead_conversion_labels(lake, [CUT], window_days=60)
    assert as_dict(labels, "lead_id") == {"L1": 1, "L2": 0, "L6": 1, "L7": 0}


def test_next_products(tmp_path: Path) -> None:
    products = contract_frame("products", [
        {"product_id": "KIT", "name": "k", "category": "c", "price": 1.0, "is_repeatable": False},
        {"product_id": "REFILL", "name": "r", "category": "c", "price": 1.0, "is_repeatable": True},
        {"product_id": "NEW", "name": "n", "category": "c", "price": 1.0, "is_repeatable": False},
    ])
    rows = [
        ("A", CUT - 30 * D, "KIT"),     # owned non-repeatable ...
        ("A", CUT + 2 * D, "KIT"),      # ... so buying it again is no label
        ("A", CUT - 30 * D, "REFILL"),
        ("A", CUT + 3 * D, "REFILL"),   # repeatable: a label
        ("A", CUT + 4 * D, "REFILL"),   # twice in the window: one row
        ("A", CUT + 29 * D, "NEW"),     # inside the 30-day window
        ("B", CUT + 30 * D, "NEW"),     # at the horizon: outside
        ("B", CUT, "KIT"),              # at the cutoff: inside
        ("B", CUT + D, None),           # no product id: ignored
    ]
    lake = write_lake(tmp_path, {"customers": customers("A", "B", "Z"), "orders": orders(*rows), "products": products})
    labels = next_product_labels(lake, [CUT], window_days=30)
    got = sorted(zip(labels["customer_id"], labels["product_id"], strict=True))
    assert got == [("A", "NEW"), ("A", "REFILL"), ("B", "KIT")]
    assert labels[LABEL].to_list() == [1, 1, 1]


def test_censored_cutoffs_are_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lake = write_lake(tmp_path, {"customers": customers("A", "Z"), "orders": orders(("A", CUT - D, None))})
    labels = churn_labels_transactional(lake, [CUT, END - 89 * D, END - 90 * D], window_days=90)
    assert sorted(set(labels["event_timestamp"])) == [CUT, END - 90 * D]
    assert "dropped 1 cutoffs" in caplog.text


def test_missing_tables_say_so(tmp_path: Path) -> None:
    tables = tiny_tables()
    lake = write_lake(tmp_path, {"customers": tables["customers"], "orders": tables["orders"]})
    with pytest.raises(CrmscoreError, match="needs the leads table"):
        lead_conversion_labels(lake, [datetime(2023, 6, 1, tzinfo=UTC)], window_days=1)
    with pytest.raises(CrmscoreError, match="needs the subscriptions table"):
        churn_labels_subscription(lake, [datetime(2023, 6, 1, tzinfo=UTC)], window_days=1)
