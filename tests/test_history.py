"""The history sample (features/history.py): every entity at the newest snapshots, the
same deterministic sample of them at the older ones, in the build and in training frames."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from features.history import (
    FULL_SNAPSHOTS,
    HistorySample,
    in_sample,
    sample_fraction,
    sample_labels,
)

IDS = pl.Series([f"C{i:06d}" for i in range(20_000)])


def test_in_sample_is_the_md5_rule_nested_and_near_its_fraction() -> None:
    low, high = in_sample(IDS, 0.1), in_sample(IDS, 0.3)
    assert (low <= high).all()  # a larger sample keeps everyone a smaller one kept
    assert abs(low.mean() - 0.1) < 0.01 and abs(high.mean() - 0.3) < 0.015
    first = IDS[0]
    expected = int.from_bytes(hashlib.md5(first.encode()).digest()[:8], "big") < int(0.1 * 2**64)
    assert bool(low[0]) == expected
    assert (in_sample(IDS.reverse(), 0.1)[::-1] == low).all()  # per id, not per position
    assert in_sample(IDS, 1.0).all()
    assert sample_fraction(50, 100) == 1.0 and sample_fraction(400, 100) == 0.25


def test_sample_labels_keeps_the_sampled_entities_only() -> None:
    sample = HistorySample(entities=100, fraction={"customer": 0.2, "lead": 1.0}, dates=[])
    labels = pl.DataFrame({"customer_id": IDS, "label": [0] * len(IDS)})
    kept = sample_labels(labels, "customer_id", sample)
    assert kept["customer_id"].to_list() == IDS.filter(in_sample(IDS, 0.2)).to_list()
    as_pandas = sample_labels(labels.to_pandas(), "customer_id", sample)
    assert isinstance(as_pandas, pd.DataFrame) and as_pandas["customer_id"].tolist() == kept["customer_id"].to_list()
    leads = pl.DataFrame({"lead_id": IDS})
    assert sample_labels(leads, "lead_id", sample).height == len(IDS)  # leads below the cap: all kept
    assert sample_labels(labels, "customer_id", None).height == len(IDS)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crmdata.synth import WorldConfig, generate_world

    out = tmp_path_factory.mktemp("history") / "lake"
    generate_world(WorldConfig(customers=1500, leads=800, products=30, seed=5), out)
    return out


def _rows(table: pl.DataFrame, when: object) -> pl.DataFrame:
    return table.filter(pl.col("event_timestamp") == when)


@pytest.mark.slow
def test_a_sampled_build_equals_the_full_one_on_what_it_keeps(lake: Path, tmp_path: Path) -> None:
    from features.build import add_snapshots, build_features
    from features.catalog import PEER_FEATURES, table_file
    from features.grid import snapshot_grid

    dates = snapshot_grid(lake, periods=5, include_truth=False)
    full_dir, small_dir = tmp_path / "full", tmp_path / "small"
    build_features(lake, full_dir, dates, history_entities=None)
    summary = build_features(lake, small_dir, dates, history_entities=300)
    assert summary.history is not None
    assert summary.history.dates == dates[:-FULL_SNAPSHOTS]
    assert summary.history.fraction == {"customer": 300 / 1500, "lead": 300 / 800}

    def read(directory: Path, table: str) -> pl.DataFrame:
        return pl.read_parquet(directory / table_file(table))

    # Product features aggregate over everyone: never sampled.
    assert read(small_dir, "product").equals(read(full_dir, "product"))
    # Quintile scores and the peer's fit are relative to who is in the snapshot.
    population_dependent = {"rfm_r", "rfm_f", "rfm_m", "rfm_segment", *PEER_FEATURES}
    for table, key, kind in (("customer", "customer_id", "customer"), ("lead", "lead_id", "lead"),
                             ("customer_value", "customer_id", "customer")):
        full, small = read(full_dir, table), read(small_dir, table)
        peer = [c for c in full.columns if c in PEER_FEATURES]
        for when in dates[-FULL_SNAPSHOTS:]:
            # Sums over other snapshot buckets differ in the last bits; the peer's fit starts
            # elsewhere (the snapshot before) and stops within its tolerance.
            same(_rows(small, when).drop(peer), _rows(full, when).drop(peer), 1e-9)
            same(_rows(small, when).select(peer), _rows(full, when).select(peer), 1e-4)
        for when in dates[:-FULL_SNAPSHOTS]:
            everyone = _rows(full, when)
            expected = everyone.filter(in_sample(everyone[key], summary.history.fraction[kind]))
            got = _rows(small, when)
            assert 0 < got.height < everyone.height
            columns = [c for c in got.columns if c not in population_dependent]
            same(got.select(columns), expected.select(columns), 1e-9)

    # Scoring at a sampled date needs everyone: the snapshot is recomputed whole.
    when = dates[0]
    untouched = add_snapshots(lake, small_dir, [when], complete=False)
    assert untouched.history is not None and when in untouched.history.dates
    whole = add_snapshots(lake, small_dir, [when])
    assert whole.history is not None and when not in whole.history.dates
    same(_rows(read(small_dir, "customer"), when), _rows(read(full_dir, "customer"), when), 1e-9)


def same(left: pl.DataFrame, right: pl.DataFrame, rtol: float) -> None:
    assert_frame_equal(left, right, check_exact=False, rtol=rtol, atol=1e-9)
