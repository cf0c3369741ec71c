"""``crmscore features …``: build feature tables, register them with Feast, materialize, and
browse them in Feast's UI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crmdata.errors import CrmscoreError
from pipelines.cli.common import console, handle_errors, store_profile, workspace

# The features modules import polars, and Feast (seconds) once a store is opened: inside
# the commands, so that `crmscore --help` stays fast.

app = typer.Typer(
    name="features",
    help="Build point-in-time feature tables, register them with Feast, materialize, browse (ui).",
    no_args_is_help=True,
)

ProfileOption = Annotated[
    str,
    typer.Option(
        "--profile",
        help="local: SQLite online store + file registry in HOME/feast. "
        "redis: Redis ($CRMSCORE_REDIS_URL) + SQL registry ($CRMSCORE_REGISTRY_URL).",
    ),
]


@app.command()
@handle_errors
def build(
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of", help="Comma-separated snapshot dates (UTC), e.g. 2024-01-01,2024-04-01."
        ),
    ] = None,
    every: Annotated[
        str, typer.Option(help="Grid spacing back from the last event (Mondays 00:00 UTC).")
    ] = "7d",
    periods: Annotated[int, typer.Option(min=1, help="Snapshots in the grid.")] = 12,
    add: Annotated[
        str | None,
        typer.Option("--add", help="Comma-separated dates to add, keeping every snapshot already built."),
    ] = None,
    lake: Annotated[Path | None, typer.Option(help="Lake directory (default: HOME/lake).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Feature-table directory (default: HOME/features).")
    ] = None,
    engine: Annotated[
        str,
        typer.Option(help="duckdb (in process) or spark (the same SQL, transpiled; needs pyspark and Java)."),
    ] = "duckdb",
    spark_master: Annotated[
        str | None,
        typer.Option(help="Spark master URL for --engine spark (default: $CRMSCORE_SPARK_MASTER, "
                          "the cluster's under spark-submit, else local[2])."),
    ] = None,
) -> None:
    """Turn the lake's raw tables into feature tables keyed by entity + event_timestamp."""
    from features.build import ENGINES, add_snapshots, build_features
    from features.grid import parse_dates, parse_every, snapshot_grid

    if engine not in ENGINES:
        raise CrmscoreError(f"--engine {engine}: one of {', '.join(ENGINES)}")
    if spark_master and engine != "spark":
        raise CrmscoreError("--spark-master goes with --engine spark")
    if engine == "spark":
        from features.spark import require_pyspark

        require_pyspark()  # before any work: a missing pyspark or Java is one clear line
    ws = workspace()
    source = lake or ws.lake
    if add:
        if as_of:
            raise CrmscoreError("give --add (keep the snapshots, add these) or --as-of (replace them), not both")
        summary = add_snapshots(source, out or ws.feature_tables, parse_dates(add), engine=engine,  # type: ignore[arg-type]
                                spark_master=spark_master)
        console.print(summary.render(), highlight=False)
        return
    if as_of:
        dates = parse_dates(as_of)
    else:
        dates = snapshot_grid(source, every=parse_every(every), periods=periods)
    summary = build_features(source, out or ws.feature_tables, dates, engine=engine,  # type: ignore[arg-type]
                             spark_master=spark_master)
    console.print(summary.render(), highlight=False)


@app.command()
@handle_errors
def apply(profile: ProfileOption = "local") -> None:
    """Register entities, sources, feature views and services (after `features build`)."""
    from features.store import apply_workspace, feature_store

    ws = workspace()
    chosen = store_profile(profile)
    summary = apply_workspace(feature_store(ws, chosen), ws, chosen)
    console.print(summary.render(), highlight=False)


@app.command()
@handle_errors
def materialize(profile: ProfileOption = "local") -> None:
    """Load each entity's latest snapshot into the online store."""
    from features.materialize import materialize_latest
    from features.store import feature_store

    ws = workspace()
    store = feature_store(ws, store_profile(profile))
    summary = materialize_latest(store, ws.feature_tables)
    console.print(summary.render(), highlight=False)


@app.command()
@handle_errors
def ui(
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8888,
    host: Annotated[str, typer.Option(help="Interface; 0.0.0.0 for every one.")] = "127.0.0.1",
    profile: ProfileOption = "local",
) -> None:
    """Feast's web UI on this workspace's registry: entities, views, services (Ctrl-C stops)."""
    from features.store import REGISTRY_FILE, Profile, feature_store

    ws = workspace()
    chosen = store_profile(profile)
    missing = (f"no feature views registered for {ws.home} ({chosen} profile): "
               "run `crmscore features apply` or `crmscore pipeline run` first")
    # Checked before opening the store: Feast creates an empty registry file where it finds none.
    if chosen == Profile.LOCAL and not (ws.feast / REGISTRY_FILE).exists():
        raise CrmscoreError(missing)
    store = feature_store(ws, chosen)
    if not store.list_feature_views():
        raise CrmscoreError(missing)
    console.print(f"Feast UI for {ws.home} on http://{host}:{port} (Ctrl-C stops)", highlight=False)
    store.serve_ui(host=host, port=port)
