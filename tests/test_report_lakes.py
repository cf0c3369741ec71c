"""Hand-built lakes and score tables for the report tests, small enough to count by hand.

Lake A (transactional: orders, no subscriptions), report as of 2025-07-01, 6 months
(2025-01 … 2025-06), W = 60 days. Order spells ``(order, last order + 60 days]``:

    C5  orders 2024-11-05                 spell (2024-11-05, 2025-01-04]   lost in January
    C1  orders 2024-12-15, 2025-01-10     spell (2024-12-15, 2025-03-11]   lost in March
        order  2025-04-20                 spell (2025-04-20, 2025-06-19]   resurrected in April, lost in June
    C2  orders 2025-01-06, 02-01, 03-15   spell (2025-01-06, 2025-05-14]   new in January, lost in May
    C3  orders 2025-05-05, 06-10          spell (2025-05-05, open)         new in May
        order  2025-07-05 (after as_of: counted nowhere)
    C4  signed up 2025-03-01, never ordered

Signups: January 2 (C2, C3), March 1 (C4), none in February, April, May, June.

Lake B (subscription): D1 changes plan on 2025-02-15 (one spell), D2 ends 2025-03-20 and
comes back 2025-05-05, D3's subscription ends after the report date.

The numbers the tests expect are worked out in their docstrings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from crmdata.contract import TABLES
from crmdata.lake import LakeManifest, write_tables
from pipelines.scoring.table import RunManifest, partition_dir, write_manifest


def ts(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


AS_OF = ts(2025, 7, 1)
MONTHS = 6
WINDOW = 60


def frame(table: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    schema = TABLES[table].polars_schema()
    return pl.DataFrame([{c: row.get(c) for c in schema} for row in rows], schema=schema, orient="row")


def _customer(cid: str, signup: datetime) -> dict[str, Any]:
    return {"customer_id": cid, "signup_at": signup, "country": "US", "segment": "smb", "industry": "retail",
            "acquisition_channel": "web"}


def _lead(lid: str, source: str, created: datetime, converted: datetime | None = None,
          lost: datetime | None = None) -> dict[str, Any]:
    return {"lead_id": lid, "created_at": created, "source": source, "country": "US", "industry": "retail",
            "company_size": "11-50", "job_seniority": "manager", "converted_at": converted, "lost_at": lost}


def lake_a_tables() -> dict[str, pl.DataFrame]:
    customers = [_customer("C1", ts(2024, 12, 10)), _customer("C2", ts(2025, 1, 5)), _customer("C3", ts(2025, 1, 20)),
                 _customer("C4", ts(2025, 3, 1)), _customer("C5", ts(2024, 11, 1))]
    orders = [("O1", "C1", ts(2024, 12, 15), 100.0), ("O2", "C1", ts(2025, 1, 10), 50.0),
              ("O3", "C1", ts(2025, 4, 20), 80.0), ("O4", "C2", ts(2025, 1, 6), 20.0),
              ("O5", "C2", ts(2025, 2, 1), 30.0), ("O6", "C2", ts(2025, 3, 15), 40.0),
              ("O7", "C3", ts(2025, 5, 5), 10.0), ("O8", "C3", ts(2025, 6, 10), 60.0),
              ("O9", "C5", ts(2024, 11, 5), 70.0), ("O10", "C3", ts(2025, 7, 5), 999.0)]
    leads = [
        _lead("L1", "web", ts(2025, 1, 10), converted=ts(2025, 2, 9)),
        _lead("L2", "web", ts(2025, 2, 1), lost=ts(2025, 3, 1)),
        _lead("L3", "event", ts(2025, 3, 1), converted=ts(2025, 3, 11)),
        _lead("L4", "event", ts(2025, 6, 1)),
        _lead("L5", "web", ts(2025, 6, 15), converted=ts(2025, 7, 10)),  # open at the report date
        _lead("L6", "web", ts(2024, 12, 1), converted=ts(2025, 1, 5)),  # created before the months
        _lead("L7", "event", ts(2024, 11, 1)),  # open, created before the months
        _lead("L8", "event", ts(2025, 2, 10), converted=ts(2025, 3, 20)),
        _lead("L9", "web", ts(2025, 2, 20), lost=ts(2025, 5, 1)),
    ]
    activities = [("L1", ts(2025, 1, 11), "web_visit"), ("L1", ts(2025, 1, 15), "demo_request"),
                  ("L1", ts(2025, 1, 20), "meeting"), ("L2", ts(2025, 2, 2), "email_open"),
                  ("L4", ts(2025, 6, 2), "demo_request"), ("L5", ts(2025, 7, 2), "web_visit")]
    interactions = [
        ("C1", ts(2025, 1, 5), "nps", 8.0), ("C2", ts(2025, 1, 7), "nps", 6.0),
        ("C2", ts(2025, 1, 20), "nps", 9.0),  # answered twice in January: the later 9 counts
        ("C1", ts(2025, 2, 2), "nps", 3.0), ("C3", ts(2025, 2, 4), "nps", 7.0), ("C5", ts(2025, 2, 5), "nps", 10.0),
        ("C1", ts(2025, 1, 6), "csat", 5.0), ("C2", ts(2025, 1, 8), "csat", 2.0),
        ("C1", ts(2025, 2, 3, 10), "csat", 4.0), ("C1", ts(2025, 2, 3, 10), "csat", 3.0),  # a tie: the higher
        ("C1", ts(2025, 1, 9), "login", None), ("C2", ts(2025, 4, 1), "nps", None),  # no value: not an answer
        ("C3", ts(2025, 7, 2), "nps", 0.0),  # after the report date
    ]
    return {
        "customers": frame("customers", customers),
        "orders": frame("orders", [{"order_id": o, "customer_id": c, "ordered_at": t, "quantity": 1, "amount": a}
                                   for o, c, t, a in orders]),
        "interactions": frame("interactions", [{"customer_id": c, "occurred_at": t, "type": k, "value": v}
                                               for c, t, k, v in interactions]),
        "leads": frame("leads", leads),
        "lead_activities": frame("lead_activities", [{"lead_id": lid, "occurred_at": t, "type": k}
                                                     for lid, t, k in activities]),
    }


def lake_b_tables() -> dict[str, pl.DataFrame]:
    customers = [_customer("D1", ts(2024, 12, 1)), _customer("D2", ts(2025, 1, 10)), _customer("D3", ts(2025, 2, 1))]
    subs = [("S1", "D1", 10.0, ts(2024, 12, 1), ts(2025, 2, 15)), ("S2", "D1", 20.0, ts(2025, 2, 15), None),
            ("S3", "D2", 30.0, ts(2025, 1, 10), ts(2025, 3, 20)), ("S4", "D2", 40.0, ts(2025, 5, 5), None),
            ("S5", "D3", 50.0, ts(2025, 2, 1), ts(2025, 8, 1))]
    interactions = [("D1", ts(2025, 1, 15), "login", None), ("D2", ts(2025, 1, 20), "email_sent", None)]
    return {
        "customers": frame("customers", customers),
        "subscriptions": frame("subscriptions", [
            {"subscription_id": s, "customer_id": c, "plan": "basic", "monthly_price": p, "started_at": a,
             "ended_at": e} for s, c, p, a, e in subs]),
        "interactions": frame("interactions", [{"customer_id": c, "occurred_at": t, "type": k, "value": v}
                                               for c, t, k, v in interactions]),
    }


def write_lake(directory: Path, tables: dict[str, pl.DataFrame]) -> Path:
    write_tables(directory, tables, LakeManifest(source="test"))
    return directory


def write_scores(scores: Path, task: str, as_of: datetime, frame_: pl.DataFrame, run_id: str | None = None,
                 version: str = "1") -> Path:
    """A score table partition as ``crmscore score`` leaves it: parquet parts and a manifest."""
    path = partition_dir(scores, task, as_of)
    path.mkdir(parents=True, exist_ok=True)
    frame_.with_columns(pl.lit(as_of).alias("as_of")).write_parquet(path / "part-00000.parquet")
    write_manifest(path, RunManifest(task=task, as_of=as_of, engine="local", model_name=f"crm-{task}",
                                     model_version=version, model_run_id=run_id, entities=frame_.height,
                                     rows=frame_.height, seconds=0.1, rows_per_second=10.0, output=str(path),
                                     started_at=as_of))
    return path


def lead_scores(rows: list[tuple[str, float, str]]) -> pl.DataFrame:
    return pl.DataFrame({"lead_id": [r[0] for r in rows], "probability": [r[1] for r in rows],
                         "score": [int(r[1] * 99) for r in rows], "grade": [r[2] for r in rows]})


def clv_scores(rows: list[tuple[str, float, str]]) -> pl.DataFrame:
    return pl.DataFrame({"customer_id": [r[0] for r in rows], "clv": [r[1] for r in rows],
                         "clv_low": [r[1] * 0.8 for r in rows], "clv_high": [r[1] * 1.2 for r in rows],
                         "expected_margin": [r[1] * 0.3 for r in rows], "tier": [r[2] for r in rows],
                         "rfm_segment": ["champions"] * len(rows), "model_version": ["1"] * len(rows)})


def write_score_tables(scores: Path) -> None:
    """Lead runs of 2025-03-01 (judged, AUC 1), 2025-03-02 (judged, AUC 0: flagged), 2025-06-20
    (window not passed) and 2025-07-02 (after the report); customer-value runs of May and June."""
    write_scores(scores, "lead", ts(2025, 3, 1), lead_scores(
        [("L2", 0.4, "B"), ("L7", 0.2, "C"), ("L8", 0.7, "A"), ("L9", 0.5, "B")]), run_id="run-lead")
    write_scores(scores, "lead", ts(2025, 3, 2), lead_scores(
        [("L3", 0.3, "C"), ("L7", 0.6, "A"), ("L8", 0.1, "D"), ("L9", 0.5, "B")]), run_id="run-lead")
    write_scores(scores, "lead", ts(2025, 6, 20), lead_scores(
        [("L2", 0.5, "B"), ("L4", 0.9, "A"), ("L7", 0.3, "C")]), run_id="run-lead")
    write_scores(scores, "lead", ts(2025, 7, 2), lead_scores([("L5", 0.9, "A")]), run_id="run-lead")
    write_scores(scores, "clv", ts(2025, 5, 1), clv_scores(
        [("C1", 200.0, "A"), ("C2", 100.0, "B"), ("C3", 50.0, "C"), ("C5", 20.0, "D")]))
    write_scores(scores, "clv", ts(2025, 6, 1), clv_scores(
        [("C1", 100.0, "B"), ("C2", 300.0, "A"), ("C3", 50.0, "C"), ("C4", 10.0, "D")]))
