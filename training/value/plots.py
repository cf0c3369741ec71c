"""The customer-value charts logged with every run: deciles, gain (Lorenz) curve, interval coverage."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from training.value.metrics import decile_table


def deciles(actual: np.ndarray, predictions: dict[str, np.ndarray]) -> Figure:
    """Mean predicted against mean actual spend per decile of each predictor's own ranking."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, scatter) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, p in predictions.items():
        table = decile_table(actual, p)
        x = np.arange(1, len(table["rows"]) + 1)
        line = ax.plot(x, table["predicted"], "o-", label=f"{name}: predicted")[0]
        ax.plot(x, table["actual"], "x:", color=line.get_color(), label=f"{name}: actual")
        scatter.plot(table["predicted"], table["actual"], "o-", label=name)
    top = max(float(np.nanmax(decile_table(actual, p)["predicted"])) for p in predictions.values())
    top = max(top, float(np.nanmax(decile_table(actual, actual)["actual"])))
    scatter.plot([0, top], [0, top], ":", color="grey", label="perfect")
    ax.set(xlabel="decile of predicted value (10: highest)", ylabel="mean spend", title="Predicted and actual by decile")
    scatter.set(xlabel="mean predicted", ylabel="mean actual", title="Decile calibration")
    ax.legend(fontsize=7)
    scatter.legend(fontsize=7)
    fig.tight_layout()
    return fig


def gain(actual: np.ndarray, predictions: dict[str, np.ndarray]) -> Figure:
    """Share of the actual spend held by the top x% of customers by each prediction (Lorenz)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    actual = np.asarray(actual, dtype=float)
    share = np.arange(1, len(actual) + 1) / max(len(actual), 1)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    total = max(float(actual.sum()), 1e-12)
    for name, p in {"perfect (actual)": actual, **predictions}.items():
        ax.plot(share, np.cumsum(actual[np.argsort(-np.asarray(p), kind="stable")]) / total, label=name)
    ax.plot([0, 1], [0, 1], ":", color="grey", label="random")
    ax.set(xlabel="share of customers (by prediction)", ylabel="share of actual spend", title="Gain (Lorenz) curve")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def interval_coverage(actual: np.ndarray, predicted: np.ndarray, low: np.ndarray, high: np.ndarray,
                      level: float) -> Figure:
    """Share of customers inside their interval, per decile of predicted value, against the level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    actual = np.asarray(actual, dtype=float)
    order = np.argsort(np.asarray(predicted), kind="stable")
    parts = np.array_split(order, 10)
    inside = (actual >= low) & (actual <= high)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.bar(np.arange(1, 11), [inside[p].mean() if len(p) else np.nan for p in parts], label="covered")
    ax.axhline(level, ls=":", color="grey", label=f"level {level:.0%}")
    ax.axhline(float(inside.mean()), color="black", label=f"overall {inside.mean():.1%}")
    ax.set(xlabel="decile of predicted value", ylabel="share inside the interval", ylim=(0, 1),
           title="Interval coverage")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
