"""Batch customer value: the tier migration between two ``score clv`` runs, on hand-built
frames (exact values), and which earlier run counts as "the previous one"."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from crmdata.errors import CrmscoreError
from pipelines.scoring.migration import movement_counts, previous_partition, tier_migration

TIERS = ["A", "B", "C", "D"]


def test_tier_migration_on_a_hand_built_pair_of_runs() -> None:
    before = pl.DataFrame({"customer_id": ["c1", "c2", "c3", "c4", "c5", "c6", "c8"],
                           "tier": ["A", "C", "B", "D", None, "D", None]})
    after = pl.DataFrame({"customer_id": ["c7", "c6", "c5", "c4", "c3", "c2", "c1", "c9"],
                          "tier": ["D", "A", "C", None, "B", "A", "B", None]})
    got = tier_migration(before, after, "customer_id", "tier", TIERS)
    assert got.rows() == [
        ("c1", "A", "B", "downgraded"),
        ("c2", "C", "A", "upgraded"),
        ("c3", "B", "B", "same"),
        ("c4", "D", None, "lost"),  # no tier now (no features): lost
        ("c5", None, "C", "new"),  # no tier before: new
        ("c6", "D", "A", "upgraded"),
        ("c7", None, "D", "new"),  # not in the previous run at all
    ]  # c8 and c9 never had a tier: not listed
    assert got.columns == ["customer_id", "tier_before", "tier_after", "movement"]
    assert movement_counts(got) == {"upgraded": 2, "downgraded": 1, "same": 1, "new": 2, "lost": 1}


def test_the_first_run_makes_everyone_new() -> None:
    after = pl.DataFrame({"customer_id": ["b", "a", "c"], "tier": ["B", "A", None]})
    got = tier_migration(None, after, "customer_id", "tier", TIERS)
    assert got.rows() == [("a", None, "A", "new"), ("b", None, "B", "new")]
    assert movement_counts(got) == {"upgraded": 0, "downgraded": 0, "same": 0, "new": 2, "lost": 0}


def test_an_unknown_tier_or_a_duplicate_id_is_a_one_line_error() -> None:
    good = pl.DataFrame({"customer_id": ["a"], "tier": ["A"]})
    with pytest.raises(CrmscoreError, match=r"column tier: 1 values outside A/B/C/D \(e.g. 'E'\)"):
        tier_migration(good, pl.DataFrame({"customer_id": ["a"], "tier": ["E"]}), "customer_id", "tier", TIERS)
    with pytest.raises(CrmscoreError, match="column customer_id: 2 rows share an id"):
        tier_migration(pl.DataFrame({"customer_id": ["a", "a"], "tier": ["A", "B"]}), good, "customer_id",
                       "tier", TIERS)


def test_the_previous_run_is_the_newest_partition_before_the_date(tmp_path: Path) -> None:
    for day in ("2025-01-06", "2025-01-13", "2025-01-20"):
        (tmp_path / "clv" / f"as_of_date={day}").mkdir(parents=True)
    on = datetime(2025, 1, 13, tzinfo=UTC)
    assert previous_partition(tmp_path, "clv", on).name == "as_of_date=2025-01-06"  # a rerun: the same one
    assert previous_partition(tmp_path, "clv", datetime(2025, 2, 1, tzinfo=UTC)).name == "as_of_date=2025-01-20"
    assert previous_partition(tmp_path, "clv", datetime(2025, 1, 6, tzinfo=UTC)) is None
