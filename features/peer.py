"""The probabilistic peer: BG/NBD + Gamma-Gamma fitted by MAP with PyMC-Marketing.

Per snapshot, on the summary statistics of the orders strictly before it
(``features.sql.value_sql``: ``peer_frequency`` repeat purchase days, ``peer_recency``
and ``peer_T`` in days, ``peer_monetary`` the mean amount of the repeat days):

* BG/NBD (Fader, Hardie & Lee 2005) on (frequency, recency, T) of every customer with a
  purchase: P(alive) and the expected purchase days in the next ``PEER_HORIZON_DAYS``;
* Gamma-Gamma (Fader & Hardie 2013) on (frequency, monetary) of the repeat buyers: the
  expected amount of a future purchase (the population mean for a one-time buyer);
* expected spend = expected purchases x expected amount.

Both are fitted by maximum a posteriori with flat priors on the positive parameters, so
the MAP is the maximum-likelihood estimate (optimized as ``pymc.find_MAP`` does, without
the Jacobian of the log transform): on CDNOW it reproduces the published estimates
(tests/test_peer.py). The PyMC models are compiled once per process and refitted per
snapshot by swapping their data (``_Compiled``); predictions are PyMC-Marketing's own
closed forms at the fitted point. The fit only sees one row per customer, so it is fast at
any number of orders.

A snapshot without enough repeat buyers to fit (``MIN_REPEAT_CUSTOMERS``), or whose fit
does not converge to finite parameters, gets null peer columns and a warning that says
what was missing; the build goes on.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from features.catalog import EVENT_TIMESTAMP, JOIN_KEYS, PEER_FEATURES, PEER_HORIZON_DAYS
from features.history import in_sample

log = logging.getLogger(__name__)

#: Fewer customers with a repeat purchase than this: no fit (BG/NBD's a, b and the
#: Gamma-Gamma's p, q, v are not identified on a handful of repeat buyers).
MIN_REPEAT_CUSTOMERS = 100
#: A snapshot with more customers fits its parameters on a deterministic sample of about
#: this many (``features.history.in_sample``) and predicts for everyone: seven parameters
#: are pinned down by 50k customers to about 0.5%, and the fit's cost grows with its rows.
FIT_CUSTOMERS = 50_000
#: Input columns (``features.sql.PEER_SUMMARY``) and output columns.
FREQUENCY, RECENCY, T, MONETARY = "peer_frequency", "peer_recency", "peer_T", "peer_monetary"
P_ALIVE, EXPECTED_ORDERS, EXPECTED_SPEND = PEER_FEATURES
#: Libraries whose warnings and log lines would repeat once per snapshot.
_NOISY_LOGGERS = ("pymc", "pytensor", "arviz", "arviz.preview", "pymc_marketing", "pymc_extras")


class PeerUnfit(Exception):
    """The peer cannot be fitted on these data (the message says why)."""


@dataclass(frozen=True)
class PeerParams:
    """Fitted parameters (time in the unit of recency and T)."""

    r: float
    alpha: float
    a: float
    b: float
    p: float
    q: float
    v: float


@dataclass
class PeerFit:
    params: PeerParams
    customers: int
    repeat_customers: int
    seconds: float
    beta_geo: Any  # pymc_marketing.clv.BetaGeoModel
    gamma_gamma: Any  # pymc_marketing.clv.GammaGammaModel


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence PyMC / PyTensor / ArviZ warnings and info logs for the duration."""
    saved = {name: logging.getLogger(name).level for name in _NOISY_LOGGERS}
    try:
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def _pandas(frequency: np.ndarray, recency: np.ndarray, t: np.ndarray, monetary: np.ndarray | None = None) -> Any:
    import pandas as pd

    cols = {"customer_id": np.arange(len(frequency)), "frequency": frequency, "recency": recency, "T": t}
    if monetary is not None:
        cols["monetary_value"] = monetary
    return pd.DataFrame(cols)


def _value(model: Any, name: str) -> float:
    return float(np.asarray(model.fit_result[name]).ravel()[0])


class _Compiled:
    """A PyMC model whose data are ``pm.Data`` containers, with its log-posterior and
    gradient compiled once per process: ``set`` swaps the data, ``map`` optimizes."""

    def __init__(self, model: Any) -> None:
        from pymc.blocking import DictToArrayBijection

        self.model = model
        start = model.initial_point()
        names = [v.name for v in model.value_vars]
        self.start = DictToArrayBijection.map({k: start[k] for k in names})
        # What pymc.find_MAP optimizes: the log-posterior without the Jacobian of the
        # log transform, so with flat priors the optimum is the maximum-likelihood one.
        self.logp = DictToArrayBijection.mapf(model.compile_logp(jacobian=False), start)
        self.dlogp = DictToArrayBijection.mapf(model.compile_dlogp(jacobian=False), start)

    def map(self, **data: np.ndarray) -> dict[str, float]:
        import pymc as pm
        from pymc.blocking import DictToArrayBijection, RaveledVars
        from scipy.optimize import minimize

        pm.set_data(data, model=self.model)
        point = self.start

        def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
            raveled = RaveledVars(x, point.point_map_info)
            return -float(self.logp(raveled)), -np.asarray(self.dlogp(raveled), dtype=float)

        result = minimize(objective, point.data, jac=True, method="L-BFGS-B")
        values = DictToArrayBijection.rmap(RaveledVars(result.x, point.point_map_info))
        # HalfFlat parameters are optimized on the log scale (value var ``<name>_log__``).
        return {k.removesuffix("_log__"): float(np.exp(v)) for k, v in values.items()}


_MODELS: dict[str, _Compiled] = {}


def _beta_geo() -> _Compiled:
    """BG/NBD: PyMC-Marketing's ``BetaGeoNBD`` likelihood (the one ``BetaGeoModel`` builds)
    under flat priors on r, alpha, a, b."""
    if "bg" not in _MODELS:
        with _quiet():
            import pymc as pm
            from pymc_marketing.clv.distributions import BetaGeoNBD

            with pm.Model() as model:
                t = pm.Data("T", np.ones(1))
                observed = pm.Data("recency_frequency", np.zeros((1, 2)))
                params = {k: pm.HalfFlat(k) for k in ("r", "alpha", "a", "b")}
                BetaGeoNBD("likelihood", T=t, observed=observed, **params)
            _MODELS["bg"] = _Compiled(model)
    return _MODELS["bg"]


def _gamma_gamma() -> _Compiled:
    """Gamma-Gamma: the likelihood of ``GammaGammaModel`` (Fader & Hardie 2013, eq. 1a, the
    mean spend z of x repeat purchases) under flat priors on p, q, v."""
    if "gg" not in _MODELS:
        with _quiet():
            import pymc as pm
            import pytensor.tensor as pt

            with pm.Model() as model:
                x = pm.Data("frequency", np.ones(1))
                z = pm.Data("monetary_value", np.ones(1))
                p, q, v = (pm.HalfFlat(k) for k in ("p", "q", "v"))
                pm.Potential(
                    "likelihood",
                    pt.gammaln(p * x + q) - pt.gammaln(p * x) - pt.gammaln(q) + q * pt.log(v)
                    + (p * x - 1) * pt.log(z) + (p * x) * pt.log(x) - (p * x + q) * pt.log(x * z + v),
                )
            _MODELS["gg"] = _Compiled(model)
    return _MODELS["gg"]


def _fitted(model_class: Any, params: dict[str, float]) -> Any:
    """A PyMC-Marketing model object holding ``params`` as its (one-draw) fit result, so its
    own prediction methods apply. Its graph is built on a one-row frame: predictions get
    their data explicitly."""
    import arviz as az
    import pandas as pd
    from pymc_extras.prior import Prior

    names = list(params)
    one = pd.DataFrame({"customer_id": [0], "frequency": [1.0], "recency": [1.0], "T": [2.0],
                        "monetary_value": [1.0]})
    model = model_class(model_config={k: Prior("HalfFlat") for k in names})
    model.build_model(one)
    model.idata = az.from_dict(posterior={k: np.array([[v]]) for k, v in params.items()})
    return model


def fit_peer(
    frequency: np.ndarray, recency: np.ndarray, t: np.ndarray, monetary: np.ndarray
) -> PeerFit:
    """Fit BG/NBD on every customer and Gamma-Gamma on the repeat buyers with a positive
    mean amount, by MAP with flat priors (= maximum likelihood). Arrays are aligned, one
    entry per customer with a purchase; ``monetary`` may be NaN where ``frequency`` is 0.
    Raises ``PeerUnfit`` on degenerate data.

    Same optimum as ``BetaGeoModel(...).fit(method="map")`` and
    ``GammaGammaModel(...).fit(method="map")`` with HalfFlat priors (tests/test_peer.py
    checks it), but the models are compiled once per process instead of once per fit:
    that cost 2-4 s of CPU per snapshot, and a build fits one peer per snapshot.
    """
    frequency = np.asarray(frequency, dtype=float)
    recency, t = np.asarray(recency, dtype=float), np.asarray(t, dtype=float)
    monetary = np.asarray(monetary, dtype=float)
    repeat = (frequency > 0) & np.isfinite(monetary) & (monetary > 0)
    if int(repeat.sum()) < MIN_REPEAT_CUSTOMERS:
        raise PeerUnfit(
            f"{int(repeat.sum())} customers with a repeat purchase of a positive amount, "
            f"fewer than the {MIN_REPEAT_CUSTOMERS} the BG/NBD + Gamma-Gamma fit needs"
        )
    started = time.perf_counter()
    with _quiet():
        from pymc_marketing.clv import BetaGeoModel, GammaGammaModel

        bg = _beta_geo().map(T=t, recency_frequency=np.stack((recency, frequency), axis=1))
        gg = _gamma_gamma().map(frequency=frequency[repeat], monetary_value=monetary[repeat])
    params = PeerParams(**bg, **gg)
    bad = [k for k, x in vars(params).items() if not (np.isfinite(x) and x > 0)]
    if bad:
        raise PeerUnfit(f"the MAP fit did not converge to finite positive parameters ({', '.join(bad)})")
    if params.q <= 1:
        # The Gamma-Gamma mean amount p v / (q - 1) only exists for q > 1.
        raise PeerUnfit(f"the Gamma-Gamma fit has q = {params.q:.3g} <= 1 (no finite mean amount)")
    with _quiet():
        beta_geo, gamma_gamma = _fitted(BetaGeoModel, bg), _fitted(GammaGammaModel, gg)
    return PeerFit(
        params=params,
        customers=len(frequency),
        repeat_customers=int(repeat.sum()),
        seconds=time.perf_counter() - started,
        beta_geo=beta_geo,
        gamma_gamma=gamma_gamma,
    )


def predict_peer(
    fit: PeerFit,
    frequency: np.ndarray,
    recency: np.ndarray,
    t: np.ndarray,
    monetary: np.ndarray,
    horizon: float = PEER_HORIZON_DAYS,
) -> dict[str, np.ndarray]:
    """P(alive), expected purchases over ``horizon`` and expected spend over it, per customer
    (PyMC-Marketing's closed forms at the MAP point; arrays as ``fit_peer`` takes them)."""
    frequency = np.asarray(frequency, dtype=float)
    # A one-time buyer's amount does not enter the Gamma-Gamma mean (weight 0): the
    # population mean. A repeat buyer without a positive amount is treated the same way.
    monetary = np.asarray(monetary, dtype=float)
    usable = (frequency > 0) & np.isfinite(monetary) & (monetary > 0)
    data = _pandas(np.where(usable, frequency, 0.0), recency, t, np.where(usable, monetary, 0.0))
    bg_data = _pandas(frequency, recency, t)
    with _quiet():
        alive = fit.beta_geo.expected_probability_alive(bg_data)
        orders = fit.beta_geo.expected_purchases(bg_data, future_t=horizon)
        amount = fit.gamma_gamma.expected_customer_spend(data)
    orders_ = np.asarray(orders).reshape(-1)
    return {
        P_ALIVE: np.asarray(alive).reshape(-1),
        EXPECTED_ORDERS: orders_,
        EXPECTED_SPEND: orders_ * np.asarray(amount).reshape(-1),
    }


def peer_features(
    frame: pl.DataFrame, by: str = EVENT_TIMESTAMP, horizon: float = PEER_HORIZON_DAYS,
    key: str = JOIN_KEYS["customer"],
) -> pl.DataFrame:
    """``frame`` (rows of several snapshots ``by``, with the summary columns) with the peer
    columns added, one fit per snapshot (on a sample of ``FIT_CUSTOMERS`` of a larger one),
    predicted for every customer; the summary columns are dropped. Row order kept.

    Customers without a purchase (null ``peer_frequency``) get nulls; so does every row of
    a snapshot the peer cannot be fitted on, with one warning naming those snapshots and why.
    """
    n = frame.height
    out = {name: np.full(n, np.nan) for name in PEER_FEATURES}
    index = frame.with_row_index("_row").filter(pl.col(FREQUENCY).is_not_null())
    unfit: list[tuple[Any, PeerUnfit]] = []
    for (snapshot,), part in index.sort(by, maintain_order=True).group_by([by], maintain_order=True):
        arrays = [part[c].cast(pl.Float64).to_numpy() for c in (FREQUENCY, RECENCY, T, MONETARY)]
        sample = in_sample(part[key], FIT_CUSTOMERS / part.height) if part.height > FIT_CUSTOMERS else slice(None)
        try:
            # Every snapshot from the model's initial point: starting from the snapshot
            # before (tried) carried an early, degenerate fit (a, b -> 1e-316 before any
            # dropout) into every later one on CDNOW, and its churn AUC fell by 0.025.
            fit = fit_peer(*[a[sample] for a in arrays])
        except PeerUnfit as why:
            unfit.append((snapshot, why))
            continue
        predicted = predict_peer(fit, *arrays, horizon=horizon)
        bad = int((~np.isfinite(predicted[EXPECTED_ORDERS])).sum())
        if bad:
            # E.g. data without dropout: a, b run off to huge values and the Gaussian
            # hypergeometric term of the expectation overflows. Left null, said once.
            log.warning("peer at %s: expected orders not finite for %d of %d customers (a=%.3g, b=%.3g); "
                        "left null", _label(snapshot), bad, fit.customers, fit.params.a, fit.params.b)
        rows = part["_row"].to_numpy()
        for name in PEER_FEATURES:
            out[name][rows] = predicted[name]
        log.info(
            "peer at %s: fitted on %d of %d customers (%d repeat), r=%.3g alpha=%.3g a=%.3g b=%.3g p=%.3g q=%.3g "
            "v=%.3g in %.1fs", _label(snapshot), fit.customers, part.height, fit.repeat_customers,
            *vars(fit.params).values(), fit.seconds,
        )
    if unfit:
        # One line for the build, not one per snapshot: the snapshots and the newest reason.
        when = ", ".join(_label(t) for t, _ in unfit[:3]) + (f" ... {_label(unfit[-1][0])}" if len(unfit) > 3 else "")
        log.warning("peer features are null at %d snapshot(s) (%s): %s", len(unfit), when, unfit[-1][1])
    columns = [pl.Series(name, values).fill_nan(None) for name, values in out.items()]
    return frame.drop([FREQUENCY, RECENCY, T, MONETARY]).with_columns(columns)


def peer_at(lake: Path, as_of: datetime, horizon_days: float = PEER_HORIZON_DAYS) -> pl.DataFrame:
    """The peer fitted on a lake's orders strictly before ``as_of``, predicting over
    ``horizon_days`` (the feature view's columns are over ``PEER_HORIZON_DAYS``; a model
    judged on another horizon compares with this): ``customer_id`` and the peer columns,
    one row per customer with an order before ``as_of``. Raises ``PeerUnfit``."""
    from crmdata.lake import read_manifest
    from crmdata.times import as_utc
    from features.catalog import JOIN_KEYS
    from features.sql import PEER_SUMMARY, SqlContext, value_sql

    key = JOIN_KEYS["customer"]
    ctx = SqlContext.open(lake, set(read_manifest(lake).tables), {}, [as_utc(as_of)])
    summary = ctx.con.sql(value_sql(ctx)).pl().select(key, *PEER_SUMMARY).filter(pl.col(FREQUENCY).is_not_null()).sort(key)
    arrays = [summary[c].cast(pl.Float64).to_numpy() for c in (FREQUENCY, RECENCY, T, MONETARY)]
    fit = fit_peer(*arrays)
    predicted = predict_peer(fit, *arrays, horizon=horizon_days)
    return summary.select(key).with_columns(pl.Series(name, predicted[name]) for name in PEER_FEATURES)


def _label(snapshot: Any) -> str:
    return snapshot.strftime("%Y-%m-%d %H:%M") if hasattr(snapshot, "strftime") else str(snapshot)
