"""The exact decision rules of the world: churn and lead conversion probabilities.

Each rule reads only *signals*: quantities a feature pipeline can recompute from
the raw tables at the cutoff (events strictly before it). The windows are whole
weeks ending at the cutoff, which is always a week boundary of the calendar:

=====================  ==============================================================
signal                 definition at cutoff c (all events with timestamp < c)
=====================  ==============================================================
logins_28d             interactions type=login in [c-28d, c)
logins_prev_84d        interactions type=login in [c-112d, c-28d)
tickets_91d            interactions type=support_ticket in [c-91d, c)
complaints_91d         interactions type=complaint in [c-91d, c)
nps_last               value of the latest nps interaction before c (none: missing)
tenure_days            (c - subscriptions.started_at) in days
monthly_price          subscriptions.monthly_price
days_since_last_order  (c - latest orders.ordered_at before c) in days (none: missing)
orders_182d            orders in [c-182d, c)
loyalty_tier           customers.loyalty_tier (custom attribute)
=====================  ==============================================================

Lead signals are listed with ``LeadSignals``. Because the rules use nothing
else, ``sigmoid(logit)`` *is* the true probability given the tables, and the
realized outcome is a Bernoulli draw from it: the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from crmdata.synth.params import ChurnParams, LeadParams

#: Window lengths in weeks (the docs quote them; the simulator counts these buckets).
LOGIN_RECENT_WEEKS = 4
LOGIN_PREVIOUS_WEEKS = 12
SUPPORT_WEEKS = 13
ORDER_WEEKS = 26
LEAD_RECENT_WEEKS = 4
#: Caps of the lead recency signal.
LEAD_SILENCE_CAP_DAYS = 90.0
LEAD_AGE_CAP_DAYS = 365.0


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class ChurnSignals:
    """Churn signals of the active subscribers at one cutoff (one array entry each)."""

    logins_28d: np.ndarray
    logins_prev_84d: np.ndarray
    tickets_91d: np.ndarray
    complaints_91d: np.ndarray
    nps_last: np.ndarray  # float, NaN when the customer never answered
    tenure_days: np.ndarray
    monthly_price: np.ndarray
    days_since_last_order: np.ndarray  # float, NaN when the customer never ordered
    orders_182d: np.ndarray
    loyalty_tier: np.ndarray  # index into vocab.LOYALTY_TIERS

    def columns(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def churn_logit(s: ChurnSignals, p: ChurnParams) -> np.ndarray:
    """logit of P(the subscription ends within the 90-day window | signals)."""
    trend = np.log((s.logins_28d + 1.0) / (s.logins_prev_84d / 3.0 + 1.0))
    decline = np.maximum(0.0, -trend)
    growth = np.maximum(0.0, trend)
    dormant = (s.logins_28d == 0) & (s.tenure_days >= p.dormant_min_tenure_days)
    tickets = np.minimum(s.tickets_91d, p.tickets_cap)
    complaints = np.minimum(s.complaints_91d, p.complaints_cap)
    has_nps = ~np.isnan(s.nps_last)
    nps = np.where(has_nps, s.nps_last, 7.0)
    detractor_gap = np.maximum(0.0, 7.0 - nps)  # 0 for passives, promoters and no answer
    promoter = nps >= 9.0
    log_price = np.log(s.monthly_price / p.price_ref)
    recency = np.where(
        np.isnan(s.days_since_last_order),
        p.recency_cap_days,
        np.minimum(s.days_since_last_order, p.recency_cap_days),
    )
    frequency = np.minimum(s.orders_182d, p.frequency_cap)
    loyalty = np.asarray(p.loyalty)[s.loyalty_tier]
    return (
        p.intercept
        + p.decline * decline
        + p.growth * growth
        + p.dormant * dormant
        + p.tickets * tickets
        + p.complaints * complaints
        + p.detractor_per_point * detractor_gap
        + p.promoter * promoter
        + p.nps_missing * ~has_nps
        + p.new_tenure * np.exp(-s.tenure_days / p.new_tenure_days)
        + p.price * log_price
        + p.price_x_decline * np.maximum(0.0, log_price) * decline
        + p.recency * recency / p.recency_cap_days
        + p.frequency * frequency
        + p.complaint_x_detractor * complaints * (detractor_gap > 0)
        + loyalty
    )


def churn_probability(s: ChurnSignals, p: ChurnParams) -> np.ndarray:
    return sigmoid(churn_logit(s, p))


@dataclass
class LeadSignals:
    """Conversion signals of the open leads at one cutoff.

    Firmographics are indexes into the vocabularies (source, company size, job
    seniority, industry) plus the custom attribute annual_revenue_musd. Activity
    counts are lead_activities rows of the given types:

    - web_28d: web_visit in [c-28d, c)
    - pricing_28d: pricing_page_visit in [c-28d, c)
    - email_28d: email_open + email_click in [c-28d, c)
    - meetings_28d: meeting + call in [c-28d, c)
    - content_ever: content_download before c
    - demo_ever: demo_request before c (count; the rule uses "> 0")
    - days_since_last_activity: (c - latest activity before c) in days (every lead
      has at least its creating activity, at created_at)
    - age_days: (c - leads.created_at) in days
    """

    source: np.ndarray
    company_size: np.ndarray
    job_seniority: np.ndarray
    industry: np.ndarray
    annual_revenue_musd: np.ndarray
    web_28d: np.ndarray
    pricing_28d: np.ndarray
    email_28d: np.ndarray
    meetings_28d: np.ndarray
    content_ever: np.ndarray
    demo_ever: np.ndarray
    days_since_last_activity: np.ndarray
    age_days: np.ndarray

    def columns(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


#: Company-size index from which a company counts as large (201-1000 and up) and
#: seniority index from which a buyer counts as senior (director and up).
LARGE_COMPANY_FROM = 3
SENIOR_FROM = 2


def _lead_terms(s: LeadSignals) -> tuple[np.ndarray, np.ndarray]:
    silence = np.minimum(s.days_since_last_activity, LEAD_SILENCE_CAP_DAYS) / LEAD_SILENCE_CAP_DAYS
    age = np.minimum(s.age_days, LEAD_AGE_CAP_DAYS) / LEAD_AGE_CAP_DAYS
    return silence, age


def lead_logit(s: LeadSignals, p: LeadParams) -> np.ndarray:
    """logit of P(the open lead converts within the 60-day window | signals)."""
    silence, age = _lead_terms(s)
    pricing = np.log1p(s.pricing_28d)
    demo = s.demo_ever > 0
    senior = s.job_seniority >= SENIOR_FROM
    large = s.company_size >= LARGE_COMPANY_FROM
    revenue = np.log10(np.clip(s.annual_revenue_musd, 0.1, 1e4))
    return (
        p.intercept
        + np.asarray(p.source)[s.source]
        + np.asarray(p.company_size)[s.company_size]
        + np.asarray(p.job_seniority)[s.job_seniority]
        + np.asarray(p.industry)[s.industry]
        + p.revenue * revenue
        + p.web_28d * np.log1p(s.web_28d)
        + p.pricing_28d * pricing
        + p.email_28d * np.log1p(s.email_28d)
        + p.meetings_28d * np.log1p(s.meetings_28d)
        + p.content_ever * np.log1p(s.content_ever)
        + p.demo_ever * demo
        + p.demo_x_senior * (demo & senior)
        + p.pricing_x_large * pricing * large
        + p.silence * silence
        + p.age * age
    )


def conversion_probability(s: LeadSignals, p: LeadParams) -> np.ndarray:
    return sigmoid(lead_logit(s, p))


def lost_probability(s: LeadSignals, p: LeadParams) -> np.ndarray:
    """P(a lead that does not convert in this epoch is marked lost within it)."""
    silence, age = _lead_terms(s)
    return sigmoid(p.lost_intercept + p.lost_silence * silence + p.lost_age * age)
