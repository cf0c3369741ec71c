"""Charts people would rather look at than read, logged next to every run."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: training runs on servers and CI

import lightgbm as lgb
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

Curves = dict[str, np.ndarray]


def roc_pr(y: np.ndarray, scores: Curves) -> Figure:
    """ROC and precision-recall curves of the model, the baseline and the oracle."""
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, p in scores.items():
        fpr, tpr, _ = roc_curve(y, p)
        roc_ax.plot(fpr, tpr, label=name)
        precision, recall, _ = precision_recall_curve(y, p)
        pr_ax.plot(recall, precision, label=name)
    roc_ax.plot([0, 1], [0, 1], ":", color="grey")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    pr_ax.axhline(float(np.mean(y)), ls=":", color="grey", label="base rate")
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    roc_ax.legend()
    pr_ax.legend()
    fig.tight_layout()
    return fig


def calibration(y: np.ndarray, scores: Curves, bins: int = 10) -> Figure:
    """Observed rate against mean predicted probability, per decile of the score."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for name, p in scores.items():
        edges = np.unique(np.quantile(p, np.linspace(0, 1, bins + 1)))
        idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, len(edges) - 2)
        frame = pd.DataFrame({"bin": idx, "p": p, "y": y}).groupby("bin").mean()
        ax.plot(frame["p"], frame["y"], "o-", label=name)
    top = max(float(np.max(p)) for p in scores.values())
    ax.plot([0, top], [0, top], ":", color="grey", label="perfect")
    ax.set(xlabel="predicted probability", ylabel="observed rate", title="Calibration (deciles)")
    ax.legend()
    fig.tight_layout()
    return fig


def lift_gain(y: np.ndarray, scores: Curves) -> Figure:
    """Cumulative gain (share of positives captured) and lift by share of rows contacted."""
    fig, (gain_ax, lift_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    share = np.arange(1, len(y) + 1) / len(y)
    for name, p in scores.items():
        hits = np.cumsum(np.asarray(y)[np.argsort(-p, kind="stable")])
        gain = hits / max(hits[-1], 1)
        gain_ax.plot(share, gain, label=name)
        lift_ax.plot(share, gain / share, label=name)
    gain_ax.plot([0, 1], [0, 1], ":", color="grey")
    gain_ax.set(xlabel="share of rows (by score)", ylabel="share of positives", title="Cumulative gain")
    lift_ax.axhline(1, ls=":", color="grey")
    lift_ax.set(xlabel="share of rows (by score)", ylabel="lift", title="Lift", xlim=(0.01, 1))
    gain_ax.legend()
    lift_ax.legend()
    fig.tight_layout()
    return fig


def importance(booster: lgb.Booster, top: int = 25) -> Figure:
    """Total gain per feature (what the trees split on, weighted by improvement)."""
    gains = pd.Series(booster.feature_importance("gain"), index=booster.feature_name())
    gains = gains.sort_values().tail(top)
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(gains) + 1.5))
    ax.barh(gains.index, gains.to_numpy())
    ax.set(xlabel="total gain", title="Feature importance")
    fig.tight_layout()
    return fig


def shap_summary(booster: lgb.Booster, x: pd.DataFrame, top: int = 20) -> Figure:
    """SHAP beeswarm from LightGBM's exact TreeSHAP contributions (``pred_contrib``)."""
    import shap

    contrib = np.asarray(booster.predict(x, pred_contrib=True))[:, :-1]
    plt.figure()
    # Categoricals are coloured by their code: order carries no meaning there.
    shap.summary_plot(contrib, x, max_display=top, show=False)
    fig = plt.gcf()
    fig.set_size_inches(8, 0.35 * min(top, x.shape[1]) + 1.5)
    fig.tight_layout()
    return fig
