"""Every coefficient of the synthetic world, in one place.

Three kinds of parameters:

- **latent dynamics** (``BehaviourParams``, ``LeadBehaviourParams``): how hidden
  per-customer/per-lead states (health, interest) evolve and drive event rates.
  Models never see these states, only the events they cause.
- **decision rules** (``ChurnParams``, ``LeadParams``): the exact probabilities
  of churn and conversion at a decision epoch, as functions of *observable*
  signals only (see ``crmdata.synth.hazards``). These are the ground truth.
- **purchases** (``PurchaseParams``): the affinity model behind product choice.
- **value** (``ValueParams``): the horizon and unit costs of the customer-value truth.

They are plain frozen dataclasses so ``world.json`` can record them verbatim
and docs/synthetic-world.md can quote them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class BehaviourParams:
    """Latent customer health and the event rates it drives (per customer-week)."""

    #: Health is an AR(1) around a per-customer mean: h' = rho*h + (1-rho)*mu + sigma*eps.
    health_rho: float = 0.95
    health_sigma: float = 0.20
    health_mean_sd: float = 0.45
    #: Health mean shifts by acquisition channel (order of vocab.CHANNELS).
    health_channel_effect: tuple[float, ...] = (0.0, -0.15, 0.25, -0.10, 0.10, 0.0, -0.05, 0.15)
    #: Bad experiences: a shock lowers health at once and often causes a ticket or a complaint.
    shock_rate: float = 0.010
    shock_size: float = 1.4
    shock_ticket_prob: float = 0.6
    shock_complaint_prob: float = 0.25
    #: Logins/week = exp(a + login_health*h) * state factor, a ~ N(ln login_base, login_sd).
    login_base: float = 0.45
    login_sd: float = 0.6
    login_health: float = 0.9
    login_factor_transactional: float = 0.3
    login_factor_leaving: float = 0.5
    login_factor_churned: float = 0.03
    login_factor_dormant: float = 0.02
    #: Support tickets and complaints: base * exp(health_coef * h) * state factor.
    ticket_base: float = 0.02
    ticket_health: float = -0.8
    complaint_base: float = 0.004
    complaint_health: float = -1.3
    rare_factor_transactional: float = 0.4
    rare_factor_churned: float = 0.15
    #: Weekly rates of tickets and complaints are capped (thinning needs a bound).
    ticket_cap: float = 0.12
    complaint_cap: float = 0.06
    #: Surveys: an NPS answer (0-10) and a CSAT answer (1-5) after some tickets.
    nps_rate_subscriber: float = 0.02
    nps_rate_other: float = 0.008
    nps_mid: float = 7.2
    nps_health: float = 2.0
    nps_sd: float = 1.3
    csat_prob: float = 0.5
    csat_mid: float = 3.6
    csat_health: float = 0.9
    csat_sd: float = 0.7
    #: Marketing e-mail: a campaign every `email_every_weeks` to a random share of customers.
    email_every_weeks: int = 4
    email_send_prob: float = 0.35
    email_open_intercept: float = -1.0
    email_open_health: float = 0.8
    email_open_churned: float = -1.0
    email_click_prob: float = 0.22
    #: Account-management touch points for subscribed mid-market and enterprise customers.
    meeting_rate: float = 0.03
    call_rate: float = 0.01
    #: Transactional customers (and ex-subscribers) go quiet for good at this weekly rate.
    dormancy_rate: float = 0.004
    #: Orders/week = order_base * pi * exp(order_health*h) * state factor; pi ~ lognormal(mean 1).
    order_base: float = 0.23
    order_sd: float = 0.8
    order_health: float = 0.3
    order_segment_factor: tuple[float, ...] = (0.8, 1.0, 1.3, 1.6)
    order_factor_churned: float = 0.3
    order_factor_dormant: float = 0.03
    #: Order propensity also shifts the loyalty tier (a custom attribute) a little.
    loyalty_noise_sd: float = 0.8


@dataclass(frozen=True)
class ChurnParams:
    """logit P(churn within the epoch | signals at its start); see hazards.churn_logit."""

    intercept: float = -3.3
    #: Usage trend = ln((logins_28d + 1) / (logins_prev_84d / 3 + 1)); hinges on both sides.
    decline: float = 1.3
    growth: float = -0.4
    #: No login in the last 28 days although subscribed for at least `dormant_min_tenure_days`.
    dormant: float = 1.05
    dormant_min_tenure_days: float = 35.0
    tickets: float = 0.45
    tickets_cap: int = 4
    complaints: float = 0.9
    complaints_cap: int = 3
    #: Per point of the last NPS below 7 (detractors), promoters (>= 9), or no answer yet.
    detractor_per_point: float = 0.23
    promoter: float = -0.5
    nps_missing: float = 0.13
    #: New subscribers churn more: + new_tenure * exp(-tenure_days / new_tenure_days).
    new_tenure: float = 1.55
    new_tenure_days: float = 120.0
    #: Price: -price * ln(monthly_price / price_ref) (committed, expensive plans stay) ...
    price: float = -0.4
    price_ref: float = 50.0
    #: ... unless usage declines on an expensive plan (interaction): + price_x_decline *
    #: max(0, ln(price / price_ref)) * decline.
    price_x_decline: float = 0.5
    #: Purchase recency (days since last order, capped; no order counts as the cap).
    recency: float = 1.05
    recency_cap_days: float = 365.0
    #: Purchase frequency (orders in the last 182 days, capped).
    frequency: float = -0.08
    frequency_cap: int = 12
    #: Complaints weigh more from a detractor (interaction).
    complaint_x_detractor: float = 0.4
    #: Custom attribute loyalty_tier (order of vocab.LOYALTY_TIERS).
    loyalty: tuple[float, ...] = (0.0, -0.13, -0.33, -0.5)


@dataclass(frozen=True)
class LeadBehaviourParams:
    """Latent lead interest and the engagement it drives (per lead-week)."""

    #: Interest z is an AR(1) around m - decay*age_weeks: z' = rho*z + (1-rho)*target + sigma*eps.
    interest_rho: float = 0.85
    interest_sigma: float = 0.35
    interest_sd: float = 0.6
    interest_decay_per_week: float = 0.03
    #: The mean interest m follows the same fit the sales team sees (scaled decision effects).
    interest_fit_scale: float = 0.5
    #: Activity rate per week = base * exp(gain * z), for the types below (order matters).
    activity_types: tuple[str, ...] = (
        "email_open",
        "email_click",
        "web_visit",
        "pricing_page_visit",
        "content_download",
        "demo_request",
        "webinar",
        "meeting",
        "call",
    )
    activity_base: tuple[float, ...] = (0.35, 0.08, 0.45, 0.06, 0.07, 0.012, 0.025, 0.02, 0.04)
    activity_gain: tuple[float, ...] = (0.5, 0.7, 0.8, 1.1, 0.6, 1.3, 0.5, 1.0, 0.6)
    #: Between a "convert" decision and the conversion, sales steps intensify (per type).
    closing_boost: tuple[float, ...] = (1.0, 1.0, 1.0, 2.0, 1.0, 2.0, 1.0, 3.0, 3.0)
    #: Rates are capped per week.
    activity_cap: float = 6.0
    #: The activity that creates the lead, by source (order of vocab.LEAD_SOURCES).
    origin_activity: tuple[str, ...] = (
        "call",
        "meeting",
        "meeting",
        "webinar",
        "web_visit",
        "web_visit",
        "content_download",
        "call",
        "email_open",
    )
    #: Lead creation rate grows linearly over the history by this factor (end vs start).
    growth: float = 1.6


@dataclass(frozen=True)
class LeadParams:
    """logit P(convert within 60 days | signals at the epoch start); see hazards.lead_logit."""

    intercept: float = -3.7
    #: Order of vocab.LEAD_SOURCES.
    source: tuple[float, ...] = (1.1, 0.7, 0.5, 0.35, 0.1, 0.0, -0.5, -0.85, -1.3)
    #: Order of contract.COMPANY_SIZES.
    company_size: tuple[float, ...] = (-0.35, 0.0, 0.25, 0.35, 0.25, 0.0)
    #: Order of contract.JOB_SENIORITIES.
    job_seniority: tuple[float, ...] = (-0.35, 0.0, 0.25, 0.35, 0.25)
    #: Order of vocab.INDUSTRIES.
    industry: tuple[float, ...] = (0.35, 0.0, 0.1, 0.0, 0.1, -0.1, 0.0, 0.1, 0.0, -0.1, -0.35, 0.0)
    #: Custom attribute annual_revenue_musd: + revenue * log10(clip(rev, 0.1, 1e4)).
    revenue: float = 0.12
    #: Engagement in the last 28 days (ln(1 + count)), ever-counts and flags.
    web_28d: float = 0.42
    pricing_28d: float = 0.72
    email_28d: float = 0.25
    meetings_28d: float = 0.85
    content_ever: float = 0.18
    demo_ever: float = 1.2
    #: Interactions: a demo requested by a senior buyer; pricing interest at a large company.
    demo_x_senior: float = 0.7
    pricing_x_large: float = 0.5
    #: Silence = min(days since the last activity, 90) / 90; age = min(lead age, 365) / 365.
    silence: float = -1.2
    age: float = -0.7
    #: Leads that do not convert are lost within the epoch with
    #: P = sigmoid(lost_intercept + lost_silence*silence + lost_age*age).
    lost_intercept: float = -1.6
    lost_silence: float = 1.5
    lost_age: float = 1.0


@dataclass(frozen=True)
class PurchaseParams:
    """Affinity model: score(i, j) = u_i . v_j + b_j; P(j | order of i) ∝ exp(score)."""

    #: Category centres and product offsets of the product factors v_j.
    category_sd: float = 1.0
    product_sd: float = 0.5
    #: Customer factors u_i = segment effect + industry effect + individual taste.
    segment_sd: float = 0.25
    industry_sd: float = 0.2
    customer_sd: float = 0.35
    #: Popularity bias b_j = N(0, popularity_sd) - price_elasticity * ln(price / median price).
    popularity_sd: float = 0.7
    price_elasticity: float = 0.25
    #: Extra units on repeatable products: quantity = 1 + Poisson(extra_units).
    extra_units: float = 0.4
    #: Order discounts (amount = quantity * price * factor).
    discount_factors: tuple[float, ...] = (1.0, 0.9, 0.8)
    discount_weights: tuple[float, ...] = (0.8, 0.15, 0.05)
    #: Owned non-repeatable products are rejected and redrawn up to this many rounds.
    max_redraws: int = 8


@dataclass(frozen=True)
class ValueParams:
    """Customer value truth: the horizon, the margin and the cost to serve (see crmdata.synth.value).

    margin = gross_margin * spend - cost_to_serve, with cost_to_serve = ticket_cost *
    support tickets + complaint_cost * complaints. The defaults leave a minority of
    customers (quiet ones who still call support) with a negative expected margin.
    """

    horizon_days: int = 365
    gross_margin: float = 0.30
    ticket_cost: float = 25.0
    complaint_cost: float = 100.0
    #: Replicate futures per active subscriber (their later churn decisions are simulated).
    mc_replicates: int = 2


@dataclass(frozen=True)
class WorldParams:
    behaviour: BehaviourParams = field(default_factory=BehaviourParams)
    churn: ChurnParams = field(default_factory=ChurnParams)
    lead_behaviour: LeadBehaviourParams = field(default_factory=LeadBehaviourParams)
    lead: LeadParams = field(default_factory=LeadParams)
    purchase: PurchaseParams = field(default_factory=PurchaseParams)
    value: ValueParams = field(default_factory=ValueParams)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
