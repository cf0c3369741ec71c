"""Next-best-product lists for every customer, into the ``nbp`` score table.

The champion recommender (``training.nbp.load_recommender``) is loaded with the
lake's orders before ``as_of`` folded in, so ownership, order counts and new
customers' factors are current at the scoring date. ``Recommender.recommend_all``
ranks a block of customers in one vectorized pass; the long (customer, rank)
answer is folded into one row per customer with list columns, which is the
shape the Feast view serves (``nbp_scores``) and makes reconciliation the same
rule as for churn and leads: one row per customer of the population.

No drift report: the recommender has no feature service to compare, and its
reference (the interaction matrix) is not a per-customer distribution.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from crmdata.lake import read_table
from crmdata.times import as_utc
from crmdata.workspace import Workspace
from pipelines.scoring.inputs import default_as_of, population
from pipelines.scoring.table import (
    Distribution,
    RunManifest,
    StageSeconds,
    partition_dir,
    reconcile,
    staged_partition,
    write_manifest,
    written_ids,
)
from pipelines.scoring.types import NoProgress, Progress, ScoreOptions
from training.nbp import load_recommender
from training.tasks import NBP

log = logging.getLogger(__name__)

#: Customers per recommend_all call (one part file each).
BLOCK = 50_000


def score_nbp(ws: Workspace, as_of: datetime | None, options: ScoreOptions,
              progress: Progress | None = None) -> RunManifest:
    """Score every customer signed up before ``as_of`` (default: the newest snapshot)."""
    if options.engine == "spark":
        # The recommender is a few dense matrices ranked by implicit's multi-threaded
        # top-k; shipping it to executors buys nothing below tens of millions of customers.
        log.info("nbp: the recommender scores in-process; --engine spark applies to churn and lead")
    progress = progress or NoProgress()
    started_at, started = datetime.now().astimezone(), time.perf_counter()
    as_of = as_utc(as_of) if as_of is not None else default_as_of(ws)
    key = NBP.key_column
    stages = StageSeconds()
    t0 = time.perf_counter()
    pop = population(ws.lake, NBP.key, as_of)
    with _one_blas_thread():
        rec = load_recommender(lake=ws.lake, as_of=as_of)
    ids = pop.get_column(key).to_numpy().astype(str)
    segments = _unknown_segments(ws, rec, ids)
    stages.read = time.perf_counter() - t0
    log.info("scoring nbp as of %s: %d customers with %s v%s (top %d)", f"{as_of:%Y-%m-%d}", len(ids),
             rec.name, rec.version, options.top_products)
    scores: list[np.ndarray] = []
    cold = 0
    with staged_partition(ws.scores, NBP.key, as_of) as staging:
        progress.start(f"nbp ({len(ids):,} customers)", len(ids))
        try:
            for index, start in enumerate(range(0, len(ids), BLOCK)):
                block = ids[start:start + BLOCK]
                t1 = time.perf_counter()
                wanted = {c: segments[c] for c in block if c in segments} or None
                with _one_blas_thread():
                    long = rec.recommend_all(options.top_products, customer_ids=block, reasons=True,
                                             segments=wanted)
                t2 = time.perf_counter()
                wide = _wide(long, as_of, str(rec.version))
                t3 = time.perf_counter()
                pq.write_table(_plain_types(wide.to_arrow(compat_level=pl.CompatLevel.oldest())),
                               staging / f"part-{index:05d}.parquet", compression="zstd")
                stages.predict += t2 - t1
                stages.prepare += t3 - t2
                stages.write += time.perf_counter() - t3
                scores.append(long.filter(pl.col("rank") == 1).get_column("score").to_numpy())
                cold += int(wide.get_column("cold_start").sum())
                progress.advance(len(block))
        finally:
            progress.stop()
        t4 = time.perf_counter()
        written = written_ids(staging, key)
        reconcile(pl.Series(ids), written, f"nbp as of {as_of:%Y-%m-%d}")
        stages.finish = time.perf_counter() - t4
        seconds = time.perf_counter() - started
        top1 = np.concatenate(scores) if scores else np.empty(0)
        manifest = RunManifest(
            task=NBP.key, as_of=as_of, engine="local", model_name=rec.name, model_version=str(rec.version),
            model_alias=rec.alias, model_run_id=rec.run_id, feature_service=None,
            inputs={"lake": str(ws.lake), "orders folded in before": as_of.isoformat()},
            entities=len(ids), rows=len(written), reasons="all",
            distribution=Distribution(
                grades={"cold_start": cold, "personalised": len(written) - cold},
                probability={"top1_score_mean": float(np.nanmean(top1))} if top1.size else {}),
            seconds=round(seconds, 3), rows_per_second=round(len(written) / max(seconds, 1e-9), 1),
            stages=stages, output=str(partition_dir(ws.scores, NBP.key, as_of)), started_at=started_at,
            drift={"note": "not applicable: the recommender has no feature-service reference"},
        )
        write_manifest(staging, manifest)
    log.info("nbp: %d customers in %.1fs → %s", manifest.rows, manifest.seconds, manifest.output)
    return manifest


def _wide(long: pl.DataFrame, as_of: datetime, version: str) -> pl.DataFrame:
    """(customer, rank) rows → one row per customer with the lists in rank order."""
    key = NBP.key_column
    return (
        long.sort(key, "rank", maintain_order=True)
        .group_by(key, maintain_order=True)
        .agg(
            pl.col("product_id").alias("product_ids"),
            pl.col("score").cast(pl.Float64).alias("product_scores"),
            pl.col("reason").alias("product_reasons"),
            pl.col("reason_product_id").alias("reason_product_ids"),
            pl.col("cold_start").first().alias("cold_start"),
        )
        .with_columns(
            pl.lit(as_utc(as_of)).cast(pl.Datetime("us", "UTC")).alias("as_of"),
            pl.lit(version).alias("model_version"),
        )
        .select(key, "as_of", "product_ids", "product_scores", "product_reasons", "reason_product_ids",
                "cold_start", "model_version")
    )


def _unknown_segments(ws: Workspace, rec: object, ids: np.ndarray) -> dict[str, str]:
    """The segment of each customer the recommender does not know, so the cold-start
    fallback is their segment's popularity rather than everyone's."""
    rows = rec.customer_rows(ids)  # type: ignore[attr-defined]
    unknown = ids[rows < 0]
    if unknown.size == 0:
        return {}
    key = NBP.key_column
    customers = read_table(ws.lake, "customers", [key, "segment"])
    if customers is None:
        return {}
    known = customers.filter(pl.col(key).is_in(unknown.tolist()))
    return dict(zip(known.get_column(key).to_list(),
                    known.get_column("segment").cast(pl.String).to_list(), strict=True))


def _plain_types(table: object) -> object:
    """``string`` and ``list<string>`` rather than polars' large variants, like the other tables."""
    fields = []
    for f in table.schema:  # type: ignore[attr-defined]
        kind = f.type
        if pa.types.is_large_list(kind):
            inner = pa.string() if pa.types.is_large_string(kind.value_type) else kind.value_type
            kind = pa.list_(inner)
        elif pa.types.is_large_string(kind):
            kind = pa.string()
        fields.append(pa.field(f.name, kind))
    return table.cast(pa.schema(fields))  # type: ignore[attr-defined]


def _one_blas_thread() -> threadpool_limits:
    """implicit does its own threading; a second BLAS thread pool under it only fights
    for the cores (implicit warns about exactly this)."""
    return threadpool_limits(1, "blas")
