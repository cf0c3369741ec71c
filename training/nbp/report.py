"""The evaluation as people read it: a metric table, metrics against k, a model card."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from matplotlib.figure import Figure

from training.nbp.recommender import MODEL_NAME
from training.ranking_metrics import METRIC_NAMES, metric_key, ranking_metrics

TABLE_METRICS: tuple[str, ...] = (*METRIC_NAMES, "coverage")


def metric_table(results: Mapping[str, dict], ks: Sequence[int]) -> pd.DataFrame:
    """One row per (policy, k) with every metric: the table logged to MLflow."""
    rows = []
    for policy, result in results.items():
        overall = result["overall"]
        for k in ks:
            rows.append({"policy": policy, "k": k, "users": int(overall["users"]),
                         **{m: overall[metric_key(m, k)] for m in TABLE_METRICS}})
    return pd.DataFrame(rows)


def metrics_by_k(recommended: Mapping[str, np.ndarray], relevant: sp.csr_matrix, n_items: int,
                 max_k: int) -> dict[str, dict[str, list[float]]]:
    """policy → metric → values at k = 1..max_k (for the plot)."""
    ks = range(1, max_k + 1)
    out: dict[str, dict[str, list[float]]] = {}
    for policy, rec in recommended.items():
        m = ranking_metrics(rec, relevant, n_items, ks)
        out[policy] = {name: [m[metric_key(name, k)] for k in ks] for name in TABLE_METRICS}
    return out


def plot_metrics_by_k(curves: Mapping[str, Mapping[str, list[float]]]) -> Figure:
    """Precision, recall, NDCG, MAP, hit rate and coverage against k, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")  # headless: training runs on servers and CI
    import matplotlib.pyplot as plt

    # A fixed layout instead of tight_layout: measuring text boxes is most of the drawing time.
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5), dpi=80, sharex=True)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.9, wspace=0.25, hspace=0.3)
    for ax, metric in zip(axes.ravel(), TABLE_METRICS, strict=True):
        for policy, values in curves.items():
            ax.plot(np.arange(1, len(values[metric]) + 1), values[metric], label=policy)
        ax.set_title(metric.replace("_", " "), fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("k")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Next-best-product: metrics against k (time-split test customers)")
    return fig


def model_card(summary: Mapping[str, object], table: pd.DataFrame, metrics: dict) -> str:
    """A short markdown report: the setup, the comparison table and the slices."""
    lines = [f"# {MODEL_NAME}: evaluation report", ""]
    lines += [f"- {key}: {value}" for key, value in summary.items()]
    lines += ["", "## Same test customers, every policy", "",
              "| policy | k | " + " | ".join(TABLE_METRICS) + " |", "|---|---|" + "---|" * len(TABLE_METRICS)]
    for row in table.itertuples(index=False):
        values = " | ".join(f"{getattr(row, m):.4f}" for m in TABLE_METRICS)
        lines.append(f"| {row.policy} | {row.k} | {values} |")
    for kind in ("by_slice", "by_segment"):
        groups = metrics.get(kind, {})
        if groups:
            lines += ["", f"## Model {kind.replace('_', ' ')} (NDCG@10, hit rate@10)", "",
                      "| group | customers | NDCG@10 | hit rate@10 |", "|---|---|---|---|"]
            for name, m in groups.items():
                lines.append(f"| {name} | {int(m['users'])} | {m['ndcg_at_10']:.4f} | {m['hit_rate_at_10']:.4f} |")
    return "\n".join(lines) + "\n"
