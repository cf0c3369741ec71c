"""Leads: arrival, firmographics, weekly engagement, and conversion/loss decisions.

A lead arrives at ``created_at`` with one creating activity (a form, a call, a
webinar sign-up …). Each following week it engages at rates driven by a hidden
interest that drifts and cools with age. Every 9 weeks (a lead epoch starting at
c) each open lead created before c is decided: it converts with the exact
probability ``hazards.conversion_probability(signals at c)``, at a uniform time
in [c, c + 60 days); otherwise it may be marked lost within [c, c + 63 days).
So the 60-day label of an open lead at an epoch start *is* that decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from crmdata.contract import LeadActivityType
from crmdata.synth import vocab
from crmdata.synth.config import DAY_S, LEAD_EPOCH_WEEKS, LEAD_WINDOW_DAYS, WEEK_S, Calendar
from crmdata.synth.epochs import NEVER, EpochRate, EpochTruth
from crmdata.synth.hazards import (
    LEAD_RECENT_WEEKS,
    LeadSignals,
    conversion_probability,
    lost_probability,
)
from crmdata.synth.params import LeadBehaviourParams, LeadParams
from crmdata.synth.sampling import choose, growing_times

log = logging.getLogger(__name__)

@dataclass
class LeadWorld:
    created_s: np.ndarray  # int64, sorted
    source: np.ndarray
    country: np.ndarray
    industry: np.ndarray
    company_size: np.ndarray
    job_seniority: np.ndarray
    annual_revenue_musd: np.ndarray
    converted_s: np.ndarray  # int64, NEVER when not converted
    lost_s: np.ndarray  # int64, NEVER when not lost
    #: lead_activities, sorted by time: lead index, time (s), index into activity_types.
    activity_lead: np.ndarray
    activity_s: np.ndarray
    activity_type: np.ndarray
    activity_types: tuple[str, ...]
    truth: list[EpochTruth] = field(default_factory=list)
    rates: list[EpochRate] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.created_s.size)

    @property
    def converted(self) -> np.ndarray:
        return self.converted_s != NEVER


def _type_codes(params: LeadBehaviourParams) -> dict[str, int]:
    known = {t.value for t in LeadActivityType}
    unknown = [t for t in params.activity_types if t not in known]
    if unknown:
        raise ValueError(f"activity types not in the contract: {unknown}")
    return {t: i for i, t in enumerate(params.activity_types)}


def simulate_leads(
    n_leads: int,
    calendar: Calendar,
    behaviour: LeadBehaviourParams,
    rule: LeadParams,
    rng: np.random.Generator,
) -> LeadWorld:
    """Simulate every lead over the whole history (vectorized over leads, loop over weeks)."""
    return _LeadSimulation(n_leads, calendar, behaviour, rule, rng).run()


class _LeadSimulation:
    """The state of every lead, advanced one week at a time."""

    def __init__(
        self, n_leads: int, calendar: Calendar, behaviour: LeadBehaviourParams, rule: LeadParams, rng: np.random.Generator
    ) -> None:
        self.n, self.calendar, self.b, self.rule, self.rng = n_leads, calendar, behaviour, rule, rng
        self.codes = _type_codes(behaviour)
        self.created_s = growing_times(rng, n_leads, calendar.end_s, behaviour.growth)
        self.source = choose(rng, vocab.LEAD_SOURCE_WEIGHTS, n_leads)
        self.country = choose(rng, vocab.COUNTRY_WEIGHTS, n_leads)
        self.industry = choose(rng, vocab.INDUSTRY_WEIGHTS, n_leads)
        self.company_size = choose(rng, vocab.COMPANY_SIZE_WEIGHTS, n_leads)
        self.job_seniority = choose(rng, vocab.JOB_SENIORITY_WEIGHTS, n_leads)
        self.revenue = np.round(
            np.asarray(vocab.REVENUE_MEDIAN_MUSD)[self.company_size] * np.exp(rng.normal(0.0, 0.8, n_leads)), 3
        )
        # Hidden interest: centred on the same fit the decision rule rewards (scaled), so
        # promising leads also engage more, as they do in real funnels.
        fit = (
            np.asarray(rule.source)[self.source]
            + np.asarray(rule.company_size)[self.company_size]
            + np.asarray(rule.job_seniority)[self.job_seniority]
            + np.asarray(rule.industry)[self.industry]
        )
        self.interest_mean = behaviour.interest_fit_scale * fit + rng.normal(0.0, behaviour.interest_sd, n_leads)
        self.interest = (self.interest_mean + rng.normal(0.0, behaviour.interest_sd, n_leads)).astype(np.float32)
        self.created_week = (self.created_s // WEEK_S).astype(np.int32)

        self.converted_s = np.full(n_leads, NEVER, dtype=np.int64)
        self.lost_s = np.full(n_leads, NEVER, dtype=np.int64)
        self.close_s = np.full(n_leads, NEVER, dtype=np.int64)  # converted or lost, whichever
        self.closing = np.zeros(n_leads, dtype=bool)  # decided to convert, not converted yet
        self.last_activity_s = np.full(n_leads, np.iinfo(np.int64).min, dtype=np.int64)
        self.content_ever = np.zeros(n_leads, dtype=np.int32)
        self.demo_ever = np.zeros(n_leads, dtype=np.int32)

        # float32 is plenty for rates and halves the cost of the per-week exponentials.
        self.base = np.asarray(behaviour.activity_base, dtype=np.float32)
        self.gain = np.asarray(behaviour.activity_gain, dtype=np.float32)
        self.boost = np.asarray(behaviour.closing_boost, dtype=np.float32)
        self.origin_type = np.asarray([self.codes[t] for t in behaviour.origin_activity], dtype=np.uint8)
        # Signal groups: which activity types each 28-day count adds up.
        codes = self.codes
        self.groups = {
            "web_28d": [codes["web_visit"]],
            "pricing_28d": [codes["pricing_page_visit"]],
            "email_28d": [codes["email_open"], codes["email_click"]],
            "meetings_28d": [codes["meeting"], codes["call"]],
        }
        self.group_of_type = np.full(len(behaviour.activity_types), -1, dtype=np.int8)
        for g, members in enumerate(self.groups.values()):
            self.group_of_type[members] = g
        # Per signal group and week, the lead index of every activity (for 28-day counts).
        self.recent: list[list[np.ndarray]] = [[] for _ in self.groups]
        self.chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.truth: list[EpochTruth] = []
        self.rates: list[EpochRate] = []

    def run(self) -> LeadWorld:
        epochs = set(self.calendar.lead_epoch_weeks)
        truth_weeks = set(self.calendar.lead_truth_weeks)
        for week in range(self.calendar.weeks):
            start = week * WEEK_S
            n_before = int(np.searchsorted(self.created_s, start, side="left"))  # created before c
            if week in epochs:
                self._decide(week, n_before, record=week in truth_weeks)
            lead_idx, types, times = self._engage(week, n_before)
            self._record(week, lead_idx, types, times)

        world = LeadWorld(
            created_s=self.created_s,
            source=self.source,
            country=self.country,
            industry=self.industry,
            company_size=self.company_size,
            job_seniority=self.job_seniority,
            annual_revenue_musd=self.revenue,
            converted_s=self.converted_s,
            lost_s=self.lost_s,
            activity_lead=np.concatenate([c[0] for c in self.chunks]) if self.chunks else np.empty(0, np.int32),
            activity_s=np.concatenate([c[1] for c in self.chunks]) if self.chunks else np.empty(0, np.int32),
            activity_type=np.concatenate([c[2] for c in self.chunks]) if self.chunks else np.empty(0, np.uint8),
            activity_types=self.b.activity_types,
            truth=self.truth,
            rates=self.rates,
        )
        log.info(
            "leads: %d created, %d converted, %d lost, %d activities",
            self.n,
            int(world.converted.sum()),
            int((self.lost_s != NEVER).sum()),
            world.activity_s.size,
        )
        return world

    def _decide(self, week: int, n_before: int, record: bool) -> None:
        """Decide every open lead created before the epoch start, from the signals only."""
        start = week * WEEK_S
        rng, rule = self.rng, self.rule
        eligible = np.flatnonzero(self.close_s[:n_before] == NEVER)
        first = max(0, week - LEAD_RECENT_WEEKS)
        counts = {
            name: np.bincount(
                np.concatenate([self.recent[g][w] for w in range(first, week)] or [np.empty(0, np.int32)]),
                minlength=self.n,
            )[eligible]
            for g, name in enumerate(self.groups)
        }
        signals = LeadSignals(
            source=self.source[eligible],
            company_size=self.company_size[eligible],
            job_seniority=self.job_seniority[eligible],
            industry=self.industry[eligible],
            annual_revenue_musd=self.revenue[eligible],
            web_28d=counts["web_28d"],
            pricing_28d=counts["pricing_28d"],
            email_28d=counts["email_28d"],
            meetings_28d=counts["meetings_28d"],
            content_ever=self.content_ever[eligible].copy(),
            demo_ever=self.demo_ever[eligible].copy(),
            days_since_last_activity=(start - self.last_activity_s[eligible]) / DAY_S,
            age_days=(start - self.created_s[eligible]) / DAY_S,
        )
        p_convert = conversion_probability(signals, rule)
        convert = rng.random(eligible.size) < p_convert
        lose = ~convert & (rng.random(eligible.size) < lost_probability(signals, rule))
        won, gone = eligible[convert], eligible[lose]
        self.converted_s[won] = start + rng.integers(0, LEAD_WINDOW_DAYS * DAY_S, won.size)
        self.lost_s[gone] = start + rng.integers(0, LEAD_EPOCH_WEEKS * WEEK_S, gone.size)
        self.close_s[won] = self.converted_s[won]
        self.close_s[gone] = self.lost_s[gone]
        self.closing[won] = True
        self.rates.append(EpochRate(week, int(eligible.size), int(convert.sum())))
        if record:
            self.truth.append(EpochTruth(week, eligible, p_convert, convert, signals.columns()))

    def _engage(self, week: int, n_before: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """This week's activities of the leads created before it and still open at its start."""
        b, rng = self.b, self.rng
        start = week * WEEK_S
        active = np.flatnonzero(self.close_s[:n_before] > start)
        target = self.interest_mean[active] - b.interest_decay_per_week * (week - self.created_week[active])
        self.interest[active] = (
            b.interest_rho * self.interest[active]
            + (1.0 - b.interest_rho) * target
            + b.interest_sigma * rng.standard_normal(active.size, dtype=np.float32)
        )
        rate = np.exp(self.gain[None, :] * self.interest[active, None])
        rate *= self.base[None, :]
        rate[np.flatnonzero(self.closing[active])] *= self.boost[None, :]
        np.minimum(rate, np.float32(b.activity_cap), out=rate)
        # Independent Poisson counts per type = a Poisson total split by type in
        # proportion to the rates: one count per lead instead of one per lead and type.
        cumulative = np.cumsum(rate, axis=1)
        total = cumulative[:, -1]
        row = np.repeat(np.arange(active.size), rng.poisson(total))
        u = rng.random(row.size, dtype=np.float32) * total[row]
        bounds = cumulative[row]
        types = np.zeros(row.size, dtype=np.uint8)
        for k in range(len(b.activity_types) - 1):  # a loop over the types, vectorized over events
            types += bounds[:, k] <= u
        lead_idx = active[row].astype(np.int32)
        times = start + rng.integers(0, WEEK_S, lead_idx.size, dtype=np.int64)
        keep = times < self.close_s[lead_idx]  # nothing happens on a lead after it closed
        lead_idx, types, times = lead_idx[keep], types[keep], times[keep]

        # The creating activity of the leads that arrive this week, at created_at itself.
        n_after = int(np.searchsorted(self.created_s, start + WEEK_S, side="left"))
        new = np.arange(n_before, n_after, dtype=np.int32)
        return (
            np.concatenate([lead_idx, new]),
            np.concatenate([types, self.origin_type[self.source[new]]]),
            np.concatenate([times, self.created_s[new]]),
        )

    def _record(self, week: int, lead_idx: np.ndarray, types: np.ndarray, times: np.ndarray) -> None:
        """Keep the week's activities and update the signals the next epochs read."""
        self.chunks.append((lead_idx, times.astype(np.int32), types))
        group = self.group_of_type[types]
        for g in range(len(self.groups)):
            self.recent[g].append(lead_idx[group == g])
        np.add.at(self.content_ever, lead_idx[types == self.codes["content_download"]], 1)
        np.add.at(self.demo_ever, lead_idx[types == self.codes["demo_request"]], 1)
        np.maximum.at(self.last_activity_s, lead_idx, times)
        if week >= LEAD_RECENT_WEEKS:  # buckets older than the 28-day window are never read again
            for g in range(len(self.groups)):
                self.recent[g][week - LEAD_RECENT_WEEKS] = np.empty(0, np.int32)


def segment_of_leads(company_size: np.ndarray) -> np.ndarray:
    """Customer segment of a converted lead, from its company size."""
    return np.asarray(vocab.SEGMENT_OF_COMPANY_SIZE, dtype=np.int16)[company_size]

