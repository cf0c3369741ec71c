"""The crmscore prediction service (BentoML 1.4): one class, one typed method per question.

    crmscore serve [--port 3000] [--profile local|redis]      # or: bentoml serve serving.service:CrmScoring

BentoML defines the class at import; everything heavy (champions from the
MLflow registry, the Feast store) loads once in ``__init__``, in the server
worker. The methods are a thin layer over ``serving.predictor.Predictor``:
they turn its ``Unavailable``/``BadRequest`` into a 503/400 with a message.
BentoML itself answers malformed JSON and schema violations with a 400, and
provides ``/healthz``, ``/readyz`` (which asks ``__is_ready__``), ``/metrics``
(Prometheus) and ``/docs.json`` (OpenAPI). ``serving.auth.ApiGuard`` checks
API keys, content type and body size before any of it.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

import bentoml
from pydantic import BaseModel
from starlette.responses import JSONResponse

from serving.auth import ApiGuard
from serving.schemas import (
    ChurnRiskRequest,
    ChurnRiskResponse,
    LeadScoreRequest,
    LeadScoreResponse,
    NextBestProductsRequest,
    NextBestProductsResponse,
    ReloadResponse,
)

log = logging.getLogger("serving")

#: Run a full (generation 2) collection after this many generation-1 ones (CPython: 10).
FULL_GC_EVERY = 100

Req = TypeVar("Req", bound=BaseModel)
Resp = TypeVar("Resp", bound=BaseModel)


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
    """Lead scores, churn risk and next-best products for CRM apps."""

    def __init__(self) -> None:
        from serving.predictor import Predictor, ServingSettings

        # BentoML's server logging keeps the root at WARNING; the service's own lines
        # (versions loaded, swaps, store outages) are INFO.
        logging.getLogger("serving").setLevel(os.environ.get("CRMSCORE_LOG_LEVEL", "INFO").upper())
        settings = ServingSettings.from_env()
        self.predictor = Predictor(settings)
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
            log.warning("%s: 503 %s", endpoint, exc)
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


CrmScoring.add_asgi_middleware(ApiGuard)
