"""When feature snapshots are taken: the default grid and the CLI's date options.

A feature table holds one row per entity per snapshot date ``as_of``. The grid is
deterministic (a function of the lake alone), so a rebuild of the same lake
produces the same snapshots, and its newest snapshot sees every event: that is the
row serving reads after ``materialize``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from crmdata.errors import CrmscoreError
from crmdata.lake import last_event
from crmdata.times import as_utc
from crmdata.truth import truth_cutoffs

#: Default snapshot spacing and count (``crmscore features build --every 7d --periods 12``).
DEFAULT_EVERY = timedelta(days=7)
DEFAULT_PERIODS = 12
#: The grid's snapshots fall on this weekday (Monday) at 00:00 UTC.
GRID_WEEKDAY = 0


def snapshot_grid(
    lake: Path,
    every: timedelta = DEFAULT_EVERY,
    periods: int = DEFAULT_PERIODS,
    include_truth: bool = True,
) -> list[datetime]:
    """Deterministic snapshot dates: ``periods`` steps of ``every`` back from the first
    Monday 00:00 UTC strictly after the lake's last event, plus truth cutoffs.

    The newest snapshot therefore sees every event, which is what serving needs.
    """
    if every <= timedelta(0) or periods < 1:
        raise CrmscoreError("the snapshot grid needs a positive period and at least one snapshot")
    end = last_event(lake)
    midnight = end.replace(hour=0, minute=0, second=0, microsecond=0)
    anchor = midnight + timedelta(days=(GRID_WEEKDAY - midnight.weekday()) % 7)
    if anchor <= end:
        anchor += timedelta(days=7)
    grid = [anchor - i * every for i in range(periods)]
    if include_truth:
        grid += truth_cutoffs(lake)
    return sorted(set(grid))


def parse_every(text: str) -> timedelta:
    """``7d``, ``12h`` or ``2w`` -> timedelta."""
    units = {"d": "days", "h": "hours", "w": "weeks"}
    text = text.strip().lower()
    try:
        return timedelta(**{units[text[-1]]: float(text[:-1])})
    except (KeyError, ValueError, IndexError):
        raise CrmscoreError(f"--every {text!r}: expected a number and a unit d/h/w, e.g. 7d") from None


def parse_dates(text: str) -> list[datetime]:
    """``2024-01-01,2024-04-01`` (dates or ISO datetimes, UTC unless an offset is given)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            out.append(as_utc(datetime.fromisoformat(part)))
        except ValueError:
            raise CrmscoreError(f"--as-of: {part!r} is not an ISO date (YYYY-MM-DD)") from None
    if not out:
        raise CrmscoreError("--as-of: no dates given")
    return out
