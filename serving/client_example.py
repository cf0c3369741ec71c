"""A small client for CRM apps: plain HTTP + JSON, nothing of crmscore needed on the app side.

    CRMSCORE_URL=http://127.0.0.1:3000 CRMSCORE_KEY=crm_score_... python serving/client_example.py C0000001 C0000002

Copy the class into an app: it needs only ``httpx``. It keeps one connection
pool, sends the key in the ``Authorization`` header, splits large id lists
into calls of at most 1,000 (the service's limit), retries a 503 (the online
store or a model is briefly unavailable, e.g. during a restart) with backoff,
and raises on anything else that is not a 200.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

log = logging.getLogger(__name__)

MAX_BATCH = 1000


class CrmScoreError(Exception):
    """The service refused the call (4xx) or stayed unavailable; the message says why."""


class CrmScoreClient:
    def __init__(self, url: str, key: str, timeout: float = 10.0, retries: int = 3) -> None:
        self._http = httpx.Client(base_url=url, timeout=timeout, headers={"Authorization": f"Bearer {key}"})
        self._retries = retries

    def churn_risk(self, customer_ids: Sequence[str], explain: bool = True) -> list[dict[str, Any]]:
        """One result per id, in order: status, probability, score, band, reasons, freshness."""
        return [r for chunk in _chunks(customer_ids)
                for r in self._post("/churn_risk", {"customer_ids": chunk, "explain": explain})["results"]]

    def lead_scores(self, leads: Sequence[dict[str, Any]], explain: bool = False) -> list[dict[str, Any]]:
        """``leads``: ``{"lead_id": ...}`` or ``{"attributes": {...}}`` (a lead not in the CRM store yet)."""
        return [r for chunk in _chunks(leads)
                for r in self._post("/lead_score", {"leads": chunk, "explain": explain})["results"]]

    def next_best_products(self, customer_ids: Sequence[str], k: int = 5,
                           exclude: Sequence[str] = ()) -> list[dict[str, Any]]:
        return [r for chunk in _chunks(customer_ids)
                for r in self._post("/next_best_products",
                                    {"customer_ids": chunk, "k": k, "exclude": list(exclude)})["results"]]

    def customer_value(self, customer_ids: Sequence[str], explain: bool = True) -> list[dict[str, Any]]:
        """One result per id, in order: status, clv and its interval, margin, P(alive), expected
        orders, RFM, tier, reasons, freshness."""
        return [r for chunk in _chunks(customer_ids)
                for r in self._post("/customer_value", {"customer_ids": chunk, "explain": explain})["results"]]

    def close(self) -> None:
        self._http.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(self._retries + 1):
            response = self._http.post(path, json=body)
            if response.status_code == 200:
                answer = response.json()
                log.debug("%s answered by %s v%s", path, answer["model"]["name"], answer["model"]["version"])
                return answer
            message = _error(response)
            if response.status_code != 503 or attempt == self._retries:
                raise CrmScoreError(f"{path}: HTTP {response.status_code}: {message}")
            time.sleep(0.2 * 2**attempt)  # the store or a model is coming back: back off and retry
        raise AssertionError("unreachable")


def _chunks(items: Sequence[Any]) -> Iterator[list[Any]]:
    for start in range(0, len(items), MAX_BATCH):
        yield list(items[start:start + MAX_BATCH])


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", response.text))
    except ValueError:
        return response.text


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    client = CrmScoreClient(os.environ.get("CRMSCORE_URL", "http://127.0.0.1:3000"), os.environ["CRMSCORE_KEY"])
    try:
        ids = argv or ["C0000001"]
        for r in client.churn_risk(ids):
            if r["status"] == "not_found":
                log.info("%s: not in the feature store", r["customer_id"])
                continue
            why = ", ".join(f"{x['feature']}={x['value']}" for x in (r["reasons"] or {}).get("up", []))
            log.info("%s: churn risk %s (%d/99)%s; up: %s", r["customer_id"], r["band"], r["score"],
                     " [stale features]" if r["stale"] else "", why or "-")
        for r in client.next_best_products(ids, k=3):
            log.info("%s: offer %s", r["customer_id"], ", ".join(i["product_id"] for i in r["items"]) or "-")
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
