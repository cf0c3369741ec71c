"""Train, evaluate, log, register and (maybe) promote crm-next-best-product.

The time split: factors are fitted on orders before the cutoff; the test rows are
the customers active before it (at least one product order) who bought an
eligible product in the next ``window_days``. On exactly those rows the model is
compared with a popularity baseline, a per-segment popularity baseline and, on a
synthetic world, the oracle ranking by the true affinities. The promotion gate
compares NDCG@10 with the champion's on the same rows.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, Field

from crmdata.errors import CrmscoreError
from training.nbp.interactions import (
    CUSTOMER_ID,
    ORDERED_AT,
    SEGMENT,
    UNKNOWN_SEGMENT,
    ConfidenceParams,
    LakeData,
    Split,
    index_of,
    owned_once,
    read_lake,
    time_split,
)
from training.nbp.popularity import popularity_order, popularity_table
from training.nbp.recommender import MODEL_NAME, Algorithm, NbpSpec, Recommender
from training.ranking_metrics import (
    DEFAULT_KS,
    HEADLINE,
    evaluate_rankings,
    top_k_from_order,
    top_k_from_scores,
)
from training.trainer import TrainResult

log = logging.getLogger(__name__)

#: Depth of the evaluated rankings (the plot goes to here; the table is at DEFAULT_KS).
MAX_K = 20
BLOCK = 16_384
PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")


class NbpParams(BaseModel):
    """Hyper-parameters; defaults chosen on the synthetic world (docs/next-best-product.md)."""

    factors: int = Field(8, ge=2)
    regularization: float = Field(1.0, ge=0)
    iterations: int = Field(15, ge=1)
    #: BPR only.
    learning_rate: float = Field(0.05, gt=0)
    bpr_iterations: int = Field(200, ge=1)
    alpha: float = Field(1.0, gt=0)
    half_life_days: float = Field(730.0, gt=0)
    min_orders: int = Field(2, ge=1)
    category_boost: float = Field(0.0, ge=0)
    popularity_weight: float = Field(0.1, ge=0)
    random_state: int = 7
    num_threads: int = Field(0, ge=0, description="0 = every core")

    @property
    def confidence(self) -> ConfidenceParams:
        return ConfidenceParams(alpha=self.alpha, half_life_days=self.half_life_days)


# --- fit --------------------------------------------------------------------------------------


def make_model(algorithm: Algorithm, params: NbpParams) -> Any:
    """The implicit model (CPU), configured; ``fit`` is the caller's."""
    if algorithm == "als":
        from implicit.cpu.als import AlternatingLeastSquares

        # alpha = 1: the matrix already holds the confidences 1 + alpha · r (interactions.py).
        return AlternatingLeastSquares(factors=params.factors, regularization=params.regularization, alpha=1.0,
                                       iterations=params.iterations, random_state=params.random_state,
                                       num_threads=params.num_threads)
    if algorithm == "bpr":
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(factors=params.factors, learning_rate=params.learning_rate,
                                           regularization=params.regularization, iterations=params.bpr_iterations,
                                           random_state=params.random_state, num_threads=params.num_threads)
    raise CrmscoreError(f"unknown algorithm {algorithm!r}; use 'als' or 'bpr'")


def fit_factors(confidence: sp.csr_matrix, algorithm: Algorithm, params: NbpParams) -> tuple[np.ndarray, np.ndarray]:
    """(user factors, item factors). BPR's carry a bias column (item bias, user 1)."""
    from threadpoolctl import threadpool_limits

    # implicit parallelises itself; a multi-threaded BLAS underneath it oversubscribes the cores
    # (and implicit warns about it when the model is created).
    with threadpool_limits(1, "blas"):
        model = make_model(algorithm, params)
        model.fit(confidence, show_progress=False)
    return np.ascontiguousarray(model.user_factors), np.ascontiguousarray(model.item_factors)


def build_recommender(data: LakeData, split: Split, algorithm: Algorithm, params: NbpParams,
                      user_factors: np.ndarray, item_factors: np.ndarray) -> Recommender:
    cat = data.catalogue
    segments = sorted(s for s in data.customers[SEGMENT].unique().to_list() if s != UNKNOWN_SEGMENT)
    seg_rows = index_of(split.train.customer_ids, data.customers[CUSTOMER_ID].to_numpy().astype(str))
    seg_codes = index_of(data.customers[SEGMENT], np.asarray(segments))
    customer_segments = np.where(seg_rows >= 0, seg_codes[np.maximum(seg_rows, 0)], -1).astype(np.int16)
    popularity = popularity_table(split.train.strength(), customer_segments, len(segments))
    categories = sorted({c for c in cat.categories.tolist() if c})
    cat_index = {c: i for i, c in enumerate(categories)}
    spec = NbpSpec(algorithm=algorithm, factors=int(item_factors.shape[1]), regularization=params.regularization,
                   confidence=params.confidence, min_orders=params.min_orders, category_boost=params.category_boost,
                   popularity_weight=params.popularity_weight,
                   as_of=split.cutoff, window_days=split.window_days, segments=segments, categories=categories)
    return Recommender(
        spec=spec, customer_ids=split.train.customer_ids, product_ids=cat.product_ids, product_names=cat.names,
        product_categories=np.asarray([cat_index.get(c, -1) for c in cat.categories], dtype=np.int64),
        repeatable=cat.repeatable, user_factors=user_factors, item_factors=item_factors,
        history=split.train.confidence, orders=split.train.orders,
        customer_segments=customer_segments,
        popularity=popularity, typical_amount=split.typical_amount, typical_quantity=split.typical_quantity,
        num_threads=params.num_threads,
    )


# --- evaluation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """Rankings of every policy on the same test customers, and their metrics."""

    recommended: dict[str, np.ndarray]  # policy → (test customers, MAX_K) product indexes
    metrics: dict[str, dict]  # policy → evaluate_rankings dict
    cold: np.ndarray  # the model's cold-start rows


def evaluated_customers(split: Split) -> np.ndarray:
    """The ids of the split's test customers."""
    return split.train.customer_ids[split.test_rows]


def model_rankings(rec: Recommender, split: Split, data: LakeData, k: int = MAX_K) -> tuple[np.ndarray, np.ndarray]:
    """A recommender's top-k for the split's test customers, in the split's product order.

    A recommender trained on this split already holds its history; any other (the
    champion) is first given the split's pre-cutoff orders, so ownership, order counts
    and fold-in of customers it never saw come from the same data as the challenger's.
    """
    same = rec.history is split.train.confidence
    if not same:
        rec = rec.with_orders(data.orders.filter(pl.col(ORDERED_AT) < split.cutoff), split.cutoff, data.customers)
    ranked = rec.rank(evaluated_customers(split), k)
    items = ranked.items
    if not same or not np.array_equal(rec.product_ids, data.catalogue.product_ids):
        mapping = index_of(rec.product_ids, data.catalogue.product_ids)
        items = np.where(items >= 0, mapping[np.maximum(items, 0)], -1)
    return items, ranked.cold


def popularity_rankings(rec: Recommender, owned: sp.csr_matrix, pop_rows: np.ndarray, k: int = MAX_K) -> np.ndarray:
    """Top-k by a popularity row (0 = overall, 1+g = segment g), owned one-offs skipped."""
    out = np.full((len(pop_rows), k), -1, dtype=np.int64)
    orders = {int(r): popularity_order(rec.popularity[r]) for r in np.unique(pop_rows)}
    for start in range(0, len(pop_rows), BLOCK):
        sl = slice(start, start + BLOCK)
        dense = owned[sl].toarray() > 0
        for r, order in orders.items():
            rows = np.flatnonzero(pop_rows[sl] == r)
            if rows.size:
                out[start + rows] = top_k_from_order(order, k, dense[rows][:, order])
    return out


def oracle_rankings(lake: Path, split: Split, data: LakeData, owned: sp.csr_matrix, k: int = MAX_K) -> np.ndarray | None:
    """Top-k by the true affinities of a synthetic world (None for a real lake)."""
    from crmdata.lake import TRUTH_DIR

    if not (lake / TRUTH_DIR).is_dir():
        return None
    try:
        from crmdata.truth import load_truth

        affinity = load_truth(lake).affinity
        columns = affinity.product_rows(data.catalogue.product_ids)
    except Exception as exc:  # noqa: BLE001  (a partial, older or edited truth folder: no oracle)
        log.warning("no oracle: cannot use the ground truth of %s (%s)", lake, exc)
        return None
    customers = evaluated_customers(split)
    out = np.full((len(customers), k), -1, dtype=np.int64)
    for start in range(0, len(customers), BLOCK):
        sl = slice(start, start + BLOCK)
        scores = affinity.scores(customers[sl])[:, columns]
        out[sl] = top_k_from_scores(scores, k, owned[sl].toarray() > 0)
    return out


def evaluate_policies(lake: Path, rec: Recommender, split: Split, data: LakeData,
                      ks: Sequence[int] = DEFAULT_KS) -> Evaluation:
    """The model, both popularity baselines and (synthetic worlds) the oracle, on the same rows."""
    owned = owned_once(split.train.confidence[split.test_rows], data.catalogue.repeatable)
    model, cold = model_rankings(rec, split, data)
    pop_rows = rec.popularity_rows(np.asarray(split.test_rows))
    recommended = {
        "model": model,
        "popularity": popularity_rankings(rec, owned, np.zeros(len(split.test_rows), dtype=np.int64)),
        "segment popularity": popularity_rankings(rec, owned, pop_rows),
    }
    oracle = oracle_rankings(lake, split, data, owned)
    if oracle is not None:
        recommended["oracle"] = oracle
    segments = np.asarray(rec.spec.segments + ["unknown"], dtype=object)[pop_rows - 1]
    slices = {"warm": ~cold, "cold_start": cold}
    metrics = {
        policy: evaluate_rankings(r[:, :max(ks)], split.relevant, data.catalogue.n, ks, slices=slices,
                                  segments=segments)
        for policy, r in recommended.items()
    }
    return Evaluation(recommended=recommended, metrics=metrics, cold=cold)


# --- registry ---------------------------------------------------------------------------------


def load_recommender(alias: str | None = "champion", version: str | None = None, client: Any = None,
                     lake: Path | None = None, as_of: datetime | None = None) -> Recommender:
    """A registered version (by alias, default champion, or number), from its .npy/.json artifacts.

    With ``lake``, the lake's orders (before ``as_of``, default: all) are folded in:
    current ownership and order counts, and factors for customers the model never saw.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from training.nbp.recommender import artifact_paths, read_recommender
    from training.registry import configure_mlflow

    client = client or configure_mlflow()
    try:
        mv = client.get_model_version(MODEL_NAME, version) if version else \
            client.get_model_version_by_alias(MODEL_NAME, alias)
    except MlflowException:
        wanted = f"version {version}" if version else f"alias @{alias}"
        raise CrmscoreError(f"{MODEL_NAME} has no {wanted}; train one with `crmscore train nbp`") from None
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{MODEL_NAME}/{mv.version}"))
    rec = read_recommender(artifact_paths(local), version=str(mv.version), alias=None if version else alias,
                           run_id=mv.run_id)
    log.info("loaded %s version %s (%s)", MODEL_NAME, rec.version, alias if not version else "by number")
    if lake is not None:
        data = read_lake(lake)
        orders = data.orders
        if as_of is None:
            as_of = orders["ordered_at"].max() + timedelta(microseconds=1)  # include the last order
        rec = rec.with_orders(orders, as_of, data.customers)
    return rec


def gate(client: Any, split: Split, data: LakeData, new: dict[str, float]) -> tuple[bool, str, dict | None]:
    """Promote only if there is no champion or the challenger's NDCG@10 beats it on the same rows."""
    from training.registry import CHAMPION, version_by_alias

    current = version_by_alias(client, MODEL_NAME, CHAMPION)
    if current is None:
        return True, "no champion yet", None
    try:
        champion = load_recommender(version=str(current.version), client=client)
    except CrmscoreError as exc:
        return False, f"champion v{current.version} cannot be loaded ({exc}); promote by hand", None
    if champion.spec.as_of > split.cutoff:
        return False, (f"champion v{current.version} was fitted on orders up to {champion.spec.as_of:%Y-%m-%d}, "
                       f"after this split's cutoff {split.cutoff:%Y-%m-%d}: not comparable; promote by hand"), None
    items, cold = model_rankings(champion, split, data)
    champ = evaluate_rankings(items[:, :10], split.relevant, data.catalogue.n, DEFAULT_KS,
                              slices={"warm": ~cold, "cold_start": cold})
    ours, theirs = new[HEADLINE], champ["overall"][HEADLINE]
    facts = (f"NDCG@10 {ours:.4f} vs champion v{current.version} {theirs:.4f} on the same "
             f"{len(split.test_rows)} test customers")
    if ours > theirs:
        return True, f"beats the champion: {facts}", champ
    return False, f"does not beat the champion: {facts}", champ


def fingerprint(matrix: sp.csr_matrix) -> str:
    """A content hash of the training matrix, to tell whether two runs saw the same data."""
    h = hashlib.sha256()
    for part in (matrix.indptr, matrix.indices, matrix.data):
        h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()[:16]


def _signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import Array

    inputs = Schema([ColSpec(DataType.string, "customer_id"), ColSpec(DataType.string, "segment", required=False),
                     ColSpec(Array(DataType.string), "exclude", required=False)])
    outputs = Schema([
        ColSpec(DataType.string, "customer_id"), ColSpec(DataType.integer, "rank"),
        ColSpec(DataType.string, "product_id"), ColSpec(DataType.double, "score"),
        ColSpec(DataType.string, "reason"), ColSpec(DataType.string, "reason_product_id", required=False),
        ColSpec(DataType.boolean, "cold_start"),
    ])
    return ModelSignature(inputs=inputs, outputs=outputs, params=ParamSchema([ParamSpec("k", DataType.long, 10)]))


def _requirements() -> list[str]:
    # Explicit, so MLflow does not start a subprocess to infer them from the model file.
    return [f"{p}=={package_version(p)}" for p in ("mlflow", "implicit", "numpy", "scipy", "polars", "pandas",
                                                     "pydantic")]


def log_model(rec: Recommender, example_ids: list[str]) -> Any:
    """Log the pyfunc (model from code) with .npy/.json artifacts only; returns the ModelInfo."""
    import mlflow

    from training.nbp.recommender import save_recommender

    with tempfile.TemporaryDirectory() as tmp:
        paths = save_recommender(rec, Path(tmp))
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(PYFUNC_FILE), artifacts={k: str(v) for k, v in paths.items()},
            signature=_signature(), input_example=pd.DataFrame({"customer_id": example_ids}),
            pip_requirements=_requirements(),
        )


class Stopwatch:
    """Wall-clock and process-CPU seconds per stage.

    CPU time (``cpu.<stage>``) counts every thread of the process and not the time
    other processes hold the cores, so comparisons stay meaningful on a shared machine.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.seconds[name] = time.perf_counter() - wall
        self.seconds[f"cpu.{name}"] = time.process_time() - cpu

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": time.perf_counter() - self._wall,
                "cpu.total": time.process_time() - self._cpu}


def _flat_metrics(evaluation: Evaluation) -> dict[str, float]:
    """The model's metrics overall, per segment and per slice; the other policies overall.

    (Everything else is in metrics.json: MLflow metrics are for comparing runs.)
    """
    from training.metrics import flatten

    m = evaluation.metrics["model"]
    flat = flatten(m)
    flat.update({f"slice.{s}.{k}": v for s, vals in m["by_slice"].items() for k, v in vals.items() if not np.isnan(v)})
    prefixes = {"popularity": "baseline.", "segment popularity": "segment_baseline.", "oracle": "oracle."}
    for policy, prefix in prefixes.items():
        if policy in evaluation.metrics:
            flat.update(flatten({"overall": evaluation.metrics[policy]["overall"]}, prefix=prefix))
    return flat


# --- the entry point -------------------------------------------------------------------------


def train_nbp(lake: Path, window_days: int = 30, cutoff: datetime | None = None, algorithm: Algorithm = "als",
              params: NbpParams | dict[str, Any] | None = None, ks: Sequence[int] = DEFAULT_KS,
              extra_tags: dict[str, str] | None = None) -> TrainResult:
    """Fit on orders before the cutoff, evaluate on the next ``window_days``, log, register, gate.

    ``cutoff`` defaults to the start of the lake's last full window. The result has
    the shape of the other trainers' (``metrics``/``baseline``/``oracle`` are
    ``{"overall", "by_segment", "by_slice"}`` dicts; ``baseline`` is the popularity
    baseline and holds the per-segment one under ``segment_popularity``).
    """
    import matplotlib.pyplot as plt
    import mlflow

    from training.metrics import flatten
    from training.nbp import report
    from training.registry import (
        CHALLENGER,
        CHAMPION,
        configure_mlflow,
        ensure_experiment,
        git_commit,
        promote,
        record_decision,
    )

    p = params if isinstance(params, NbpParams) else NbpParams(**(params or {}))
    ks = sorted(set(ks) | {10})  # NDCG@10 is the headline and the gate
    if algorithm not in ("als", "bpr"):
        raise CrmscoreError(f"unknown algorithm {algorithm!r}; use 'als' or 'bpr'")
    clock = Stopwatch()
    lake = Path(lake)

    with clock.stage("read"):
        data = read_lake(lake)
    with clock.stage("matrix"):
        split = time_split(data, window_days, cutoff, p.confidence)
    with clock.stage("fit"):
        user_factors, item_factors = fit_factors(split.train.confidence, algorithm, p)
    with clock.stage("model"):
        rec = build_recommender(data, split, algorithm, p, user_factors, item_factors)
    with clock.stage("evaluate"):
        evaluation = evaluate_policies(lake, rec, split, data, ks)
        table = report.metric_table(evaluation.metrics, ks)
        curves = report.metrics_by_k(evaluation.recommended, split.relevant, data.catalogue.n, MAX_K)
    metrics = evaluation.metrics["model"]
    baseline = {**evaluation.metrics["popularity"], "segment_popularity": evaluation.metrics["segment popularity"]}
    oracle = evaluation.metrics.get("oracle")

    client = configure_mlflow()
    ensure_experiment(client, MODEL_NAME)
    with mlflow.start_run(run_name=f"nbp-{algorithm}-{time.strftime('%Y%m%d-%H%M%S')}") as run:
        with clock.stage("log_and_register"):
            mlflow.log_params({
                "algorithm": algorithm, **p.model_dump(exclude={"num_threads"}),
                "window_days": window_days, "cutoff": f"{split.cutoff:%Y-%m-%d}",
                "customers": rec.n_customers, "products": rec.n_products,
                "interactions": int(split.train.confidence.nnz), "test_customers": int(split.test_rows.size),
            })
            # The model goes first: MLflow links every metric already in the run to a logged
            # model with one query per metric (seconds for a few hundred); logging them
            # afterwards with the model's id links them in one batch.
            info = log_model(rec, evaluated_customers(split)[:2].tolist())
            mlflow.log_metrics(_flat_metrics(evaluation), model_id=info.model_id)
            mlflow.set_tags({
                "feature_service": "none (orders only)", "data_fingerprint": fingerprint(split.train.confidence),
                "git_commit": git_commit(), "baseline": "popularity; segment popularity",
                "oracle": "true affinities" if oracle else "none (not a synthetic world)", **(extra_tags or {}),
            })
            mlflow.log_table(table, "metrics_table.json")
            mlflow.log_text(table.to_csv(index=False), "metrics_table.csv")
            fig = report.plot_metrics_by_k(curves)
            mlflow.log_figure(fig, "plots/metrics_by_k.png")
            plt.close(fig)
            mlflow.log_dict({"model": metrics, "baseline": baseline, "oracle": oracle, "by_k": curves},
                            "metrics.json")
            summary = {
                "algorithm": f"{algorithm} ({rec.spec.factors} factors)",
                "split": f"train on orders before {split.cutoff:%Y-%m-%d}; test on the next {window_days} days",
                "test customers": f"{split.test_rows.size} (active before the cutoff, bought in the window)",
                "catalogue": f"{rec.n_products} products",
                "cold start": f"{int(evaluation.cold.sum())} test customers with < {p.min_orders} orders",
            }
            mlflow.log_text(report.model_card(summary, table, metrics), "model_card.md")
            mv = mlflow.register_model(info.model_uri, MODEL_NAME)
            version = str(mv.version)
            client.set_registered_model_alias(MODEL_NAME, CHALLENGER, version)
            for key, value in {"headline_metric": HEADLINE, "headline_value": f"{metrics['overall'][HEADLINE]:.4f}",
                               "cutoff": split.cutoff.isoformat()}.items():
                client.set_model_version_tag(MODEL_NAME, version, key, value)

        with clock.stage("gate"):
            promoted, reason, champion_metrics = gate(client, split, data, metrics["overall"])
            if champion_metrics is not None:
                mlflow.log_metrics(flatten(champion_metrics, prefix="champion."))
            record_decision(client, MODEL_NAME, version, promoted, reason)
            mlflow.set_tags({"promoted": str(promoted).lower(), "promotion_reason": reason})
            if promoted:
                promote(client, MODEL_NAME, version, reason, by="gate")
        timings = clock.total()
        mlflow.log_metrics({f"seconds.{k}": v for k, v in timings.items()})

    log.info("%s v%s: NDCG@10 %.4f (popularity %.4f%s); %s", MODEL_NAME, version, metrics["overall"][HEADLINE],
             baseline["overall"][HEADLINE], f", oracle {oracle['overall'][HEADLINE]:.4f}" if oracle else "", reason)
    return TrainResult(model=MODEL_NAME, version=version, run_id=run.info.run_id,
                       alias=CHAMPION if promoted else CHALLENGER, metrics=metrics, baseline=baseline,
                       oracle=oracle, promoted=promoted, reason=reason, seconds=timings)
