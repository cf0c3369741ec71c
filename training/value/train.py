"""The customer-value job: each customer's spend over the next H days, its interval, margin and tier.

Label: the amount a customer signed up before the cutoff orders in ``[cutoff, cutoff + H)``
(``features.labels.value_labels``); features: the customer_value feature service as of the
cutoff. The frame is split by time as the binary jobs split theirs (the newest cutoff is the
holdout, the one before it validation, the rest train). Two LightGBM objectives suited to
zero-inflated spend are fitted and the better on the validation cutoff kept:

* ``tweedie``: one booster, Tweedie deviance (log link);
* ``two_part``: P(buy) (binary) × E[spend | buy] (gamma, on buyers only).

The mean is scaled so the validation cutoff's total is matched (spend drifts between
cutoffs, and the trees never see the newest level). The per-customer interval is a
conformalized quantile regression: quantile boosters at (1 − level)/2 and (1 + level)/2
fitted on the train cutoffs, widened on the validation cutoff by the conformity score
that covers ``level`` of its customers.

Judged on the holdout against the past-spend rule (last year's spend scaled to H), the
probabilistic peer (BG/NBD + Gamma-Gamma expected spend, a feature, scaled to H) and, on
synthetic worlds, the oracle (the world's expected spend); registered as
crm-customer-value through the same challenger/champion gate as every model.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import polars as pl

from crmdata.errors import CrmscoreError
from crmdata.lake import last_event, read_table
from crmdata.times import as_utc
from crmdata.truth import EXPECTED_SPEND, HORIZON_DAYS, read_value_truth
from crmdata.workspace import Workspace
from features.catalog import EVENT_TIMESTAMP, PEER_HORIZON_DAYS
from features.labels import value_labels
from features.peer import EXPECTED_SPEND as PEER_SPEND
from training.frames import (
    TIME_SPLIT_DATES,
    as_of_tag,
    choose_cutoffs,
    column,
    ensure_snapshots,
    labelled_frame,
    model_features,
)
from training.model import ModelSpec, fit_categories, prepare_features
from training.tasks import VALUE
from training.trainer import TrainResult, fingerprint, pinned_requirements, split_by_time
from training.value.metrics import evaluate_value, normalized_gini, total_error
from training.value.scorer import PREDICTION_COLUMNS, ValueModel, load_value_model, save_value_files
from training.value.spec import (
    RUN_RATE_DAYS,
    SPEND_365,
    Kind,
    ValueSettings,
    ValueSpec,
)
from training.value.tiers import TIERS, fit_thresholds

if TYPE_CHECKING:
    import lightgbm as lgb
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

LABEL = "label"
CUTOFF = EVENT_TIMESTAMP

#: Fewest customers with two or more orders a value model is trained on.
MIN_REPEAT_CUSTOMERS = 100
#: A training cutoff needs this much order history before it (its features look back).
MIN_HISTORY_DAYS = 28
#: At most this many cutoffs (the newest): enough seasons of behaviour, bounded training time.
MAX_VALUE_CUTOFFS = 8
#: Shortest label window predictions are extended from, and the cutoffs it must give.
MIN_WINDOW_DAYS = 28
EXTRAPOLATION_CUTOFFS = 5
#: Validation Gini within this of each other: the candidates rank alike; the better total decides.
GINI_TIE = 0.002
#: A challenger may be this much worse in |total error| and still be promoted on Gini.
TOTAL_TOLERANCE = 0.02

# A faster rate than the binary jobs' 0.05: five boosters are fitted, not one (train clv aims at no more
# than twice train churn's time).
BASE_PARAMS: dict[str, Any] = {
    "learning_rate": 0.1,
    "num_leaves": 31,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    # Coarser histograms than the default 255 bins: several boosters on every customer at every cutoff.
    "max_bin": 63,
    "verbose": -1,
    "seed": 7,
}
TWEEDIE_POWER = 1.5
MAX_ROUNDS = 400
EARLY_STOPPING = 20
#: The quantile boosters get no early stopping: the validation cutoff calibrates them, so it
#: must not also choose their size.
QUANTILE_ROUNDS = 100
#: The quantile boosters learn from at most this many training rows (drawn at random): the conformal
#: step on the validation cutoff, not their size, is what makes the interval cover.
QUANTILE_ROWS = 150_000


# --- bad input ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class History:
    """What the orders observable at the training date say about the history."""

    first: datetime
    end: datetime
    """The training date: ``as_of``, or the lake's last event."""
    lake_days: int
    """Days from the first to the last order in the whole lake (what a horizon must fit in)."""
    orders: int
    repeat_customers: int
    zero_amounts: int

    @property
    def days(self) -> int:
        return (self.end - self.first).days


def check_history(lake: Path, horizon_days: int, as_of: datetime | None,
                  min_repeat: int = MIN_REPEAT_CUSTOMERS) -> History:
    """Refuse too little or malformed history in one line that says what is missing.

    Negative amounts are refused (the contract says amount ≥ 0: net a return into its
    order, or leave it out, before import); orders of amount 0 are kept — they count as
    orders (recency, frequency) and add no spend.
    """
    orders = read_table(lake, "orders", ["customer_id", "ordered_at", "amount"])
    if orders is None or orders.is_empty():
        raise CrmscoreError(f"{lake}: customer value needs the orders table, which is missing or empty")
    lake_first, lake_last = as_utc(orders["ordered_at"].min()), as_utc(orders["ordered_at"].max())
    end = as_utc(as_of) if as_of is not None else last_event(lake)
    orders = orders.filter(pl.col("ordered_at") < end) if as_of is not None else orders
    if orders.is_empty():
        raise CrmscoreError(f"orders: none before {end:%Y-%m-%d} (the lake's first is {lake_first:%Y-%m-%d})")
    negative = int((orders["amount"] < 0).sum())
    if negative:
        raise CrmscoreError(f"orders.amount: {negative} orders below 0 (rule: amount ≥ 0; net each return into "
                            "its order, or leave it out, before import)")
    zero = int((orders["amount"] == 0).sum())
    if zero:
        log.info("orders.amount: %d orders of amount 0 count as orders (recency, frequency) and add no spend", zero)
    first = as_utc(orders["ordered_at"].min())
    history = History(first=first, end=end, lake_days=(lake_last - lake_first).days, orders=orders.height,
                      zero_amounts=zero,
                      repeat_customers=int((orders.group_by("customer_id").len()["len"] >= 2).sum()))
    if horizon_days > history.lake_days:
        raise CrmscoreError(f"--horizon {horizon_days} days is longer than the order history: {history.lake_days} "
                            f"days ({lake_first:%Y-%m-%d} … {lake_last:%Y-%m-%d})")
    if history.repeat_customers < min_repeat:
        raise CrmscoreError(f"orders: need ≥ {min_repeat} customers with a repeat purchase (2+ orders) by "
                            f"{end:%Y-%m-%d}, found {history.repeat_customers}")
    return history


def fitting_cutoffs(lake: Path, window_days: int, history: History, as_of: datetime | None,
                    truth: pd.DataFrame | None) -> list[datetime]:
    """The training cutoffs of a ``window_days`` label: the world's truth cutoffs when it has them,
    else every 28 days back from the newest whose window fits; each with history before it and its
    window observed by the training date (the newest MAX_VALUE_CUTOFFS)."""
    if truth is not None:
        grid = sorted({as_utc(c) for c in truth["cutoff"]})
        cutoffs = [c for c in grid if c + timedelta(days=window_days) <= history.end]
    else:
        cutoffs = choose_cutoffs(lake, window_days, None, as_of)
    return [c for c in cutoffs if c >= history.first + timedelta(days=MIN_HISTORY_DAYS)][-MAX_VALUE_CUTOFFS:]


def value_cutoffs(lake: Path, horizon_days: int, history: History, as_of: datetime | None,
                  truth: pd.DataFrame | None) -> list[datetime]:
    """The training cutoffs of an H-day label, or a one-line error saying how much history is missing."""
    cutoffs = fitting_cutoffs(lake, horizon_days, history, as_of, truth)
    if len(cutoffs) < TIME_SPLIT_DATES:
        least = horizon_days + MIN_HISTORY_DAYS + (TIME_SPLIT_DATES - 1) * 28 + 7
        raise CrmscoreError(
            f"orders: need ≥ {TIME_SPLIT_DATES} cutoffs whose {horizon_days}-day window ends by "
            f"{history.end:%Y-%m-%d} (train, validation, holdout), found {len(cutoffs)}: the orders span "
            f"{history.days} days ({history.first:%Y-%m-%d} … {history.end:%Y-%m-%d}), a {horizon_days}-day "
            f"horizon needs about {least}")
    return cutoffs


def training_window(lake: Path, horizon_days: int, history: History, as_of: datetime | None,
                    truth: pd.DataFrame | None) -> tuple[int, list[datetime]]:
    """The label window and its cutoffs: H when H-day windows fit; otherwise (e.g. trained as of a
    date less than H after the first order) the longest window, in whole weeks of at least
    MIN_WINDOW_DAYS, with EXTRAPOLATION_CUTOFFS cutoffs — its predictions are then extended to H
    by the probabilistic peer (``peer_horizon_factor``)."""
    try:
        return horizon_days, value_cutoffs(lake, horizon_days, history, as_of, truth)
    except CrmscoreError as refused:
        if truth is not None:
            raise
        for window in range(horizon_days - 7, MIN_WINDOW_DAYS - 1, -7):
            cutoffs = fitting_cutoffs(lake, window, history, as_of, None)
            if len(cutoffs) >= EXTRAPOLATION_CUTOFFS:
                log.warning("too little history for %d-day labels by %s: training on %d-day windows (%d cutoffs) "
                            "and extending them to %d days by the BG/NBD + Gamma-Gamma peer", horizon_days,
                            f"{history.end:%Y-%m-%d}", window, len(cutoffs), horizon_days)
                return window, cutoffs
        raise CrmscoreError(f"{refused}; nor does a window of {MIN_WINDOW_DAYS}+ days give "
                            f"{EXTRAPOLATION_CUTOFFS} cutoffs to extend from") from None


def peer_summary(lake: Path, end: datetime) -> pl.DataFrame:
    """Per customer with an order before ``end``: the BG/NBD summary in days, as features.sql makes it —
    ``frequency`` (purchase days after the first), ``recency`` (last − first purchase day), ``t`` (the last
    day before ``end`` − the first) and ``monetary`` (mean amount of the repeat days with a positive amount;
    NaN without one)."""
    orders = read_table(lake, "orders", ["customer_id", "ordered_at", "amount"])
    if orders is None:
        raise CrmscoreError(f"{lake}: customer value needs the orders table")
    last_day = (end - timedelta(microseconds=1)).date()
    days = (
        orders.filter(pl.col("ordered_at") < end)
        .group_by("customer_id", pl.col("ordered_at").dt.date().alias("day"))
        .agg(pl.col("amount").sum())
        .sort("customer_id", "day")
        .group_by("customer_id", maintain_order=True)
        .agg(pl.len().alias("n"), pl.col("day").min().alias("first"), pl.col("day").max().alias("last"),
             # Repeat days of a positive amount make the mean; a day of amount 0 still counts as a purchase.
             pl.col("amount").slice(1).filter(pl.col("amount").slice(1) > 0).sum().alias("repeat_amount"),
             (pl.col("amount").slice(1) > 0).sum().alias("paid_repeat_days"))
    )
    return days.select(
        "customer_id",
        (pl.col("n") - 1).cast(pl.Float64).alias("frequency"),
        (pl.col("last") - pl.col("first")).dt.total_days().cast(pl.Float64).alias("recency"),
        (pl.lit(last_day, dtype=pl.Date) - pl.col("first")).dt.total_days().cast(pl.Float64).alias("t"),
        pl.when(pl.col("paid_repeat_days") > 0).then(pl.col("repeat_amount") / pl.col("paid_repeat_days"))
        .otherwise(float("nan")).alias("monetary"),
    )


def peer_expected_spend(lake: Path, end: datetime, horizons: tuple[int, ...]) -> tuple[pl.DataFrame, Any]:
    """The peer (BG/NBD + Gamma-Gamma by MAP on the orders before ``end``): each customer's expected
    spend over each horizon (columns ``spend_<days>``), and the fit."""
    from features.peer import PeerUnfit, fit_peer, predict_peer

    summary = peer_summary(lake, end)
    arrays = [summary[c].to_numpy() for c in ("frequency", "recency", "t", "monetary")]
    try:
        fit = fit_peer(*arrays)
    except PeerUnfit as why:
        raise CrmscoreError(f"orders: the BG/NBD + Gamma-Gamma peer does not fit at {end:%Y-%m-%d} ({why})") from None
    spend = {f"spend_{h}": predict_peer(fit, *arrays, horizon=h)[PEER_SPEND] for h in horizons}
    return summary.select("customer_id").with_columns(pl.Series(k, v) for k, v in spend.items()), fit


@dataclass(frozen=True)
class Extension:
    """How predictions of a shorter window are brought to H at the training date (see ``extend``)."""

    level: float
    factor: float
    peer_bias: float


def extend(ws: Workspace, window_days: int, horizon_days: int, end: datetime, valid: pd.DataFrame,
           y_valid: np.ndarray, best: Candidate, spec: ModelSpec, profile: str) -> Extension:
    """Level and horizon factor for a model of ``window_days`` labels trained as of ``end``.

    A model learned on windows after younger cutoffs over-predicts an ageing cohort (its trees cannot
    extrapolate tenure), and no H-day window is observed to correct it. The probabilistic peer can:
    BG/NBD's dropout process ages with the customers. So, with everything observable at ``end``:

    * ``peer_bias`` = actual spend ÷ the peer's expected spend over the window at the validation cutoff;
    * ``level`` makes the model's total over the window, for the customers signed up by ``end``,
      equal ``peer_bias`` × the peer's total for them (the model then only distributes it);
    * ``factor`` = the peer's total over H ÷ its total over the window, at ``end``.
    """
    from features.population import SignedUpCustomers

    key = spec.entity_key
    cutoff = as_utc(pd.Timestamp(valid[CUTOFF].iloc[0]).to_pydatetime())
    at_valid, _ = peer_expected_spend(ws.lake, cutoff, (window_days,))
    peer_valid = (valid[[key]].astype(str).merge(at_valid.to_pandas(), on=key, how="left")
                  [f"spend_{window_days}"].fillna(0.0).to_numpy())
    peer_bias = float(y_valid.sum() / peer_valid.sum())
    population = SignedUpCustomers().from_lake(ws.lake, end).with_columns(
        pl.lit(end).dt.cast_time_unit("us").alias(CUTOFF))
    ensure_snapshots(ws, [end])
    at_end = labelled_frame(ws, spec.feature_service, population, profile)
    raw = float(best.mean(prepare_features(at_end, spec)).sum())
    peer_end, _ = peer_expected_spend(ws.lake, end, (window_days, horizon_days))
    peer_end = at_end[[key]].astype(str).merge(peer_end.to_pandas(), on=key, how="left").fillna(0.0)
    over_w, over_h = float(peer_end[f"spend_{window_days}"].sum()), float(peer_end[f"spend_{horizon_days}"].sum())
    extension = Extension(level=peer_bias * over_w / raw, factor=over_h / over_w, peer_bias=peer_bias)
    log.info("extending %d-day predictions to %d days at %s: the peer's spend over the window was %.3f × short "
             "at the validation cutoff; level %.3f, peer's H/window %.3f", window_days, horizon_days,
             f"{end:%Y-%m-%d}", peer_bias, extension.level, extension.factor)
    return extension


# --- the oracle and the comparators -------------------------------------------------------------

def read_truth(lake: Path, horizon_days: int) -> pd.DataFrame | None:
    """The world's value truth at horizon H (cutoff, customer_id, expected_spend, ...), or None."""
    table = read_value_truth(lake)
    if table is None:
        return None
    table = table.filter(pl.col(HORIZON_DAYS) == horizon_days)
    if table.is_empty():
        log.info("the world's value truth is not over %d days: no oracle", horizon_days)
        return None
    frame = table.to_pandas()
    frame["cutoff"] = pd.to_datetime(frame["cutoff"], utc=True)
    return frame


def oracle_spend(frame: pd.DataFrame, truth: pd.DataFrame | None, key: str) -> np.ndarray | None:
    if truth is None:
        return None
    joined = frame[[key, CUTOFF]].merge(
        truth[["cutoff", key, EXPECTED_SPEND]].rename(columns={"cutoff": CUTOFF}), on=[key, CUTOFF], how="left")
    missing = int(joined[EXPECTED_SPEND].isna().sum())
    if missing:
        log.warning("no oracle: %d of %d rows have no value truth", missing, len(joined))
        return None
    return joined[EXPECTED_SPEND].to_numpy(dtype=float)


def spend_365(frame: pd.DataFrame) -> np.ndarray:
    """Last year's spend (the run-rate column; 0 when missing)."""
    return column(frame, SPEND_365).fillna(0.0).to_numpy(dtype=float)


def past_spend_rule(frame: pd.DataFrame, horizon_days: int) -> np.ndarray:
    """What a CRM team predicts without a model: last year's spend, scaled to the horizon."""
    return spend_365(frame) * horizon_days / RUN_RATE_DAYS


def peer_spend(frame: pd.DataFrame, horizon_days: int) -> np.ndarray | None:
    """The probabilistic peer's expected spend, scaled from its horizon to H (None without the feature)."""
    if PEER_SPEND not in frame.columns:
        return None
    return column(frame, PEER_SPEND).fillna(0.0).to_numpy(dtype=float) * horizon_days / PEER_HORIZON_DAYS


# --- fitting ------------------------------------------------------------------------------------

@dataclass
class Candidate:
    kind: Kind
    boosters: dict[str, lgb.Booster]

    def mean(self, x: pd.DataFrame) -> np.ndarray:
        if self.kind == "tweedie":
            return np.asarray(self.boosters["clv"].predict(x), dtype=float)
        return (np.asarray(self.boosters["buy"].predict(x), dtype=float)
                * np.asarray(self.boosters["spend"].predict(x), dtype=float))


def _fit(params: dict[str, Any], x: pd.DataFrame, y: np.ndarray, x_valid: pd.DataFrame | None,
         y_valid: np.ndarray | None, categorical: list[str], rounds: int = MAX_ROUNDS) -> lgb.Booster:
    import lightgbm as lgb

    train_set = lgb.Dataset(x, y, categorical_feature=categorical, free_raw_data=False)
    if x_valid is None:
        return lgb.train({**BASE_PARAMS, **params}, train_set, num_boost_round=rounds)
    valid_set = lgb.Dataset(x_valid, y_valid, reference=train_set)
    return lgb.train({**BASE_PARAMS, **params}, train_set, num_boost_round=rounds, valid_sets=[valid_set],
                     valid_names=["valid"],
                     callbacks=[lgb.early_stopping(EARLY_STOPPING, first_metric_only=True, verbose=False)])


def fit_candidates(x_train: pd.DataFrame, y_train: np.ndarray, x_valid: pd.DataFrame, y_valid: np.ndarray,
                   categorical: list[str]) -> list[Candidate]:
    tweedie = _fit({"objective": "tweedie", "tweedie_variance_power": TWEEDIE_POWER, "metric": "tweedie"},
                   x_train, y_train, x_valid, y_valid, categorical)
    bought, bought_valid = y_train > 0, y_valid > 0
    buy = _fit({"objective": "binary", "metric": "binary_logloss"}, x_train, bought.astype(int),
               x_valid, bought_valid.astype(int), categorical)
    spend = _fit({"objective": "gamma", "metric": "gamma"}, x_train[bought], y_train[bought],
                 x_valid[bought_valid], y_valid[bought_valid], categorical)
    return [Candidate("tweedie", {"clv": tweedie}), Candidate("two_part", {"buy": buy, "spend": spend})]


def choose(candidates: list[Candidate], x_valid: pd.DataFrame, y_valid: np.ndarray) -> tuple[Candidate, dict]:
    """The candidate with the higher validation Gini; within GINI_TIE, the smaller |total error|."""
    scores = {c.kind: {"normalized_gini": normalized_gini(y_valid, c.mean(x_valid)),
                       "total_error": total_error(y_valid, c.mean(x_valid))} for c in candidates}

    def key(c: Candidate) -> tuple[float, float]:
        s = scores[c.kind]
        return (round(s["normalized_gini"] / GINI_TIE), -abs(s["total_error"]))

    best = max(candidates, key=key)
    log.info("validation: %s; keeping %s", ", ".join(
        f"{k} Gini {v['normalized_gini']:.4f} total {v['total_error']:+.3f}" for k, v in scores.items()), best.kind)
    return best, scores


def fit_interval(x_train: pd.DataFrame, y_train: np.ndarray, x_valid: pd.DataFrame, y_valid: np.ndarray,
                 categorical: list[str], level: float) -> tuple[dict[str, lgb.Booster], float]:
    """Conformalized quantile regression: the two quantile boosters and the validation correction."""
    alpha = (1 - level) / 2
    if len(x_train) > QUANTILE_ROWS:
        rows = np.sort(np.random.default_rng(7).choice(len(x_train), QUANTILE_ROWS, replace=False))
        x_train, y_train = x_train.iloc[rows], y_train[rows]
    low = _fit({"objective": "quantile", "alpha": alpha}, x_train, y_train, None, None, categorical,
               rounds=QUANTILE_ROUNDS)
    high = _fit({"objective": "quantile", "alpha": 1 - alpha}, x_train, y_train, None, None, categorical,
                rounds=QUANTILE_ROUNDS)
    scores = np.maximum(low.predict(x_valid) - y_valid, y_valid - high.predict(x_valid))
    n = len(scores)
    rank = min(int(np.ceil((n + 1) * level)), n)
    return {"low": low, "high": high}, float(np.sort(scores)[rank - 1])


# --- the gate -----------------------------------------------------------------------------------

def gate(client: MlflowClient, spec: ValueSpec, holdout: pd.DataFrame, y: np.ndarray,
         new: dict[str, float]) -> tuple[bool, str]:
    """Promote when there is no champion, or the challenger has the higher Gini on the same holdout
    rows without a worse total (beyond TOTAL_TOLERANCE)."""
    from training.registry import CHAMPION, version_by_alias

    name = spec.model.model_name
    current = version_by_alias(client, name, CHAMPION)
    if current is None:
        return True, (f"no champion yet (normalized Gini {new['normalized_gini']:.4f}, "
                      f"total error {new['total_error']:+.3f})")
    try:
        champion = load_value_model(name, version=str(current.version), client=client)
    except CrmscoreError as exc:
        return False, f"champion v{current.version} cannot be loaded ({exc}); promote by hand"
    if (champion.settings.horizon_days, champion.spec.window_days) != (spec.settings.horizon_days, spec.window_days):
        learned = f", learned on {champion.spec.window_days}-day windows" if champion.spec.window_days else ""
        return False, (f"champion v{current.version} predicts another target ({champion.settings.horizon_days} "
                       f"days{learned}); promote by hand if this one should replace it")
    try:
        # On the holdout's label window, as the challenger was judged.
        p = champion.predict(holdout)["clv"].to_numpy() / champion.spec.horizon_factor
    except CrmscoreError as exc:
        return False, f"champion v{current.version} cannot score this holdout ({exc}); promote by hand"
    champ_gini, champ_total = normalized_gini(y, p), total_error(y, p)
    gini, total = new["normalized_gini"], new["total_error"]
    facts = (f"normalized Gini {gini:.4f} vs champion v{current.version} {champ_gini:.4f}, "
             f"total error {total:+.3f} vs {champ_total:+.3f} on the same {len(y)} holdout rows")
    if gini > champ_gini and abs(total) <= abs(champ_total) + TOTAL_TOLERANCE:
        return True, f"beats the champion: {facts}"
    return False, f"does not beat the champion: {facts}"


# --- the job ------------------------------------------------------------------------------------

def train_value(ws: Workspace, window_days: int = VALUE.window_days, as_of: datetime | None = None,
                profile: str = "local", register: bool = True, settings: ValueSettings | None = None,
                min_repeat_customers: int = MIN_REPEAT_CUSTOMERS) -> TrainResult:
    """Train, evaluate, register and gate the customer-value model of a workspace (``window_days``
    is the horizon H; with ``as_of``, only what was observable then)."""
    import mlflow

    from training import inputs
    from training.drift_reference import ARTIFACT as DRIFT_REFERENCE
    from training.drift_reference import DriftReference
    from training.registry import (
        Registration,
        configure_mlflow,
        ensure_experiment,
        git_commit,
        register_and_gate,
    )

    horizon = window_days
    settings = (settings or ValueSettings()).model_copy(update={"horizon_days": horizon})
    timings: dict[str, float] = {}
    started = time.perf_counter()
    history = check_history(ws.lake, horizon, as_of, min_repeat_customers)
    truth = read_truth(ws.lake, horizon)
    window, cutoffs = training_window(ws.lake, horizon, history, as_of, truth)
    ensure_snapshots(ws, cutoffs)
    labels = value_labels(ws.lake, cutoffs, window_days=window)
    frame = labelled_frame(ws, VALUE.feature_service, labels, profile)
    key = VALUE.key_column
    frame = frame.sort_values(CUTOFF, kind="stable").reset_index(drop=True)
    # The truth is over H; a model of shorter windows is judged on them, without the oracle.
    oracle = oracle_spend(frame, truth, key) if window == horizon else None
    timings["frame"] = time.perf_counter() - started

    train, valid, holdout = split_by_time(frame)
    for fold, rows in (("validation", valid), ("holdout", holdout)):
        if float(rows[LABEL].sum()) <= 0:
            raise CrmscoreError(f"orders: the {fold} cutoff {pd.Timestamp(rows[CUTOFF].iloc[0]):%Y-%m-%d} has no "
                                f"spend in the {window} days after it ({len(rows)} customers)")
    features = model_features(frame, key)
    categorical = [c for c in features if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c])]
    model_spec = ModelSpec(task=VALUE.key, model_name=VALUE.model_name, feature_service=VALUE.feature_service,
                           entity_key=key, features=features, categories=fit_categories(train, categorical),
                           label_window_days=window)
    x_train, x_valid, x_hold = (prepare_features(f, model_spec) for f in (train, valid, holdout))
    y_train, y_valid, y_hold = (f[LABEL].to_numpy(dtype=float) for f in (train, valid, holdout))

    client = configure_mlflow()
    ensure_experiment(client, VALUE.model_name)
    with mlflow.start_run(run_name=f"{VALUE.key}-{time.strftime('%Y%m%d-%H%M%S')}",
                          nested=mlflow.active_run() is not None) as run:
        fit_started = time.perf_counter()
        best, candidates = choose(fit_candidates(x_train, y_train, x_valid, y_valid, categorical), x_valid, y_valid)
        valid_mean = best.mean(x_valid)
        scale = float(y_valid.sum() / valid_mean.sum()) if valid_mean.sum() > 0 else 1.0
        quantiles, conformal = fit_interval(x_train, y_train, x_valid, y_valid, categorical, settings.interval_level)
        timings["fit"] = time.perf_counter() - fit_started

        boosters = {**best.boosters, **quantiles}
        factor = 1.0
        if window < horizon:
            extension = extend(ws, window, horizon, history.end, valid, y_valid, best, model_spec, profile)
            scale, factor = extension.level, extension.factor
        thresholds = fit_thresholds(scale * factor * best.mean(x_hold), settings)
        spec = ValueSpec(model=model_spec, settings=settings, kind=best.kind, scale=scale, conformal=conformal,
                         thresholds=thresholds, window_days=None if window == horizon else window,
                         horizon_factor=factor)
        model = ValueModel(name=VALUE.model_name, version="", run_id=run.info.run_id, spec=spec, boosters=boosters)
        predicted = model.predict(holdout)
        # Judged on the window the labels cover (H itself unless extended).
        on_window = predicted[["clv", "clv_low", "clv_high"]].to_numpy() / factor
        metrics = evaluate_value(y_hold, on_window[:, 0], on_window[:, 1], on_window[:, 2])
        comparators = {"rule": past_spend_rule(holdout, window)}
        peer = peer_spend(holdout, window)
        if peer is not None:
            comparators["peer"] = peer
        if oracle is not None:
            comparators["oracle"] = oracle[holdout.index]
        others = {name: evaluate_value(y_hold, p) for name, p in comparators.items()}
        tiers = tier_summary(predicted, y_hold)

        log_started = time.perf_counter()
        mlflow.log_params({"kind": best.kind, "horizon_days": horizon, "label_window_days": window,
                           "horizon_factor": factor, "scale": scale, "conformal": conformal,
                           "tweedie_variance_power": TWEEDIE_POWER, "quantile_rounds": QUANTILE_ROUNDS,
                           **{f"setting.{k}": v for k, v in settings.model_dump().items()},
                           **{f"best_iteration.{r}": b.best_iteration for r, b in boosters.items()},
                           "train_rows": len(train), "valid_rows": len(valid), "holdout_rows": len(holdout),
                           "holdout_cutoff": str(holdout[CUTOFF].iloc[0])})
        for context, fold in (("training", train), ("validation", valid), ("holdout", holdout)):
            inputs.log_frame(fold, name=VALUE.feature_service, context=context, source=ws.feature_tables,
                             digest=fingerprint(fold), target=LABEL, cutoff_column=CUTOFF)
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        for name, values in others.items():
            mlflow.log_metrics({f"{name}.{k}": v for k, v in values.items() if np.isfinite(v)})
        for kind, values in candidates.items():
            mlflow.log_metrics({f"validation.{kind}.{k}": v for k, v in values.items()})
        mlflow.set_tags({
            "feature_service": VALUE.feature_service, "data_fingerprint": fingerprint(frame),
            "git_commit": git_commit(), "baseline": "past-spend rule (last 365 days' spend × H/365)",
            "split": "time", "lake": str(ws.lake), **as_of_tag(as_of),
        })
        _log_artifacts(y_hold, predicted, comparators, metrics, others, candidates, tiers, spec, model)
        reference = DriftReference.of_holdout(holdout, features, set(categorical), predicted["clv"].to_numpy(),
                                              holdout[CUTOFF].iloc[0])
        mlflow.log_dict(reference.model_dump(mode="json"), DRIFT_REFERENCE)
        info = log_model(spec, boosters, holdout.head(5), predicted.head(5))

        def champion_gate() -> tuple[bool, str]:
            timings["log_and_register"] = time.perf_counter() - log_started
            return gate(client, spec, holdout, y_hold, metrics)

        rule = others["rule"]
        description = (f"normalized Gini {metrics['normalized_gini']:.4f} (rule {rule['normalized_gini']:.4f}), "
                       f"decile MAPE {metrics['decile_mape']:.3f}, total error {metrics['total_error']:+.3f}, "
                       f"{settings.interval_level:.0%} interval coverage {metrics['coverage']:.3f} on "
                       f"{len(holdout):,} holdout customers ({inputs.cutoff_span(holdout[CUTOFF])}), H={horizon} days"
                       + ("" if window == horizon else f" (learned on {window}-day windows, × {factor:.3f} by the peer)"))
        registration = (register_and_gate(client, VALUE.model_name, info.model_uri,
                                          ("normalized_gini", metrics["normalized_gini"]), champion_gate,
                                          description=description) if register else
                        Registration(version="", promoted=False, reason="not registered (backtest fold)"))
        timings["total_in_run"] = time.perf_counter() - fit_started
        mlflow.log_metrics({f"seconds.{k}": v for k, v in timings.items()})

    return TrainResult(
        model=VALUE.model_name, version=registration.version, run_id=run.info.run_id,
        alias=registration.alias if register else "",
        metrics={"overall": metrics, "kind": best.kind, "validation": candidates, "tiers": tiers,
                 **({"peer": others["peer"]} if "peer" in others else {})},
        baseline={"overall": others["rule"]}, oracle={"overall": others["oracle"]} if "oracle" in others else None,
        promoted=registration.promoted, reason=registration.reason, seconds=timings,
    )


def tier_summary(predicted: pd.DataFrame, actual: np.ndarray) -> dict[str, dict[str, float]]:
    """Per tier on the holdout: share of customers, share of predicted and of actual spend."""
    total_p, total_a = float(predicted["clv"].sum()) or 1.0, float(actual.sum()) or 1.0
    out = {}
    for tier in TIERS:
        mask = (predicted["tier"] == tier).to_numpy()
        out[tier] = {"share": float(mask.mean()), "predicted_share": float(predicted["clv"][mask].sum() / total_p),
                     "actual_share": float(actual[mask].sum() / total_a)}
    return out


def log_model(spec: ValueSpec, boosters: dict[str, lgb.Booster], example: pd.DataFrame,
              prediction: pd.DataFrame) -> Any:
    """Log the pyfunc (model from code) with LightGBM text models and value.json only."""
    import mlflow
    from mlflow.models import infer_signature

    with tempfile.TemporaryDirectory() as tmp:
        paths = save_value_files(Path(tmp), spec, boosters)
        example = example[spec.model.features].reset_index(drop=True)
        return mlflow.pyfunc.log_model(
            name="model", python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={p.name: str(p) for p in paths},
            signature=infer_signature(example, prediction[list(PREDICTION_COLUMNS)].reset_index(drop=True)),
            # Stated, so MLflow does not start a subprocess to infer them.
            pip_requirements=pinned_requirements("mlflow", "lightgbm", "numpy", "pandas", "pydantic"),
        )


def _log_artifacts(y: np.ndarray, predicted: pd.DataFrame, comparators: dict[str, np.ndarray], metrics: dict,
                   others: dict[str, dict], candidates: dict, tiers: dict, spec: ValueSpec, model: ValueModel) -> None:
    import matplotlib.pyplot as plt
    import mlflow

    from training.plots import importance
    from training.value import plots

    clv = predicted["clv"].to_numpy()
    curves = {"model": clv, **comparators}
    figures = {
        "plots/deciles.png": plots.deciles(y, curves),
        "plots/gain.png": plots.gain(y, curves),
        "plots/interval_coverage.png": plots.interval_coverage(
            y, clv, predicted["clv_low"].to_numpy(), predicted["clv_high"].to_numpy(), spec.settings.interval_level),
        "plots/feature_importance.png": importance(next(iter(model.boosters.values()))),
    }
    for path, fig in figures.items():
        mlflow.log_figure(fig, path)
        plt.close(fig)
    mlflow.log_dict({"model": metrics, **others, "validation": candidates, "tiers": tiers}, "metrics.json")
    mlflow.log_text(model_card(spec, metrics, others, candidates, tiers), "model_card.md")


CARD_METRICS = ("normalized_gini", "spearman", "decile_mape", "total_error", "top20_capture", "coverage",
                "interval_width", "mean_actual", "mean_predicted")


def model_card(spec: ValueSpec, metrics: dict, others: dict[str, dict], candidates: dict, tiers: dict) -> str:
    """A short markdown evaluation report: the model beside the rule, the peer and the oracle."""
    s, names = spec.settings, list(others)
    lines = [
        f"# {spec.model.model_name}: evaluation report",
        "",
        f"- task: {spec.model.task}, predicted spend over the next {s.horizon_days} days",
        f"- features: feature service `{spec.model.feature_service}` ({len(spec.model.features)} features)",
        f"- holdout: the newest cutoff, {int(metrics['rows'])} customers",
        "- objective kept: " + spec.kind + " (validation: " + ", ".join(
            f"{k} Gini {v['normalized_gini']:.4f} / total {v['total_error']:+.3f}" for k, v in candidates.items())
        + f"); scale {spec.scale:.4f} to the validation total",
        f"- interval: conformalized quantile regression at {s.interval_level:.0%}, widened by {spec.conformal:.2f}",
        "",
        "| metric | model | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for m in CARD_METRICS:
        row = [metrics.get(m, float("nan"))] + [others[n].get(m, float("nan")) for n in names]
        lines.append(f"| {m} | " + " | ".join("–" if not np.isfinite(v) else f"{v:.4f}" for v in row) + " |")
    lines += ["", "## Tiers on the holdout", "",
              (f"D: expected margin < 0 (gross margin {s.gross_margin:.0%} of the predicted spend minus "
               f"{s.ticket_cost:g} per ticket and {s.complaint_cost:g} per complaint at last year's rate); "
               f"A: predicted value ≥ {spec.thresholds.a_threshold:.2f} (the top customers making "
               f"{s.top_share:.0%} of predicted value); B: ≥ {s.growth_ratio:g} × the run-rate and ≥ the median "
               f"{spec.thresholds.median_clv:.2f}; C: the rest."), "",
              "| tier | customers | predicted value | actual value |", "|---|---|---|---|"]
    for tier, v in tiers.items():
        lines.append(f"| {tier} | {v['share']:.1%} | {v['predicted_share']:.1%} | {v['actual_share']:.1%} |")
    return "\n".join(lines) + "\n"

