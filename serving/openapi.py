"""The published OpenAPI document, made to say what the server does.

BentoML generates ``/docs.json`` from the typed methods, but its error bodies
are not the ones this service sends (its 400 documents ``detail`` as a string;
401/403/404/405/413/415/503 are not documented at all) and it has no title,
version or description of its own. ``patch_openapi`` fixes that on the
generated document: one error schema (``serving.schemas.ErrorResponse``) on
every route for every status the guard or the service can send, the service's
title, version and description, and an example per request schema.
"""

from __future__ import annotations

import copy
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from serving.schemas import API_ROUTES, ErrorResponse

DESCRIPTION = (
    "crmscore answers four CRM questions over JSON — lead scores (A–D), churn risk "
    "(low/medium/high, with the reasons), the next-best products for a customer and customer "
    "value (predicted spend with its interval, RFM segment and A–D tier, with the reasons) — from the "
    "champion models of the MLflow registry and features from the Feast online store. Every item "
    "of a batch has its own status (ok, stale_features, not_found, not_eligible, "
    "incomplete_features); only ok and stale_features carry a score. Scoring calls need "
    "`Authorization: Bearer <key>` (`crmscore keys create`); /admin/* needs an admin key."
)

#: Statuses every route may answer with the error body, and why.
API_ERRORS: dict[str, str] = {
    "400": "invalid input (malformed JSON, wrong types, unknown fields, out of range); `detail` lists each "
           "problem, or more than one Authorization header",
    "401": "no or unknown API key",
    "403": "a score key on an admin route",
    "404": "no such route",
    "405": "wrong method for this route",
    "413": "body larger than CRMSCORE_MAX_BODY_BYTES",
    "415": "body not application/json",
    "503": "the online store does not answer (circuit open), or the model has no champion",
}
OPEN_ERRORS = {code: API_ERRORS[code] for code in ("404", "405", "503")}

EXAMPLES: dict[str, dict[str, Any]] = {
    "/churn_risk": {"customer_ids": ["C0000001", "C0000002"], "explain": True},
    "/lead_score": {"leads": [{"lead_id": "L0000042"},
                              {"attributes": {"source": "webinar", "country": "DE", "company_size": "51-200",
                                              "created_at": "2025-06-01T09:00:00Z"}}],
                    "explain": False},
    "/next_best_products": {"customer_ids": ["C0000001"], "k": 5, "exclude": ["P0003"]},
    "/customer_value": {"customer_ids": ["C0000001", "C0000002"], "explain": True},
    "/admin/reload": {},
    "/admin/models": {},
}


def package_version() -> str:
    try:
        return version("crmscore")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def patch_openapi(document: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(document)
    doc["info"] = {"title": "crmscore", "version": package_version(),
                   "description": DESCRIPTION}
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error_schema.pop("$defs", {}))
    schemas["ErrorResponse"] = error_schema
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in doc.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            errors = API_ERRORS if path in API_ROUTES else OPEN_ERRORS
            for code in [c for c in operation["responses"] if str(c).startswith(("4", "5"))]:
                del operation["responses"][code]
            for code, why in errors.items():
                operation["responses"][code] = {"description": why,
                                                "content": {"application/json": {"schema": error_ref}}}
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if method == "post" and body is not None and path in EXAMPLES:
                body["example"] = EXAMPLES[path]
    return doc
