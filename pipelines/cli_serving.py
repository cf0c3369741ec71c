"""``crmscore serve`` and ``crmscore keys create``: start the prediction service, manage its keys.

``register(app)`` adds them to the main CLI. BentoML, Feast and MLflow are
imported inside the commands so ``crmscore --help`` stays fast.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from crmdata.errors import CrmscoreError
from pipelines.cli import console, handle_errors, workspace

log = logging.getLogger("crmscore")

keys_app = typer.Typer(help="API keys of the prediction service (only their hashes are stored).",
                       no_args_is_help=True)

#: The service, as BentoML imports it in each server worker.
SERVICE = "serving.service:CrmScoring"
#: How long `serve` waits for /readyz before saying the service is up but not ready.
READY_TIMEOUT_SECONDS = 180.0


@keys_app.command("create")
@handle_errors
def keys_create(
    scope: Annotated[str, typer.Option(help="score: the scoring endpoints; admin: also /admin/*.")] = "score",
    note: Annotated[str, typer.Option(help="Who or what the key is for (stored with the hash).")] = "",
) -> None:
    """Create an API key: printed once, only its hash is stored (HOME/keys or $CRMSCORE_KEYS_FILE)."""
    from serving.auth import KeyScope, create_key, keys_file

    try:
        chosen = KeyScope(scope)
    except ValueError:
        raise CrmscoreError(f"--scope {scope!r}: expected score or admin") from None
    path = keys_file(workspace().keys)
    key, row = create_key(path, chosen, note)
    # The key goes to stdout alone (scripts capture it); the explanation to stderr.
    typer.echo(key)
    typer.echo(f"created {chosen.value} key {row.id} in {path}; it is shown only this once", err=True)


@keys_app.command("list")
@handle_errors
def keys_list() -> None:
    """The stored keys by id and scope (the keys themselves are not stored)."""
    from serving.auth import keys_file, read_keys

    path = keys_file(workspace().keys)
    rows = read_keys(path)
    if not rows:
        console.print(f"no keys in {path}: run `crmscore keys create --scope score`")
    for r in rows:
        console.print(f"{r.id}  {r.scope.value:<5}  {r.created_at}  {r.note}")


def serve(
    port: Annotated[int, typer.Option(min=1, max=65535, help="HTTP port.")] = 3000,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    profile: Annotated[str, typer.Option(help="Feature store profile: local (SQLite) or redis.")] = "local",
    models: Annotated[
        str, typer.Option(help="Models to serve (comma-separated: churn, lead, nbp); /readyz needs them all.")
    ] = "churn,lead,nbp",
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

    from features.store import Profile
    from serving.predictor import MODEL_KEYS, resolve_as_of

    ws = workspace()
    try:
        chosen = Profile(profile)
    except ValueError:
        raise CrmscoreError(f"--profile {profile!r}: expected local or redis") from None
    wanted = [m.strip() for m in models.split(",") if m.strip()]
    if not wanted or any(m not in MODEL_KEYS for m in wanted):
        raise CrmscoreError(f"--models {models!r}: expected a comma-separated subset of churn, lead, nbp")
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
    root = Path(__file__).resolve().parent.parent
    _check_port(host, port)
    started = time.monotonic()
    # One worker process (BentoML's default for this service); scale out with replicas.
    server = bentoml.serve(SERVICE, host=host, port=port, working_dir=str(root), blocking=False)
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
                      f"(profile {chosen.value}; docs: {url}/docs.json)")
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
    import socket

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


def wait_ready(url: str, timeout: float, alive: Any = lambda: True) -> bool:
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
    from crmdata.workspace import mlflow_tracking_uri

    uri = mlflow_tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.removeprefix(prefix).startswith("/"):
        return prefix + str(Path(uri.removeprefix(prefix)).absolute())
    return uri


def examples(url: str, ws: Any) -> str:
    """Curl calls that work on this workspace: real ids, and a new score key made for them."""
    import polars as pl

    from serving.auth import create_key, keys_file

    key, row = create_key(keys_file(ws.keys), "score", note="demo key from crmscore serve --print-examples")

    def first(table: str, column: str, n: int) -> list[str]:
        path = ws.lake / f"{table}.parquet"
        if not path.exists():
            return []
        return pl.read_parquet(path, columns=[column]).head(n)[column].cast(pl.String).to_list()

    customers = first("customers", "customer_id", 2) or ["C0000001"]
    leads = first("leads", "lead_id", 1) or ["L0000001"]
    ids = ", ".join(f'"{c}"' for c in customers)
    auth = f"-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json'"
    return "\n".join([
        f"A score key was created for these examples (id {row.id}, shown only here):",
        f"  export CRMSCORE_KEY={key}",
        "",
        "# churn risk with the reasons",
        f"curl -s {url}/churn_risk {auth} -d '{{\"customer_ids\": [{ids}]}}'",
        "# a stored lead and a brand-new one, without reasons",
        (f"curl -s {url}/lead_score {auth} -d '{{\"leads\": [{{\"lead_id\": \"{leads[0]}\"}}, "
         "{\"attributes\": {\"source\": \"webinar\", \"country\": \"DE\", \"company_size\": \"51-200\", "
         "\"job_seniority\": \"director\"}}], \"explain\": false}'"),
        "# the next 3 products to offer",
        f"curl -s {url}/next_best_products {auth} -d '{{\"customer_ids\": [{ids}], \"k\": 3}}'",
        "# open endpoints",
        f"curl -s {url}/readyz; curl -s {url}/metrics | head; curl -s {url}/docs.json | head -c 300",
    ])


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``keys`` to the crmscore CLI."""
    app.command("serve")(handle_errors(serve))
    app.add_typer(keys_app, name="keys")
