"""Tiny hand-built lakes that satisfy the contract, for tests to break one rule at a time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl

from crmdata.contract import TABLES
from crmdata.lake import LakeManifest, write_tables


def ts(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def tiny_tables() -> dict[str, pl.DataFrame]:
    """Every contract table with a few valid rows (ids as strings, UTC timestamps)."""
    rows: dict[str, dict[str, list]] = {
        "customers": {
            "customer_id": ["C1", "C2", "C3"],
            "signup_at": [ts(2023, 1, 5), ts(2023, 3, 1), ts(2024, 2, 10)],
            "country": ["US", "DE", "FR"],
            "segment": ["smb", "enterprise", "smb"],
            "industry": ["retail", "software", "health"],
            "acquisition_channel": ["web", "partner", "referral"],
            "name": ["Ada Lovelace", "Alan Turing", None],
            "email": ["ada@example.com", "alan@example.com", None],
            "phone": [None, "+44 20 0000 0000", None],
        },
        "products": {
            "product_id": ["P1", "P2"],
            "name": ["Starter kit", "Refill"],
            "category": ["hardware", "consumables"],
            "price": [120.0, 15.5],
            "is_repeatable": [False, True],
        },
        "orders": {
            "order_id": ["O1", "O2", "O3", "O4"],
            "customer_id": ["C1", "C1", "C2", "C3"],
            "product_id": ["P1", "P2", "P2", None],
            "ordered_at": [ts(2023, 1, 6), ts(2023, 2, 1), ts(2023, 3, 2), ts(2024, 2, 11)],
            "quantity": [1, 3, 2, 1],
            "amount": [120.0, 46.5, 31.0, 9.99],
        },
        "subscriptions": {
            "subscription_id": ["S1", "S2"],
            "customer_id": ["C1", "C2"],
            "plan": ["basic", "pro"],
            "monthly_price": [19.0, 99.0],
            "started_at": [ts(2023, 1, 5), ts(2023, 3, 1)],
            "ended_at": [None, ts(2024, 1, 1)],
        },
        "interactions": {
            "customer_id": ["C1", "C1", "C2", "C2"],
            "occurred_at": [ts(2023, 1, 7), ts(2023, 2, 2), ts(2023, 4, 1), ts(2023, 5, 1)],
            "type": ["login", "nps", "support_ticket", "csat"],
            "value": [None, 9.0, None, 4.0],
        },
        "leads": {
            "lead_id": ["L1", "L2", "L3"],
            "created_at": [ts(2023, 1, 1), ts(2023, 6, 1), ts(2024, 1, 1)],
            "source": ["web", "event", "referral"],
            "country": ["US", "GB", "US"],
            "industry": ["retail", "software", "retail"],
            "company_size": ["11-50", "201-1000", "1-10"],
            "job_seniority": ["manager", "vp", "individual"],
            "converted_at": [ts(2023, 1, 5), None, None],
            "lost_at": [None, ts(2023, 9, 1), None],
            "customer_id": ["C1", None, None],
        },
        "lead_activities": {
            "lead_id": ["L1", "L1", "L2"],
            "occurred_at": [ts(2023, 1, 2), ts(2023, 1, 3), ts(2023, 6, 2)],
            "type": ["web_visit", "demo_request", "pricing_page_visit"],
        },
    }
    return {name: pl.DataFrame(data, schema=TABLES[name].polars_schema()) for name, data in rows.items()}


def write_lake(
    directory: Path,
    tables: dict[str, pl.DataFrame] | None = None,
    custom_attributes: dict[str, dict[str, str]] | None = None,
) -> Path:
    """Write a lake (default: ``tiny_tables()``) with a manifest; returns the directory."""
    manifest = LakeManifest(source="test", custom_attributes=custom_attributes or {})
    write_tables(directory, tiny_tables() if tables is None else tables, manifest)
    return directory


def online_frame(result: Any) -> pd.DataFrame:
    """An online read's columns as a DataFrame with the dtypes pandas infers (for comparing the
    fast read with Feast's SDK read value by value)."""
    lists = {k: v.tolist() if hasattr(v, "tolist") else list(v) for k, v in result.columns.items()}
    return pd.DataFrame(lists, index=range(result.n))
