"""``crmscore serve`` and ``crmscore keys …``: start the prediction service, manage its keys."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from crmdata.errors import CrmscoreError
from crmdata.workspace import Workspace, mlflow_tracking_uri
from pipelines.cli.common import console, handle_errors, store_profile, workspace
from serving.auth import KeyScope, create_key, keys_file, read_keys

# BentoML, httpx, polars and the service's modules (Feast, MLflow) take from tens of
# milliseconds to seconds to import: inside the commands, so that `crmscore --help`
# stays fast.

app = typer.Typer()

keys_app = typer.Typer(name="keys", help="API keys of the prediction service (only their hashes are stored).",
                       no_args_is_help=True)
app.add_typer(keys_app)

#: The service, as BentoML imports it in each server worker.
SERVICE = "serving.service:CrmScoring"
#: How long `serve` waits for /readyz before saying the service is up but not ready.
READY_TIMEOUT_SECONDS = 180.0


@keys_app.command("create")
@handle_errors
def keys_create(
    scope: Annotated[str, typer.Option(help="score: the scoring endpoints; report: GET /report only; admin: all of it, /admin/* too.")] = "score",
    note: Annotated[str, typer.Option(help="Who or what the key is for (stored with the hash).")] = "",
) -> None:
    """Create an API key: printed once, only its hash is stored (HOME/keys or $CRMSCORE_KEYS_FILE)."""
    try:
        chosen = KeyScope(scope)
    except ValueError:
        raise CrmscoreError(f"--scope {scope!r}: expected score, report or admin") from None
    path = keys_file(workspace().keys)
    key, row = create_key(path, chosen, note)
    # The key goes to stdout alone (scripts capture it); the explanation to stderr.
    typer.echo(key)
    typer.echo(f"created {chosen.value} key {row.id} in {path}; it is shown only this once", err=True)


@keys_app.command("list")
@handle_errors
def keys_list() -> None:
    """The stored keys by id and scope (the keys themselves are not stored)."""
    path = keys_file(workspace().keys)
    rows = read_keys(path)
    if not rows:
        console.print(f"no keys in {path}: run `crmscore keys create --scope score`")
    for r in rows:
        console.print(f"{r.id}  {r.scope.value:<6}  {r.created_at}  {r.note}")


@app.command()
@handle_errors
def serve(
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    profile: Annotated[str, typer.Option(help="Feature store profile: local (SQLite) or redis.")] = "local",
    models: Annotated[
        str | None, typer.Option(help="Models to serve: comma-separated task keys (default: every task); "
                                      "/readyz needs them all.")
    ] = None,
    as_of: Annotated[
        str, typer.Option("--as-of", help="Feature age is measured against: now, snapshot (the newest "
                                          "feature snapshot: synthetic or replayed worlds) or an ISO time.")
    ] = "now",
    reload_seconds: Annotated[
        float, typer.Option(min=0, help="Poll the registry for a new @champion this often (0: admin call only).")
    ] = 30.0,
    print_examples: Annotated[
        bool, typer.Option("--print-examples", help="Once ready, create a demo score key and print curl calls.")
    ] = False,
) -> None:
    """Start the prediction service (BentoML) on the workspace's champions and online store."""
    import bentoml

    from serving.predictor import resolve_as_of
    from training.tasks import TASKS

    ws = workspace()
    chosen = store_profile(profile)
    wanted = list(TASKS) if models is None else [m.strip() for m in models.split(",") if m.strip()]
    if not wanted or any(m not in TASKS for m in wanted):
        raise CrmscoreError(f"--models {models!r}: expected a comma-separated subset of {', '.join(TASKS)}")
    resolve_as_of(as_of, ws)  # fail here, not in a worker
    # The workers are separate processes started in the repository root: hand them
    # absolute locations through the environment.
    os.environ.update({
        "CRMSCORE_HOME": str(ws.home),
        "CRMSCORE_PROFILE": chosen.value,
        "CRMSCORE_SERVE_MODELS": ",".join(wanted),
        "CRMSCORE_AS_OF": as_of,
        "CRMSCORE_RELOAD_SECONDS": str(reload_seconds),
        "MLFLOW_TRACKING_URI": absolute_tracking_uri(),
        "BENTOML_DO_NOT_TRACK": "true",  # no usage analytics leave the machine
    })
    # One BLAS thread per worker: the request threads are the parallelism.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    root = Path(__file__).resolve().parents[2]  # the repository root: this is pipelines/cli/serving.py
    _check_port(host, port)
    metrics_dir = prometheus_dir()
    started = time.monotonic()
    # One worker process (BentoML's default for this service); scale out with replicas.
    try:
        server = bentoml.serve(SERVICE, host=host, port=port, working_dir=str(root), blocking=False)
        _run(server, host, port, ws, chosen.value, started, print_examples)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def prometheus_dir() -> str:
    """A fresh Prometheus multiprocess directory for this instance.

    BentoML keeps its workers' metric files in ``$BENTOML_HOME/prometheus_multiproc_dir``
    and *empties* that directory when a server starts, so a second instance on the same
    machine would wipe the first one's counters (and both would write the same files).
    ``bentoml.serve`` reads the location from ``BentoMLContainer.prometheus_multiproc_dir``
    (``bentoml.serving.ensure_prometheus_dir``) and hands it to the workers as
    ``PROMETHEUS_MULTIPROC_DIR``: point it at a private temporary directory.
    """
    from bentoml._internal.configuration.containers import BentoMLContainer

    path = tempfile.mkdtemp(prefix="crmscore-prometheus-")
    BentoMLContainer.prometheus_multiproc_dir.set(path)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def _run(server: Any, host: str, port: int, ws: Workspace, profile: str, started: float,
         print_examples: bool) -> None:
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    stop = _stop_on_signals(server)
    # The arbiter thread flags itself running a moment after serve() returns.
    deadline = time.monotonic() + 30
    while not server.running and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.running:
        raise CrmscoreError("the BentoML server did not start; see the log above")
    ready = wait_ready(url, READY_TIMEOUT_SECONDS, lambda: server.running and not stop["requested"])
    if ready:
        console.print(f"crmscore service ready on {url} in {time.monotonic() - started:.1f}s "
                      f"(profile {profile}; docs: {url}/docs.json)")
        if print_examples:
            console.print(examples(url, ws), soft_wrap=True, highlight=False)
    elif server.running:
        console.print(f"[yellow]crmscore service on {url} is up but not ready[/yellow]: "
                      f"see the log above and `curl {url}/readyz`")
    while server.running and not stop["requested"]:
        time.sleep(0.5)
    server.stop()


def _check_port(host: str, port: int) -> None:
    """Fail with a clear message, before starting anything, if the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CrmscoreError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _stop_on_signals(server: Any) -> dict[str, bool]:
    state = {"requested": False}

    def handler(signum: int, frame: Any) -> None:
        state["requested"] = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    return state


def wait_ready(url: str, timeout: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Poll ``/readyz`` until it answers 200, the server dies, or ``timeout`` passes."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return False


def absolute_tracking_uri() -> str:
    """The MLflow URI with a relative SQLite path made absolute (workers run elsewhere)."""
    uri = mlflow_tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.removeprefix(prefix).startswith("/"):
        return prefix + str(Path(uri.removeprefix(prefix)).absolute())
    return uri


def examples(url: str, ws: Workspace) -> str:
    """Curl calls that work on this workspace: real ids, and a new score key made for them."""

    key, row = create_key(keys_file(ws.keys), "score", note="demo key from crmscore serve --print-examples")

    # Ids the service can answer for: in each model's population at the served snapshot,
    # plus one customer and one lead outside it, to show the not_eligible status.
    customers, outsider, leads, closed = _example_ids(ws)
    valued, unvalued = _value_ids(ws)
    ids = ", ".join(f'"{c}"' for c in customers)
    auth = f"-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json'"
    return "\n".join([
        f"A score key was created for these examples (id {row.id}, shown only here):",
        f"  export CRMSCORE_KEY={key}",
        "",
        "# churn risk with the reasons (active subscribers)",
        f"curl -s {url}/churn_risk {auth} -d '{{\"customer_ids\": [{ids}]}}'",
        "# a customer outside churn's population: not_eligible, with the reason",
        f"curl -s {url}/churn_risk {auth} -d '{{\"customer_ids\": [\"{outsider}\"]}}'",
        "# an open lead, a closed one (not_eligible) and a brand-new one, without reasons",
        (f"curl -s {url}/lead_score {auth} -d '{{\"leads\": [{{\"lead_id\": \"{leads[0]}\"}}, "
         f"{{\"lead_id\": \"{closed}\"}}, "
         "{\"attributes\": {\"source\": \"webinar\", \"country\": \"DE\", \"company_size\": \"51-200\", "
         "\"job_seniority\": \"director\"}}], \"explain\": false}'"),
        "# the next 3 products to offer",
        f"curl -s {url}/next_best_products {auth} -d '{{\"customer_ids\": [{ids}], \"k\": 3}}'",
        "# customer value: predicted spend with its interval, P(alive), RFM, the A-D tier and the reasons, for",
        "# a customer in the value model's population and one outside it (not_eligible, or not_found: no features)",
        f"curl -s {url}/customer_value {auth} -d '{{\"customer_ids\": [\"{valued}\", \"{unvalued}\"]}}'",
        "# open endpoints",
        f"curl -s {url}/readyz; curl -s {url}/metrics | head; curl -s {url}/docs.json | head -c 300",
    ])


def _value_ids(ws: Workspace) -> tuple[str, str]:
    """A customer in the value model's population at the newest feature snapshot, and one
    outside it (signed up later; "C-nobody" when every customer is in it)."""

    from crmdata.lake import read_table
    from features.build import read_build_summary
    from training.tasks import VALUE

    as_of = max(read_build_summary(ws.feature_tables).as_of)
    key = VALUE.key_column
    inside = VALUE.population.from_lake(ws.lake, as_of)
    everyone = read_table(ws.lake, "customers", [key])
    outside = (everyone.join(inside, on=key, how="anti").sort(key)[key].head(1).to_list()
               if everyone is not None else [])
    return (inside.sort(key)[key].head(1).to_list() or ["C-nobody"])[0], (outside or ["C-nobody"])[0]


def _example_ids(ws: Workspace) -> tuple[list[str], str, list[str], str]:
    """Two customers in churn's population at the newest feature snapshot and one outside it;
    an open lead and a closed one (the task registry's rules, as the service applies them)."""
    import polars as pl

    from crmdata.lake import read_table
    from features.build import read_build_summary
    from training.tasks import CHURN, LEAD, NBP

    as_of = max(read_build_summary(ws.feature_tables).as_of)
    key, lead_key = CHURN.key_column, LEAD.key_column
    active = CHURN.population.from_lake(ws.lake, as_of)
    everyone = NBP.population.from_lake(ws.lake, as_of)
    customers = active[key].head(2).to_list() or everyone[key].head(2).to_list()
    outside = everyone.join(active, on=key, how="anti")[key].head(1).to_list() or ["C-nobody"]
    leads, closed = ["L-nobody"], "L-nobody"
    if read_table(ws.lake, "leads", [lead_key]) is not None:
        open_ = LEAD.population.from_lake(ws.lake, as_of)
        known = read_table(ws.lake, "leads", [lead_key, "created_at"])
        shut = known.filter(pl.col("created_at") < as_of).join(open_, on=lead_key, how="anti")  # type: ignore[union-attr]
        leads = open_[lead_key].head(1).to_list() or leads
        closed = (shut[lead_key].head(1).to_list() or [closed])[0]
    return customers, outside[0], leads, closed
