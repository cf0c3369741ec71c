"""The report as one self-contained HTML page: tables as HTML, charts as inline SVG drawn by
matplotlib (no JavaScript, no fonts or images to fetch: the page's Content-Security-Policy
allows nothing from the network).

Every section is a ``<section class="report-section" id="<key>">`` holding its
definitions (``dl.definitions``), its notes, a ``figure.chart`` with one ``<svg>`` and its
tables (``table.data``); the browser test looks for exactly these.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from pipelines.report.model import SECTIONS, Report, Section

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PALETTE = {"new": "#2563eb", "returning": "#60a5fa", "resurrected": "#16a34a", "lost": "#dc2626",
           "line": "#111827", "bar": "#93c5fd", "accent": "#f59e0b", "flag": "#dc2626", "ok": "#2563eb"}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#111827;background:#f8fafc}
header{background:#1e293b;color:#f8fafc;padding:16px 32px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#cbd5e1;font-size:13px}nav{padding:8px 32px;background:#e2e8f0;font-size:14px}
nav a{margin-right:16px;color:#1e3a8a}main{padding:8px 32px 32px}
.report-section{background:#fff;border:1px solid #e2e8f0;border-radius:8px;margin:16px 0;padding:16px 20px}
h2{margin-top:0;font-size:19px}h3{font-size:15px;margin:18px 0 6px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}.card{border:1px solid #e2e8f0;border-radius:6px;
padding:6px 12px;min-width:120px}.card b{display:block;font-size:18px}.card span{font-size:12px;color:#475569}
.note{background:#fef9c3;border-left:4px solid #eab308;padding:6px 10px;margin:6px 0;font-size:13px}
.alert{background:#fee2e2;border-left:4px solid #dc2626;color:#991b1b;padding:8px 12px;margin:12px 0;font-weight:600}
figure.chart{margin:8px 0;overflow-x:auto}.scroll{overflow-x:auto}figure.chart svg{max-width:100%;height:auto}
table.data{border-collapse:collapse;font-size:12.5px;margin:4px 0 12px}
table.data th,table.data td{border:1px solid #e2e8f0;padding:3px 8px;text-align:right;white-space:nowrap}
table.data th{background:#f1f5f9}table.data td:first-child,table.data th:first-child{text-align:left}
tr.flag td{color:#b91c1c;font-weight:600;background:#fee2e2}
dl.definitions{font-size:12.5px;color:#334155;display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;
margin:8px 0 4px}dl.definitions dt{font-weight:600}dl.definitions dd{margin:0}
"""
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

# --- formatting -------------------------------------------------------------------------------------

_PERCENT = re.compile(r"(rate|conversion|_per_engaged|_per_demo|_per_meeting)(_last_month)?$|^m\d+$")
_MONEY = re.compile(r"^(revenue|aov|clv|clv_low|clv_high|mean_clv|mrr_at_end|revenue_per_active|"
                    r"predicted_mean_spend|realized_mean|clv_total|clv_low_total|clv_high_total)$")


def fmt(column: str, value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if _PERCENT.search(column):
            return f"{100 * value:.1f}%"
        if column in ("nps", "csat"):
            return f"{value:.1f}"
        if _MONEY.match(column) or (column == "predicted_mean" and abs(value) > 1.5):
            return f"{value:,.2f}"
        if column.endswith("days_to_convert"):
            return f"{value:.1f}"
        return f"{value:.3f}"
    return html.escape(str(value))


def table_html(name: str, rows: Sequence[dict[str, Any]], *, cell_style: Callable[[str, Any], str] | None = None,
               row_class: Callable[[dict[str, Any]], str] | None = None) -> str:
    if not rows:
        return f'<table class="data" data-table="{name}"><tr><td>no rows</td></tr></table>'
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in columns)
    body = []
    for row in rows:
        cls = row_class(row) if row_class else ""
        cells = "".join(
            f"<td{cell_style(c, row[c]) if cell_style else ''}>{fmt(c, row[c])}</td>" for c in columns)
        body.append(f'<tr{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{cells}</tr>')
    return (f'<div class="scroll"><table class="data" data-table="{name}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _heat(column: str, value: Any) -> str:
    if _PERCENT.search(column) and isinstance(value, float):
        return f' style="background:rgba(37,99,235,{min(max(value, 0.0), 1.0) * 0.6:.2f})"'
    return ""


# --- charts -----------------------------------------------------------------------------------------


def _figure(width: float = 9.0, height: float = 3.2) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig


def svg(fig: Figure) -> str:
    """The figure as an inline ``<svg>`` (text kept as text: smaller, and selectable)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        # No metadata block (creator, date, licence URIs): the page stays the same for the same numbers.
        fig.savefig(buf, format="svg", metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def customers_chart(section: Section) -> str | None:
    rows = section.tables.get("monthly")
    if not rows:
        return None
    months = [r["month"] for r in rows]
    x = range(len(months))
    fig = _figure()
    ax = fig.add_subplot()
    bottom = [0.0] * len(rows)
    for key in ("new", "returning", "resurrected"):
        values = [float(r[key] or 0) for r in rows]
        ax.bar(x, values, bottom=bottom, color=PALETTE[key], label=key)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.bar(x, [-float(r["lost"] or 0) for r in rows], color=PALETTE["lost"], label="lost")
    ax.axhline(0, color="#94a3b8", linewidth=0.8)
    ax.plot(x, [r["active_at_end"] for r in rows], color=PALETTE["line"], marker="o", label="active base")
    ax.set_xticks(list(x), months, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("customers")
    ax.legend(fontsize=8, ncols=5, loc="upper left")
    ax.set_title("Customers per month: new, returning, resurrected, lost; the active base", fontsize=10)
    return svg(fig)


def value_chart(section: Section) -> str | None:
    monthly = section.tables.get("monthly") or []
    tiers = section.tables.get("tiers") or []
    has_revenue = bool(monthly) and "revenue" in monthly[0]
    if not has_revenue and not tiers:
        return None
    fig = _figure()
    axes = fig.subplots(1, 2 if has_revenue and tiers else 1, squeeze=False)[0]
    i = 0
    if has_revenue:
        ax = axes[i]
        i += 1
        x = range(len(monthly))
        ax.bar(x, [r["revenue"] or 0 for r in monthly], color=PALETTE["bar"], label="revenue")
        ax.set_xticks(list(x), [r["month"] for r in monthly], rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("revenue")
        ax2 = ax.twinx()
        ax2.plot(x, [r["aov"] if r["aov"] is not None else float("nan") for r in monthly],
                 color=PALETTE["accent"], marker="o", label="AOV")
        ax2.set_ylabel("average order value")
        ax.set_title("Revenue per month (bars) and AOV (line)", fontsize=10)
    if tiers:
        ax = axes[i]
        names = [t["tier"] for t in tiers]
        ax.bar(names, [t["clv"] or 0 for t in tiers], color=PALETTE["new"])
        for j, t in enumerate(tiers):
            ax.annotate(f"{t['customers']:,}", (j, t["clv"] or 0), ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("predicted CLV (sum)")
        ax.set_title("Predicted CLV by tier (label: customers)", fontsize=10)
    return svg(fig)


def funnel_chart(section: Section) -> str | None:
    stages = section.tables.get("stages")
    if not stages:
        return None
    fig = _figure(height=2.8)
    ax = fig.add_subplot()
    names = [s["stage"].replace("_", " ") for s in stages][::-1]
    counts = [s["leads"] for s in stages][::-1]
    colors = [PALETTE["lost"] if n == "lost" else PALETTE["new"] for n in names]
    ax.barh(names, counts, color=colors)
    for y, (c, s) in enumerate(zip(counts, stages[::-1], strict=True)):
        share = s["cumulative_conversion"]
        ax.annotate(f"{c:,}" + (f"  ({100 * share:.1f}%)" if share is not None else ""), (c, y),
                    va="center", fontsize=8, xytext=(3, 0), textcoords="offset points")
    ax.set_xlabel("leads")
    ax.set_title("Leads by stage (share of leads created)", fontsize=10)
    return svg(fig)


def satisfaction_chart(section: Section) -> str | None:
    rows = section.tables.get("monthly")
    if not rows:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    x = range(len(rows))
    ax.bar(x, [r["nps_responses"] for r in rows], color="#e2e8f0", label="NPS responses")
    ax.set_ylabel("responses")
    ax.set_xticks(list(x), [r["month"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax2 = ax.twinx()
    ax2.plot(x, [r["nps"] if r["nps"] is not None else float("nan") for r in rows], color=PALETTE["new"],
             marker="o", label="NPS")
    ax2.plot(x, [r["csat"] if r["csat"] is not None else float("nan") for r in rows], color=PALETTE["accent"],
             marker="s", label="CSAT %")
    ax2.set_ylim(-100, 100)
    ax2.set_ylabel("NPS / CSAT %")
    ax2.legend(fontsize=8, loc="lower left")
    ax.set_title("NPS and CSAT per month (bars: NPS responses)", fontsize=10)
    return svg(fig)


def monitor_chart(section: Section) -> str | None:
    runs = section.tables.get("runs")
    if not runs:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    labels = [f"{r['task']} {r['as_of']}" for r in runs]
    x = range(len(runs))
    realized = [r["realized_auc"] if r["realized_auc"] is not None else float("nan") for r in runs]
    ax.scatter(x, realized, c=[PALETTE["flag"] if r["flagged"] else PALETTE["ok"] for r in runs], s=40,
               label="realized AUC", zorder=3)
    ax.scatter(x, [r["holdout_auc"] if r["holdout_auc"] is not None else float("nan") for r in runs],
               marker="_", s=300, color=PALETTE["line"], label="holdout AUC")
    ax.set_xticks(list(x), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0.4, 1.0)
    ax.axhline(0.5, color="#94a3b8", linewidth=0.8, linestyle=":")
    ax.set_ylabel("ROC-AUC")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Past scoring runs: realized vs holdout AUC (red = flagged)", fontsize=10)
    return svg(fig)


CHARTS: dict[str, Callable[[Section], str | None]] = {
    "customers": customers_chart, "value": value_chart, "funnel": funnel_chart,
    "satisfaction": satisfaction_chart, "monitor": monitor_chart,
}
TABLE_TITLES = {
    ("customers", "monthly"): "Per month", ("customers", "retention"): "Retention by cohort",
    ("value", "monthly"): "Per month", ("value", "tiers"): "Predicted CLV by tier (newest run)",
    ("value", "migration"): "Tier migrations between the two newest runs (rows: before, columns: now)",
    ("value", "realized_by_decile"): "Predicted vs realized spend by decile of predicted CLV",
    ("funnel", "stages"): "Stages", ("funnel", "by_source"): "By source",
    ("funnel", "monthly_cohorts"): "Leads created per month and how many of them converted",
    ("funnel", "open_by_grade"): "Open leads by grade",
    ("satisfaction", "monthly"): "Per month", ("satisfaction", "window"): "All months",
    ("monitor", "runs"): "Runs judged", ("monitor", "grades"): "Per band / grade",
    ("monitor", "pending"): "Runs whose window has not passed yet",
}


# --- the page ---------------------------------------------------------------------------------------


def section_html(section: Section) -> str:
    parts = [f'<section class="report-section" id="{section.key}" data-available="{str(section.available).lower()}">',
             f"<h2>{html.escape(section.title)}</h2>"]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in section.notes]
    if section.summary:
        cards = "".join(f'<div class="card"><b>{fmt(k, v)}</b><span>{html.escape(k.replace("_", " "))}</span></div>'
                        for k, v in section.summary.items())
        parts.append(f'<div class="cards">{cards}</div>')
    chart = CHARTS[section.key](section) if section.available else None
    if chart:
        parts.append(f'<figure class="chart">{chart}</figure>')
    for name, rows in section.tables.items():
        if not rows and name == "pending":
            continue
        parts.append(f"<h3>{html.escape(TABLE_TITLES.get((section.key, name), name))}</h3>")
        parts.append(table_html(
            name, rows, cell_style=_heat if name == "retention" else None,
            row_class=(lambda r: "flag" if r.get("flagged") else "") if name == "runs" else None))
    if section.definitions:
        items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in section.definitions.items())
        parts.append(f'<h3>Definitions</h3><dl class="definitions">{items}</dl>')
    parts.append("</section>")
    return "\n".join(parts)


def render(report: Report) -> str:
    title = f"CRM report as of {report.as_of:%Y-%m-%d}"
    alerts = "".join(f'<p class="alert">⚠ {html.escape(a.message)}</p>' for a in report.alerts)
    nav = "".join(f'<a href="#{k}">{html.escape(report.sections[k].title)}</a>'
                  for k in SECTIONS if k in report.sections)
    body = "\n".join(section_html(report.sections[k]) for k in SECTIONS if k in report.sections)
    months = f"{report.months[0]} to {report.months[-1]}" if report.months else ""
    lost = f"· lost = no order within {report.window_days} days" if report.mode == "transactional" else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{CSS}</style></head>
<body><header><h1>{html.escape(title)}</h1>
<p>Months {html.escape(months)} · counting events before {report.as_of:%Y-%m-%d %H:%M} UTC · mode: {report.mode or "—"}
 {lost} · generated {report.generated_at:%Y-%m-%d %H:%M} UTC</p>
</header><nav>{nav}</nav><main>{alerts}
{body}
</main></body></html>
"""
