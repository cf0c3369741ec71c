"""Train the next-best-product model: fit the factors, build the recommender, log, register, gate.

``train_nbp`` is the entry point (``crmscore train nbp``). The time split: factors
are fitted on orders before the cutoff and evaluated on what active customers buy
in the next ``window_days`` (``evaluate``); the version is logged with its .npy/.json
artifacts (``persist``) and promoted only if its NDCG@10 beats the champion's on the
same test customers.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, Field

from crmdata.errors import CrmscoreError
from training.nbp.evaluate import (
    MAX_K,
    compare_with_champion,
    evaluate_policies,
    evaluated_customers,
    flat_metrics,
)
from training.nbp.interactions import (
    CUSTOMER_ID,
    SEGMENT,
    UNKNOWN_SEGMENT,
    ConfidenceParams,
    LakeData,
    Split,
    index_of,
    read_lake,
    time_split,
)
from training.nbp.persist import log_model
from training.nbp.popularity import popularity_table
from training.nbp.recommender import MODEL_NAME, Algorithm, NbpSpec, Recommender
from training.ranking_metrics import DEFAULT_KS, HEADLINE
from training.tasks import NBP
from training.trainer import TrainResult

log = logging.getLogger(__name__)


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
    """The recommender of fitted factors: the split's history, segments, popularity and catalogue."""
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


def fingerprint(matrix: sp.csr_matrix) -> str:
    """A content hash of the training matrix, to tell whether two runs saw the same data."""
    h = hashlib.sha256()
    for part in (matrix.indptr, matrix.indices, matrix.data):
        h.update(np.ascontiguousarray(part).tobytes())
    return h.hexdigest()[:16]


class Stopwatch:
    """Wall-clock and process-CPU seconds per stage.

    CPU time (``cpu.<stage>``) counts every thread of the process and not the time
    other processes hold the cores, so comparisons stay meaningful on a shared machine.
    A stage opened inside another is not counted in it (the gate runs inside the
    registration), so the stages add up to at most the total.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self._nested: list[list[float]] = []  # per open stage: wall and CPU seconds of its inner stages

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        self._nested.append([0.0, 0.0])
        try:
            yield
        finally:
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            inner_wall, inner_cpu = self._nested.pop()
            self.seconds[name] = wall - inner_wall
            self.seconds[f"cpu.{name}"] = cpu - inner_cpu
            if self._nested:
                self._nested[-1][0] += wall
                self._nested[-1][1] += cpu

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": time.perf_counter() - self._wall,
                "cpu.total": time.process_time() - self._cpu}


# --- the entry point -------------------------------------------------------------------------


def train_nbp(lake: Path, window_days: int = NBP.window_days, cutoff: datetime | None = None,
              algorithm: Algorithm = "als", params: NbpParams | dict[str, Any] | None = None,
              ks: Sequence[int] = DEFAULT_KS, extra_tags: dict[str, str] | None = None,
              register: bool = True) -> TrainResult:
    """Fit on orders before the cutoff, evaluate on the next ``window_days``, log, register, gate.

    ``register=False`` (a backtest fold) logs the run and its model but registers no
    version and moves no alias; inside an active run (the backtest's) the run is nested.

    ``cutoff`` defaults to the start of the lake's last full window. The result has
    the shape of the other trainers' (``metrics``/``baseline``/``oracle`` are
    ``{"overall", "by_segment", "by_slice"}`` dicts; ``baseline`` is the popularity
    baseline and holds the per-segment one under ``segment_popularity``).
    """
    import matplotlib.pyplot as plt
    import mlflow

    from crmdata.lake import table_path
    from training import inputs
    from training.metrics import flatten
    from training.nbp import report
    from training.registry import (
        Registration,
        configure_mlflow,
        ensure_experiment,
        git_commit,
        register_and_gate,
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

    def gate() -> tuple[bool, str]:
        with clock.stage("gate"):  # runs inside log_and_register, and is not counted in it
            promoted, reason, champion_metrics = compare_with_champion(client, split, data, metrics["overall"])
            if champion_metrics is not None:
                mlflow.log_metrics(flatten(champion_metrics, prefix="champion."))
        return promoted, reason

    with mlflow.start_run(run_name=f"nbp-{algorithm}-{time.strftime('%Y%m%d-%H%M%S')}",
                          nested=mlflow.active_run() is not None) as run:
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
            mlflow.log_metrics(flat_metrics(evaluation), model_id=info.model_id)
            mlflow.set_tags({
                "feature_service": "none (orders only)", "data_fingerprint": fingerprint(split.train.confidence),
                "git_commit": git_commit(), "baseline": "popularity; segment popularity",
                "oracle": "true affinities" if oracle else "none (not a synthetic world)", **(extra_tags or {}),
            })
            # The factors learn from the orders before the cutoff; the test is the window after it.
            inputs.log_reference(name="customer × product interactions", context="training",
                                 source=table_path(lake, "orders"), digest=fingerprint(split.train.confidence),
                                 rows=int(split.train.confidence.nnz),
                                 cutoffs=f"orders before {split.cutoff:%Y-%m-%d}")
            inputs.log_reference(name="purchases in the test window", context="holdout",
                                 source=table_path(lake, "orders"), digest=fingerprint(split.relevant),
                                 rows=int(split.test_rows.size),
                                 cutoffs=f"{split.cutoff:%Y-%m-%d} + {window_days} days")
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
            overall = metrics["overall"]
            description = (f"NDCG@10 {overall[HEADLINE]:.4f} (popularity {baseline['overall'][HEADLINE]:.4f}), "
                           f"recall@10 {overall['recall_at_10']:.4f}, hit rate@10 {overall['hit_rate_at_10']:.4f} "
                           f"on {split.test_rows.size:,} test customers (orders before {split.cutoff:%Y-%m-%d}, "
                           f"bought in the next {window_days} days)")
            registration = (register_and_gate(client, MODEL_NAME, info.model_uri, (HEADLINE, overall[HEADLINE]),
                                              gate, version_tags={"cutoff": split.cutoff.isoformat()},
                                              description=description) if register else
                            Registration(version="", promoted=False, reason="not registered (backtest fold)"))
        timings = clock.total()
        mlflow.log_metrics({f"seconds.{k}": v for k, v in timings.items()})

    log.info("%s v%s: NDCG@10 %.4f (popularity %.4f%s); %s", MODEL_NAME, registration.version,
             metrics["overall"][HEADLINE], baseline["overall"][HEADLINE],
             f", oracle {oracle['overall'][HEADLINE]:.4f}" if oracle else "", registration.reason)
    return TrainResult(model=MODEL_NAME, version=registration.version, run_id=run.info.run_id,
                       alias=registration.alias if register else "", metrics=metrics, baseline=baseline, oracle=oracle,
                       promoted=registration.promoted, reason=registration.reason, seconds=timings)
