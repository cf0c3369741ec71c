"""The features of a lead known only by its CRM attributes: a lead created in the CRM a
moment ago, scored before any snapshot holds it.

Written once, next to the feature SQL it mirrors (``features/sql.py``): the attributes
are the features of the same name, ranks come from ``catalog.LEAD_RANKS``,
``days_since_created`` is measured to ``now``, and a lead with no recorded activity
has every count 0 and every "days since" unknown.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from functools import cache
from typing import Any

from features.catalog import FEATURES, LEAD_RANKS, attribute_column

#: The lead's own attributes a request may give, each the feature of the same name.
ATTRIBUTES: tuple[str, ...] = ("source", "country", "industry", "company_size", "job_seniority")
#: Unknown (None) rather than 0 without a value: no activity ever happened, and a rank of
#: an attribute not given is not the lowest rank.
_UNKNOWN = frozenset({"days_since_last_activity", *LEAD_RANKS})


@cache
def _defaults() -> dict[str, Any]:
    """Every lead feature of a lead with no recorded activity: counts 0, the rest unknown
    (computed once; callers copy it)."""
    out: dict[str, Any] = {}
    for spec in FEATURES["lead"]:
        if spec.kind == "str" or spec.name in _UNKNOWN:
            out[spec.name] = None
        else:
            out[spec.name] = 0 if spec.kind == "int" else 0.0
    return out


def new_lead_row(attributes: Mapping[str, Any], custom: Mapping[str, Any], created_at: datetime | None,
                 now: datetime) -> tuple[dict[str, Any], set[str]]:
    """The lead's feature values and the names of those it gave (the rest are defaults).

    ``attributes`` holds any of ``ATTRIBUTES`` (None = not given); ``custom`` the lake's
    declared custom attributes by name (without the ``attr_`` prefix).
    """
    given: dict[str, Any] = {a: attributes[a] for a in ATTRIBUTES if attributes.get(a) is not None}
    for feature, (attribute, values) in LEAD_RANKS.items():
        value = attributes.get(attribute)
        if value in values:
            given[feature] = values.index(value)
    if created_at is not None:
        given["days_since_created"] = max((now - created_at).total_seconds() / 86_400, 0.0)
    given.update({attribute_column(name): value for name, value in custom.items()})
    return {**_defaults(), **given}, set(given)
