"""The crmscore prediction service (BentoML 1.4): one class, one typed method per question.

    crmscore serve [--port 3000] [--profile local|redis]      # or: bentoml serve serving.service:CrmScoring

BentoML defines the class at import; everything heavy (champions from the
MLflow registry, the Feast store) loads once in ``__init__``, in the server
worker. The methods are a thin layer over ``serving.predictor.Predictor``:
they turn its ``Unavailable``/``BadRequest`` into a 503/400 with a message.
BentoML provides ``/healthz``, ``/metrics`` (Prometheus) and ``/docs.json``
(OpenAPI, which ``ServiceEndpoints`` corrects with ``serving.openapi``);
``ServiceEndpoints`` answers ``/readyz`` itself, from the predictor's last
readiness verdict, with the reasons in the body. ``serving.auth.ApiGuard``
checks routes, API keys, content type, body size and the body's schema before
any of it; ``serving.protocol`` closes a connection whose request head is not complete
within 5 s (slow-header clients). Log lines pass ``EscapeControl``: no client-made text in a path or a
message can forge a line or send terminal escapes.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import time
from collections.abc import Callable, MutableMapping
from typing import Any, TypeVar

import bentoml
from pydantic import BaseModel
from starlette.responses import JSONResponse

from serving import protocol
from serving.auth import ApiGuard, escape
from serving.report import ReportEndpoint
from serving.schemas import (
    ChurnRiskRequest,
    ChurnRiskResponse,
    CustomerValueRequest,
    CustomerValueResponse,
    LeadScoreRequest,
    LeadScoreResponse,
    NextBestProductsRequest,
    NextBestProductsResponse,
    ReloadResponse,
)

log = logging.getLogger("serving")

# A server worker imports this module before uvicorn loads its config: slow-header
# clients get a deadline (serving/protocol.py).
protocol.install()

#: Run a full (generation 2) collection after this many generation-1 ones (CPython: 10).
FULL_GC_EVERY = 100

Req = TypeVar("Req", bound=BaseModel)
Resp = TypeVar("Resp", bound=BaseModel)

#: The predictor of this worker process, for ``ServiceEndpoints`` (set by ``CrmScoring``).
_PREDICTOR: Any = None


class EscapeControl(logging.Filter):
    """Escape control characters in every log message (an access-log line carries the
    request path as the client sent it: ``%0a`` would start a forged line, ``%1b`` a
    terminal escape). Tracebacks are formatted separately and are not touched."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.isprintable():
            record.msg, record.args = escape(message, limit=2000), None
        return True


#: Loggers whose messages carry what a client sent (the request path). Their records are
#: escaped where they are made, so no handler sees them raw, whichever runs first.
CLIENT_INPUT_LOGGERS = ("bentoml.access", "serving.auth")


def install_log_filter() -> None:
    """Put ``EscapeControl`` on the loggers that carry client input, and on every handler
    the server configured (root, BentoML's, ours) for anything else."""
    for name in CLIENT_INPUT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, EscapeControl) for f in logger.filters):
            logger.addFilter(EscapeControl())
    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict))]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if not any(isinstance(f, EscapeControl) for f in handler.filters):
                handler.addFilter(EscapeControl())


class ServiceEndpoints:
    """ASGI middleware for the two open documents BentoML gets wrong for this service:
    ``GET /readyz`` (the predictor's last verdict at once, with its reasons, instead of
    waiting on ``__is_ready__`` in a thread) and ``GET /docs.json`` (corrected by
    ``serving.openapi.patch_openapi``, built once)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._docs: bytes | None = None

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") in ("GET", "HEAD"):
            if scope["path"] == "/readyz" and _PREDICTOR is not None:
                verdict = _PREDICTOR.readiness()
                await _send_json(send, 200 if verdict.ready else 503,
                                 {"ready": verdict.ready, "reasons": verdict.reasons})
                return
            if scope["path"] == "/docs.json":
                if self._docs is None:
                    from serving.openapi import patch_openapi

                    self._docs = json.dumps(patch_openapi(CrmScoring.openapi_spec.asdict())).encode()
                await _send_json(send, 200, self._docs)
                return
        await self.app(scope, receive, send)


async def _send_json(send: Any, status: int, body: dict[str, Any] | bytes) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


@bentoml.service(
    name="crmscore",
    # A request that takes longer than this is a stuck store, not a slow model (1,000 rows
    # with reasons take ~1 s; a silent Redis fails in ~4 s). Kept short also because
    # BentoML's timeout keeps every request's timer, future and trace span alive until it
    # would fire: at 250 requests/s, 30 s of them made each full GC walk ~200k objects.
    traffic={"timeout": 10},
    # Sync endpoints run in this many threads: store reads wait on I/O with the GIL released.
    threads=4,
)
class CrmScoring:
    """Lead scores, churn risk, next-best products and customer value for CRM apps."""

    def __init__(self) -> None:
        from serving.predictor import Predictor, ServingSettings

        global _PREDICTOR
        # BentoML's server logging keeps the root at WARNING; the service's own lines
        # (versions loaded, swaps, store outages) are INFO.
        logging.getLogger("serving").setLevel(os.environ.get("CRMSCORE_LOG_LEVEL", "INFO").upper())
        install_log_filter()
        settings = ServingSettings.from_env()
        self.predictor = Predictor(settings)
        self.predictor.start_probing()
        _PREDICTOR = self.predictor
        # Feast, MLflow and pandas leave ~450k long-lived objects behind; every full
        # collection walked all of them (a 100-300 ms pause in the p99 of requests that
        # allocate a lot, such as a batch with reasons). They live as long as the process.
        gc.collect()
        gc.freeze()
        # A batch of 100 allocates ~20k objects, so the default (700, 10, 10) ran a full
        # collection every ~20 such requests; a tenth as often keeps it out of the p99.
        gen0, gen1, _ = gc.get_threshold()
        gc.set_threshold(gen0, gen1, FULL_GC_EVERY)
        self.predictor.champions.start_polling(settings.reload_seconds)

    @bentoml.api(route="/lead_score", output_spec=LeadScoreResponse)
    def lead_score(self, request: LeadScoreRequest, /) -> LeadScoreResponse | JSONResponse:
        """Score up to 1,000 leads (A–D): by lead_id from the online store, or a new lead's attributes."""
        return self._answer("lead_score", self.predictor.lead_score, request)

    @bentoml.api(route="/churn_risk", output_spec=ChurnRiskResponse)
    def churn_risk(self, request: ChurnRiskRequest, /) -> ChurnRiskResponse | JSONResponse:
        """Churn risk (low/medium/high) of up to 1,000 customers, with the reasons."""
        return self._answer("churn_risk", self.predictor.churn_risk, request)

    @bentoml.api(route="/next_best_products", output_spec=NextBestProductsResponse)
    def next_best_products(self, request: NextBestProductsRequest, /) -> NextBestProductsResponse | JSONResponse:
        """The k (1–50) products each customer should be offered next, with a reason each."""
        return self._answer("next_best_products", self.predictor.next_best_products, request)

    @bentoml.api(route="/customer_value", output_spec=CustomerValueResponse)
    def customer_value(self, request: CustomerValueRequest, /) -> CustomerValueResponse | JSONResponse:
        """Customer value of up to 1,000 customers: predicted spend and its interval, P(alive),
        expected orders, RFM scores and segment, the A–D tier, and the reasons."""
        return self._answer("customer_value", self.predictor.customer_value, request)

    @bentoml.api(route="/admin/reload", output_spec=ReloadResponse)
    def reload_models(self) -> ReloadResponse:
        """Swap in any newly promoted champion now (admin key); in-flight requests finish on the old one."""
        return self.predictor.reload()

    @bentoml.api(route="/admin/models", output_spec=ReloadResponse)
    def loaded_models(self) -> ReloadResponse:
        """The versions being served, and why a model is missing (admin key)."""
        return ReloadResponse(changed=[], models=self.predictor.loaded_models())

    def __is_ready__(self) -> bool:
        return self.predictor.ready()

    @bentoml.on_shutdown
    def shutdown(self) -> None:
        self.predictor.close()

    def _answer(self, endpoint: str, call: Callable[[Req], Resp], request: Req) -> Resp | JSONResponse:
        from serving.predictor import BadRequest, Unavailable

        started = time.perf_counter()
        try:
            response = call(request)
        except Unavailable as exc:
            # Per request at DEBUG: under an outage every call is one; the store's going away and
            # coming back are logged once each by the predictor.
            log.debug("%s: 503 %s", endpoint, exc)
            return JSONResponse({"error": str(exc)}, status_code=503)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if log.isEnabledFor(logging.DEBUG):  # counts and timing only: never ids or values
            results = getattr(response, "results", [])
            statuses: dict[str, int] = {}
            for r in results:
                statuses[r.status] = statuses.get(r.status, 0) + 1
            log.debug("%s: %d items %s by %s v%s in %.1f ms", endpoint, len(results), statuses,
                      response.model.name, response.model.version,  # type: ignore[attr-defined]
                      (time.perf_counter() - started) * 1000)
        return response


# Added first, so it is the outer one: it answers two open GET paths itself and hands
# everything else to the guard.
CrmScoring.add_asgi_middleware(ServiceEndpoints)
CrmScoring.add_asgi_middleware(ApiGuard)
# Added after the guard, so it sits inside it: GET /report is answered only once the key is checked.
CrmScoring.add_asgi_middleware(ReportEndpoint)
