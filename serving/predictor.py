"""The predictor behind the HTTP service: champions + online store -> answers.

Nothing here knows about HTTP or BentoML (``serving/service.py`` is a thin
layer over it), so the business rules — per-item status, new-lead defaults,
freshness, cold start — are tested directly. It raises ``Unavailable`` (the
service answers 503) when a model or the online store cannot answer, and
``BadRequest`` (400) for input the schemas cannot rule out on their own.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from crmdata.errors import CrmscoreError
from crmdata.times import as_utc
from crmdata.workspace import Workspace
from features.catalog import ATTRIBUTE_PREFIX, JOIN_KEYS, VIEW_NAMES, attribute_column, table_file
from features.new_lead import ATTRIBUTES, new_lead_row
from features.store import Profile
from serving.champions import Champions, Loaded, Slot
from serving.online import PROBE_ID, Breaker, OnlineReader, Rows, StoreUnavailable
from serving.schemas import (
    ChurnRiskRequest,
    ChurnRiskResponse,
    CustomerProducts,
    CustomerValue,
    CustomerValueRequest,
    CustomerValueResponse,
    LeadScore,
    LeadScoreRequest,
    LeadScoreResponse,
    LoadedModel,
    ModelInfo,
    NewLead,
    NextBestProductsRequest,
    NextBestProductsResponse,
    ProductRecommendation,
    ReloadResponse,
    Rfm,
)
from serving.scoring import BinaryScorer, Scored, ValueScored, ValueScorer, plain
from training.tasks import CHURN, LEAD, NBP, TASKS, VALUE, Task

log = logging.getLogger(__name__)

#: Short names for --models / CRMSCORE_SERVE_MODELS -> registered model names.
MODEL_KEYS: dict[str, str] = {key: task.model_name for key, task in TASKS.items()}
#: The customer feature the recommender's popularity fallback needs for unknown customers.
NBP_SEGMENT = "segment"

PROFILE_ENV = "CRMSCORE_PROFILE"
PROJECT_ENV = "CRMSCORE_FEAST_PROJECT"
MODELS_ENV = "CRMSCORE_SERVE_MODELS"
RELOAD_ENV = "CRMSCORE_RELOAD_SECONDS"
AS_OF_ENV = "CRMSCORE_AS_OF"
#: How often the readiness prober reads the store (and how long its verdict is trusted
#: when no prober runs): /readyz answers from the last verdict at once, turns red within
#: a probe interval plus the store deadline of a stall, and green within the breaker's
#: open time plus an interval of recovery.
PROBE_INTERVAL_SECONDS = 0.5
#: Entity ids per view the readiness probe reads to see that the data is there.
WITNESSES = 8


class Unavailable(Exception):
    """A model or the online store cannot answer now (HTTP 503)."""


class BadRequest(Exception):
    """Input the schemas accept but the model cannot use (HTTP 400)."""


@dataclass(frozen=True)
class Readiness:
    """The last readiness verdict: ready, and if not, why (one line per problem)."""

    ready: bool
    reasons: list[str]
    checked_at: float  # time.monotonic()


class ServingSettings(BaseModel):
    """Where the service reads from, resolved from the environment at start."""

    home: Path
    profile: Profile = Profile.LOCAL
    feast_project: str | None = None
    models: list[str] = Field(default_factory=lambda: list(MODEL_KEYS))
    reload_seconds: float = 30.0
    #: Freshness is measured against this instant instead of the wall clock (replaying a
    #: historical or synthetic world); None = now.
    as_of: datetime | None = None

    @classmethod
    def from_env(cls) -> ServingSettings:
        ws = Workspace.from_env()
        models = [m.strip() for m in (os.environ.get(MODELS_ENV) or ",".join(MODEL_KEYS)).split(",") if m.strip()]
        unknown = [m for m in models if m not in MODEL_KEYS]
        if unknown:
            raise CrmscoreError(f"{MODELS_ENV}: unknown models {unknown}; expected {', '.join(MODEL_KEYS)}")
        return cls(
            home=ws.home,
            profile=Profile(os.environ.get(PROFILE_ENV) or Profile.LOCAL),
            feast_project=os.environ.get(PROJECT_ENV) or None,
            models=models,
            reload_seconds=float(os.environ.get(RELOAD_ENV) or 30.0),
            as_of=resolve_as_of(os.environ.get(AS_OF_ENV), ws),
        )


def resolve_as_of(value: str | None, ws: Workspace) -> datetime | None:
    """``None``/``now`` -> wall clock; ``snapshot`` -> the newest feature snapshot; else ISO 8601."""
    if not value or value == "now":
        return None
    if value == "snapshot":
        from features.build import read_build_summary

        return max(read_build_summary(ws.feature_tables).as_of)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise CrmscoreError(f"{AS_OF_ENV}={value!r}: expected now, snapshot or an ISO 8601 time") from None
    return as_utc(parsed)


def _snapshot_ids(ws: Workspace, join_key: str) -> list[str]:
    """Up to ``WITNESSES`` ids of ``join_key``'s entity at the newest snapshot of the feature
    tables: what materialize put in the online store. Empty without feature tables (a
    serving-only deployment): the probe then learns ids from requests."""
    import polars as pl

    entity = next((e for e, key in JOIN_KEYS.items() if key == join_key), None)
    path = ws.feature_tables / table_file(entity) if entity else None
    if path is None or not path.exists():
        return []
    try:
        frame = pl.scan_parquet(path).select(join_key, "event_timestamp")
        newest = frame.select(pl.col("event_timestamp").max()).collect().item()
        ids = frame.filter(pl.col("event_timestamp") == newest).select(join_key).head(WITNESSES).collect()
    except (OSError, pl.exceptions.PolarsError) as exc:
        log.warning("readiness: no known %s ids (%s); learning them from requests", join_key,
                    exc.__class__.__name__)
        return []
    return [str(i) for i in ids[join_key].to_list()]


@dataclass(frozen=True)
class BinaryBundle:
    scorer: BinaryScorer
    reader: OnlineReader


@dataclass(frozen=True)
class ValueBundle:
    scorer: ValueScorer
    reader: OnlineReader


@dataclass(frozen=True)
class NbpBundle:
    recommender: Any  # training.nbp.Recommender
    reader: OnlineReader


class Predictor:
    """Loads the champions and the online store once; answers the business questions."""

    def __init__(self, settings: ServingSettings, store: Any = None, client: Any = None) -> None:
        from features.store import feature_store
        from training.registry import configure_mlflow

        self.settings = settings
        self.ws = Workspace(settings.home)
        extra = {"project": settings.feast_project} if settings.feast_project else {}
        self.store = store if store is not None else feature_store(self.ws, settings.profile, **extra)
        self.client = client if client is not None else configure_mlflow()
        # Loading downloads artifacts through MLflow's process-wide URI: pin ours, so nothing
        # else in the process (a test, a notebook) can point a reload at another registry.
        self.registry_uri = self.client._registry_uri
        slots = []
        for key in settings.models:
            task = TASKS[key]
            load: Callable[[str], Loaded[Any]]
            if task.scorer == "binary":
                load = self._binary_loader(task.model_name)
            elif task.scorer == "value":
                load = self._load_value
            else:
                load = self._load_nbp
            slots.append(Slot(task.model_name, load))
        #: One breaker for the online store: every reader shares it, so a stall seen by one
        #: model's reads fails the others' fast too.
        self.breaker = Breaker()
        #: Per feature service: ids known to be in the online store (see ``_witnesses``).
        self._witnesses: dict[str, list[str]] = {}
        self.champions = Champions(self.client, slots)
        self._store_ok: bool | None = None
        self._store_lock = threading.Lock()
        self._readiness = Readiness(False, ["not checked yet"], float("-inf"))
        self._stop_probing = threading.Event()
        self._prober: threading.Thread | None = None
        started = time.perf_counter()
        self.champions.refresh()
        log.info("predictor ready in %.1fs: %s (profile %s, freshness against %s)", time.perf_counter() - started,
                 ", ".join(f"{s.name} v{s.current.version}" if s.current else f"{s.name} (none: {s.error})"
                           for s in self.champions.slots.values()),
                 settings.profile.value, settings.as_of.isoformat() if settings.as_of else "the wall clock")

    # --- loading ------------------------------------------------------------------

    def _binary_loader(self, name: str) -> Callable[[str], Loaded[BinaryBundle]]:
        def load(version: str) -> Loaded[BinaryBundle]:
            from training.model import load_model

            self._pin_registry()
            model = load_model(name, version=version, client=self.client)
            reader = OnlineReader(self.store, model.spec.feature_service, breaker=self.breaker)
            missing = [f for f in model.spec.features if f not in reader.features]
            if missing:
                # A champion that needs features the store does not serve would answer NaN for
                # them silently: refuse it and keep the current one.
                raise CrmscoreError(f"{name} v{version} needs features {model.spec.feature_service} "
                                    f"does not serve: {', '.join(missing[:10])}")
            return Loaded(name, version, self.champions.alias, BinaryBundle(BinaryScorer(model), reader))

        return load

    def _load_value(self, version: str) -> Loaded[ValueBundle]:
        from training.value.scorer import load_value_model

        self._pin_registry()
        model = load_value_model(VALUE.model_name, version=version, client=self.client)
        reader = OnlineReader(self.store, model.spec.model.feature_service, breaker=self.breaker)
        wanted = [*model.feature_names, *VALUE_FIELDS.values()]
        missing = [f for f in dict.fromkeys(wanted) if f not in reader.features]
        if missing:
            # As for the binary models: never answer with features the store does not serve.
            raise CrmscoreError(f"{VALUE.model_name} v{version} needs features {model.spec.model.feature_service} "
                                f"does not serve: {', '.join(missing[:10])}")
        return Loaded(VALUE.model_name, version, self.champions.alias, ValueBundle(ValueScorer(model), reader))

    def _load_nbp(self, version: str) -> Loaded[NbpBundle]:
        from training.nbp import load_recommender

        self._pin_registry()
        lake = self.ws.lake if self.ws.lake.exists() else None
        # With the lake, ownership and order counts are as of the latest orders, not the
        # training cutoff: an owned one-off product is never recommended.
        recommender = load_recommender(version=version, client=self.client, lake=lake)
        # The NBP feature service is keyed by (customer, product); the customer's half is read
        # with one anchor product (any: its product row is not used).
        reader = OnlineReader(self.store, NBP.feature_service, views=[VIEW_NAMES["customer"]],
                              fixed_keys={JOIN_KEYS["product"]: str(recommender.product_ids[0])},
                              breaker=self.breaker)
        return Loaded(NBP.model_name, version, self.champions.alias, NbpBundle(recommender, reader))

    def _pin_registry(self) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.registry_uri)
        mlflow.set_registry_uri(self.registry_uri)

    def reload(self) -> ReloadResponse:
        changed = self.champions.refresh()
        return ReloadResponse(changed=changed, models=self.loaded_models())

    def loaded_models(self) -> list[LoadedModel]:
        out = []
        for slot in self.champions.slots.values():
            cur = slot.current
            out.append(LoadedModel(name=slot.name, version=cur.version if cur else None,
                                   alias=cur.alias if cur else None, loaded_at=cur.loaded_at if cur else None,
                                   error=slot.error))
        return out

    def close(self) -> None:
        self.champions.stop()
        self._stop_probing.set()
        if self._prober is not None:
            self._prober.join(timeout=5)
        self.breaker.close()

    # --- health ---------------------------------------------------------------------

    def ready(self) -> bool:
        return self.readiness().ready

    def readiness(self) -> Readiness:
        """Every champion loaded, the online store answering and each served view's data
        there and within its TTL. With the prober running this is its last verdict (never
        waits on the store); without, a verdict older than a probe interval is renewed here."""
        if self._prober is None and time.monotonic() - self._readiness.checked_at >= PROBE_INTERVAL_SECONDS:
            self._readiness = self._check()
        return self._readiness

    def start_probing(self) -> None:
        """Check readiness every ``PROBE_INTERVAL_SECONDS`` on a daemon thread (the server does)."""
        if self._prober is not None:
            return

        def loop() -> None:
            while True:
                try:
                    self._readiness = self._check()
                except Exception:  # a bug here must not leave /readyz frozen on an old verdict
                    log.exception("readiness probe failed")
                    self._readiness = Readiness(False, ["readiness probe failed"], time.monotonic())
                if self._stop_probing.wait(PROBE_INTERVAL_SECONDS):
                    return

        self._readiness = self._check()
        self._prober = threading.Thread(target=loop, name="readiness-probe", daemon=True)
        self._prober.start()

    def _check(self) -> Readiness:
        reasons = [f"{s.name}: {s.error or 'not loaded'}" for s in self.champions.slots.values() if s.current is None]
        readers: dict[str, OnlineReader] = {}
        for slot in self.champions.slots.values():
            if slot.current is not None:
                reader: OnlineReader = slot.current.value.reader
                readers.setdefault(reader.service, reader)
        for reader in readers.values():
            try:
                reasons += self._data_problems(reader)
            except StoreUnavailable as exc:
                self._mark_store(False)
                reasons.append(str(exc))
                break  # one store: the other services would say the same
        else:
            if readers:
                self._mark_store(True)
        return Readiness(not reasons, reasons, time.monotonic())

    def _data_problems(self, reader: OnlineReader) -> list[str]:
        """Read a few ids known to be materialized: a view with none of them has no rows
        (an emptied or restarted store); one whose rows are all older than the TTL holds an
        old snapshot. With no known ids yet, only that the store answers."""
        witnesses = self._witnesses_of(reader)
        rows = reader.read(witnesses or [PROBE_ID], self.now())
        if not witnesses:
            return []
        problems = []
        for view, fresh in rows.freshness.items():
            ages = [a for a, found in zip(fresh.age_seconds, fresh.found, strict=True) if found and a is not None]
            if not ages:
                problems.append(f"{view}: no rows in the online store (none of {len(witnesses)} materialized "
                                f"ids found); run `crmscore features materialize`")
            elif fresh.ttl_seconds is not None and min(ages) > fresh.ttl_seconds:
                problems.append(f"{view}: newest snapshot is {min(ages) / 86_400:.1f} days old, older than "
                                f"its TTL of {fresh.ttl_seconds / 86_400:g} days")
        return problems

    def _witnesses_of(self, reader: OnlineReader) -> list[str]:
        """Ids of the reader's entity in the newest snapshot of the feature tables (when the
        workspace has them), else ids a request found in the store."""
        known = self._witnesses.get(reader.service)
        if known is None:
            known = self._witnesses[reader.service] = _snapshot_ids(self.ws, reader.join_key)
        return known

    def _learn_witnesses(self, reader: OnlineReader, rows: Rows) -> None:
        if self._witnesses.get(reader.service):
            return
        self._witnesses[reader.service] = [i for i, ok, stale in zip(rows.ids, rows.found, rows.stale, strict=True)
                                           if ok and not stale][:WITNESSES]

    def _mark_store(self, ok: bool) -> None:
        with self._store_lock:
            if ok != self._store_ok:
                (log.info if ok else log.error)("online store %s", "answering" if ok else "unavailable")
            self._store_ok = ok

    def now(self) -> datetime:
        return self.settings.as_of or datetime.now(UTC)

    def _read(self, reader: OnlineReader, ids: Sequence[str]) -> Rows:
        try:
            rows = reader.read(ids, self.now())
        except StoreUnavailable as exc:
            self._mark_store(False)
            raise Unavailable(f"{exc}; retry shortly") from None
        if not self._store_ok:
            self._mark_store(True)
        self._learn_witnesses(reader, rows)
        return rows

    def _champion(self, name: str) -> Loaded[Any]:
        slot = self.champions.slots.get(name)
        if slot is None:
            raise Unavailable(f"{name} is not served by this instance (see --models)")
        current = slot.current  # read once: a swap during this request does not affect it
        if current is None:
            raise Unavailable(f"{name} is not available: {slot.error or 'not loaded'}")
        return current

    # --- the questions ------------------------------------------------------------------

    def churn_risk(self, request: ChurnRiskRequest) -> ChurnRiskResponse:
        loaded = self._champion(CHURN.model_name)
        bundle: BinaryBundle = loaded.value
        rows = self._read(bundle.reader, request.customer_ids)
        why_not = _why_not(CHURN, bundle, rows.values, rows.found)
        scored = bundle.scorer.score(rows.values, len(rows.ids), request.explain)
        results = []
        for i, cid in enumerate(rows.ids):
            fields = _scored_fields(scored, rows, i, request.explain, why_not[i])
            fields.update(customer_id=cid, band=scored.grade[i] if fields["status"] in SCORED else None)
            results.append(fields)
        # One validation of the whole answer (pydantic's core builds the nested models): a
        # model constructed per item and reason cost ~3x as much for a batch of 100.
        return ChurnRiskResponse.model_validate({"model": _info(loaded), "results": results})

    def customer_value(self, request: CustomerValueRequest) -> CustomerValueResponse:
        loaded = self._champion(VALUE.model_name)
        bundle: ValueBundle = loaded.value
        model = bundle.scorer.model
        rows = self._read(bundle.reader, request.customer_ids)
        reasons = VALUE.population.why_not(rows.values, len(rows.ids), mode=model.spec.model.mode)
        why_not = [r if ok else None for r, ok in zip(reasons, rows.found, strict=True)]
        scored = bundle.scorer.score(rows.values, len(rows.ids), request.explain)
        shown = {name: _column(rows.values, column, len(rows.ids)) for name, column in VALUE_FIELDS.items()}
        results = []
        for i, cid in enumerate(rows.ids):
            fields = _scored_fields(None, rows, i, request.explain, why_not[i])
            if fields["status"] in SCORED:
                fields.update(_value_fields(scored, shown, i, request.explain))
            results.append(CustomerValue(customer_id=cid, **fields))
        return CustomerValueResponse(model=_info(loaded), horizon_days=model.settings.horizon_days,
                                     interval_level=model.settings.interval_level, results=results)

    def lead_score(self, request: LeadScoreRequest) -> LeadScoreResponse:
        loaded = self._champion(LEAD.model_name)
        bundle: BinaryBundle = loaded.value
        n = len(request.leads)
        known = [i for i, lead in enumerate(request.leads) if lead.lead_id is not None]
        features = list(bundle.scorer.spec.features)
        values: dict[str, list[Any]] = {f: [None] * n for f in features}
        found, stale = [True] * n, [False] * n
        absent: list[tuple[str, ...]] = [()] * n
        ages: list[float | None] = [0.0] * n
        defaulted: list[list[str] | None] = [None] * n
        why_not: list[str | None] = [None] * n  # a new lead given by attributes is open by definition
        if known:
            rows = self._read(bundle.reader, [request.leads[i].lead_id for i in known])  # type: ignore[misc]
            for f in features:
                column, source = values[f], rows.values.get(f)
                if source is not None:
                    for j, i in enumerate(known):
                        column[i] = source[j]
            stored_why_not = _why_not(LEAD, bundle, rows.values, rows.found)
            for j, i in enumerate(known):
                found[i], stale[i], ages[i] = rows.found[j], rows.stale[j], rows.age_seconds[j]
                absent[i] = rows.absent[j]
                why_not[i] = stored_why_not[j]
        now = self.now()
        categorical = frozenset(bundle.scorer.spec.categories)
        notes: list[str | None] = [None] * n
        for i, lead in enumerate(request.leads):
            if lead.attributes is None:
                continue
            row, defaulted[i], notes[i] = new_lead_features(lead.attributes, features, now, index=i,
                                                            categorical=categorical)
            for f in features:
                values[f][i] = row[f]
        scored = bundle.scorer.score(values, n, request.explain)
        rows_view = Rows(ids=[], values=values, found=found, age_seconds=ages, stale=stale, absent=absent,
                         freshness={})
        results = []
        for i, lead in enumerate(request.leads):
            fields = _scored_fields(scored, rows_view, i, request.explain, why_not[i])
            if lead.attributes is not None:
                # Scored from the request alone: no stored history, so it is a cold start.
                fields.update(cold_start=True, stale=False, feature_age_seconds=0.0, detail=notes[i])
            results.append(LeadScore(lead_id=lead.lead_id,
                                     grade=scored.grade[i] if fields["status"] in SCORED else None,
                                     defaulted=defaulted[i], **fields))
        return LeadScoreResponse(model=_info(loaded), results=results)

    def next_best_products(self, request: NextBestProductsRequest) -> NextBestProductsResponse:
        loaded = self._champion(NBP.model_name)
        bundle: NbpBundle = loaded.value
        rec = bundle.recommender
        ids = list(request.customer_ids)
        rows = self._read(bundle.reader, ids)
        known = rec.customer_rows(ids) >= 0
        # The fallback for customers the model never saw ranks by their segment's popularity:
        # the segment comes from the online store.
        segment_column = rows.values.get(NBP_SEGMENT, [None] * len(ids))
        segments = {c: s for c, s, k in zip(ids, segment_column, known, strict=True) if not k and isinstance(s, str)}
        answers = rec.recommend(ids, k=request.k, exclude=list(request.exclude) or None, segments=segments or None)
        results = []
        for i, answer in enumerate(answers):
            detail = None
            if not rows.found[i]:
                # No stored row: the customer is not (or no longer) in the online store, even if
                # the model saw them in training. Never "ok" without the features.
                status, items = "not_found", []
            elif rows.absent[i]:
                status, items, detail = "incomplete_features", [], _missing(rows.absent[i])
            else:
                status = "stale_features" if rows.stale[i] else "ok"
                items = [ProductRecommendation(product_id=r.product_id, score=r.score, reason=r.reason,
                                               reason_product_id=r.reason_product_id) for r in answer.items]
            results.append(CustomerProducts(customer_id=ids[i], status=status, detail=detail, items=items,
                                            feature_age_seconds=rows.age_seconds[i], stale=rows.stale[i],
                                            cold_start=bool(answer.cold_start) and status in SCORED))
        return NextBestProductsResponse(model=_info(loaded), results=results)


def _info(loaded: Loaded[Any]) -> ModelInfo:
    return ModelInfo(name=loaded.name, version=loaded.version, alias=loaded.alias)


#: Statuses that carry a probability, score and grade.
SCORED = frozenset({"ok", "stale_features"})


def _why_not(task: Task, bundle: BinaryBundle, values: Any, found: list[bool]) -> list[str | None]:
    """Per stored row: None if the entity is in the task's population, else why not (rows not
    found are left to ``not_found``). The rule is the task's, the one batch scoring uses."""
    reasons = task.population.why_not(values, len(found), mode=bundle.scorer.spec.mode)
    return [r if ok else None for r, ok in zip(reasons, found, strict=True)]


def _missing(absent: Sequence[str]) -> str:
    shown = ", ".join(absent[:10])
    return f"no stored value for {len(absent)} feature(s): {shown}{', ...' if len(absent) > 10 else ''}"


def _scored_fields(scored: Scored | None, rows: Rows, i: int, explain: bool,
                   why_not: str | None = None) -> dict[str, Any]:
    """status, detail, freshness and (given ``scored``, a binary model's) the score of row ``i``."""
    if not rows.found[i]:
        return {"status": "not_found", "stale": True, "cold_start": False, "feature_age_seconds": None}
    if rows.absent[i]:
        # A partial row (fields deleted or never written): scoring it would treat the missing
        # features as unknown and answer as if complete.
        return {"status": "incomplete_features", "detail": _missing(rows.absent[i]), "stale": rows.stale[i],
                "cold_start": False, "feature_age_seconds": rows.age_seconds[i]}
    if why_not is not None:
        # Outside the model's population: a probability here would be an answer to a question
        # the model was never trained on (e.g. churn of a customer with nothing to cancel).
        return {"status": "not_eligible", "detail": why_not, "stale": rows.stale[i], "cold_start": False,
                "feature_age_seconds": rows.age_seconds[i]}
    if scored is None:
        return {"status": "stale_features" if rows.stale[i] else "ok", "feature_age_seconds": rows.age_seconds[i],
                "stale": rows.stale[i], "cold_start": False}
    return {
        "status": "stale_features" if rows.stale[i] else "ok",
        "probability": float(scored.probability[i]),
        "score": int(scored.score[i]),
        "reasons": _reasons_of(scored.reasons, i) if explain else None,
        "feature_age_seconds": rows.age_seconds[i],
        "stale": rows.stale[i],
        "cold_start": False,
    }


#: Answer field -> the customer_value feature it shows as stored (features.catalog names them).
VALUE_FIELDS: dict[str, str] = {
    "p_alive": "peer_p_alive", "expected_orders": "peer_expected_orders",
    "r": "rfm_r", "f": "rfm_f", "m": "rfm_m", "segment": "rfm_segment",
}


def _column(values: Any, name: str, n: int) -> list[Any]:
    raw = values.get(name)
    if raw is None:
        return [None] * n
    return raw.tolist() if hasattr(raw, "tolist") else list(raw)


def _number(value: Any) -> float | None:
    value = plain(value)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _score(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _reasons_of(reasons: list[dict[str, list[Any]]] | None, i: int) -> dict[str, list[dict[str, Any]]] | None:
    """Row ``i``'s reasons as the response's ``Reasons`` fields (validated with the answer)."""
    if reasons is None:
        return None
    r = reasons[i]
    return {side: [{"feature": x.feature, "value": x.value, "impact": x.impact} for x in r[side]]
            for side in ("up", "down")}


def _value_fields(scored: ValueScored, shown: dict[str, list[Any]], i: int, explain: bool) -> dict[str, Any]:
    reasons = _reasons_of(scored.reasons, i) if explain else None
    segment = plain(shown["segment"][i])
    return {
        "clv": float(scored.clv[i]), "clv_low": float(scored.clv_low[i]), "clv_high": float(scored.clv_high[i]),
        "expected_margin": float(scored.expected_margin[i]), "tier": str(scored.tier[i]),
        "p_alive": _number(shown["p_alive"][i]), "expected_orders": _number(shown["expected_orders"][i]),
        "rfm": Rfm(r=_score(shown["r"][i]), f=_score(shown["f"][i]), m=_score(shown["m"][i]),
                   segment=segment if isinstance(segment, str) else None),
        "reasons": reasons,
    }


# --- brand-new leads -------------------------------------------------------------------

def new_lead_features(lead: NewLead, features: list[str], now: datetime, index: int = 0,
                      categorical: frozenset[str] = frozenset()) -> tuple[dict[str, Any], list[str], str | None]:
    """The model's feature row of a lead that is not in the store (``features.new_lead``), the
    features that were defaulted and, if a custom attribute had the wrong kind (text for a
    numeric feature, a number for a ``categorical`` one), a note naming it: its value is
    dropped and defaulted, never read as "unknown" silently. An unknown custom attribute
    is a ``BadRequest``."""
    unknown = [name for name in lead.custom if attribute_column(name) not in features]
    if unknown:
        known = sorted(f.removeprefix(ATTRIBUTE_PREFIX) for f in features if f.startswith(ATTRIBUTE_PREFIX))
        raise BadRequest(f"leads[{index}].attributes.custom: the model has no custom attribute "
                         f"{unknown[0]!r} (it knows: {', '.join(known) or 'none'})")
    wrong = sorted(name for name, value in lead.custom.items()
                   if isinstance(value, str) != (attribute_column(name) in categorical))
    custom = {name: value for name, value in lead.custom.items() if name not in wrong}
    attributes = {a: getattr(lead, a) for a in ATTRIBUTES}
    values, given = new_lead_row(attributes, custom, lead.created_at, now)
    note = None
    if wrong:
        note = "custom attributes of the wrong kind, defaulted: " + ", ".join(
            f"{name} (expected {'text' if attribute_column(name) in categorical else 'a number'})" for name in wrong)
    return {f: values.get(f) for f in features}, [f for f in features if f not in given], note
