"""The customer roster: who signs up when, through which channel, on which plan.

Customers come from three places: an initial base already signed up before the
history starts, direct sign-ups during the history (organic, paid, referral …),
and converted leads (channel "sales", signup_at = the lead's converted_at). The
roster is sorted by sign-up time, so customer ids grow with signup_at and the
customers active in any week are a prefix of the arrays.

Each customer also gets hidden traits that drive behaviour: a health mean, a
login propensity and an order propensity. Models never see them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from crmdata.synth import vocab
from crmdata.synth.config import WEEK_S, Calendar, WorldConfig
from crmdata.synth.leads import LeadWorld, segment_of_leads
from crmdata.synth.params import BehaviourParams
from crmdata.synth.sampling import choose, choose_rows, growing_times

log = logging.getLogger(__name__)

#: Sign-ups during the history grow by this factor from the first to the last week.
SIGNUP_GROWTH = 1.5


@dataclass
class Roster:
    signup_s: np.ndarray  # int64 seconds since the origin (negative for the initial base), sorted
    country: np.ndarray
    segment: np.ndarray
    industry: np.ndarray
    channel: np.ndarray
    lead_index: np.ndarray  # int64 index into the leads, -1 for direct sign-ups
    subscribed: np.ndarray  # bool: holds one subscription, started at sign-up
    plan: np.ndarray
    monthly_price: np.ndarray
    loyalty_tier: np.ndarray
    health_mean: np.ndarray
    login_level: np.ndarray  # ln of the weekly login rate at health 0
    order_propensity: np.ndarray  # mean-1 multiplier of the weekly order rate

    @property
    def n(self) -> int:
        return int(self.signup_s.size)

    @property
    def first_week(self) -> np.ndarray:
        """First week with events: the week after the sign-up week (0 for the initial base)."""
        return np.maximum(self.signup_s // WEEK_S + 1, 0).astype(np.int32)


def build_roster(
    config: WorldConfig,
    calendar: Calendar,
    leads: LeadWorld,
    behaviour: BehaviourParams,
    rng: np.random.Generator,
) -> Roster:
    converted = np.flatnonzero(leads.converted)
    n_direct = max(config.customers - converted.size, 0)
    if converted.size > config.customers:
        log.warning(
            "%d leads converted, more than the %d customers asked for; the world has %d customers",
            converted.size,
            config.customers,
            converted.size,
        )
    n_initial = round(config.initial_share * n_direct)
    first = config.first_signup
    span = calendar.seconds_of(datetime(first.year, first.month, first.day, tzinfo=UTC))  # < 0
    # The initial base: signed up between first_signup and the origin, more of them
    # recently (survivors of older cohorts are fewer); strictly before the origin.
    initial_s = np.minimum(np.floor(span * rng.random(n_initial) ** 2).astype(np.int64), -1)
    direct_s = growing_times(rng, n_direct - n_initial, calendar.end_s, SIGNUP_GROWTH)
    signup = np.concatenate([initial_s, direct_s, leads.converted_s[converted]])
    lead_index = np.concatenate([np.full(n_direct, -1, np.int64), converted.astype(np.int64)])

    country = choose(rng, vocab.COUNTRY_WEIGHTS, signup.size)
    segment = choose(rng, vocab.SEGMENT_WEIGHTS, signup.size)
    industry = choose(rng, vocab.INDUSTRY_WEIGHTS, signup.size)
    channel = choose(rng, vocab.DIRECT_CHANNEL_WEIGHTS, signup.size)
    from_lead = lead_index >= 0
    src = lead_index[from_lead]
    country[from_lead] = leads.country[src]
    industry[from_lead] = leads.industry[src]
    segment[from_lead] = segment_of_leads(leads.company_size[src])
    channel[from_lead] = vocab.SALES_CHANNEL

    share = np.where(
        from_lead,
        vocab.SUBSCRIBE_SHARE_CONVERTED_LEAD,
        np.asarray(vocab.SUBSCRIBE_SHARE_BY_SEGMENT)[segment],
    )
    subscribed = rng.random(signup.size) < share
    plan = choose_rows(rng, np.asarray(vocab.PLAN_WEIGHTS_BY_SEGMENT), segment)
    factor = np.asarray(vocab.PRICE_FACTORS)[choose(rng, vocab.PRICE_FACTOR_WEIGHTS, signup.size)]
    monthly_price = np.round(np.asarray(vocab.PLAN_PRICES)[plan] * factor, 2)

    health_mean = (
        rng.normal(0.0, behaviour.health_mean_sd, signup.size)
        + np.asarray(behaviour.health_channel_effect)[channel]
    ).astype(np.float32)
    login_level = (np.log(behaviour.login_base) + rng.normal(0.0, behaviour.login_sd, signup.size)).astype(
        np.float32
    )
    log_pi = rng.normal(-behaviour.order_sd**2 / 2, behaviour.order_sd, signup.size)
    order_propensity = (np.exp(log_pi) * np.asarray(behaviour.order_segment_factor)[segment]).astype(np.float32)
    # Loyalty tier: a static CRM field assigned at sign-up from the expected spend (noisy).
    score = log_pi + rng.normal(0.0, behaviour.loyalty_noise_sd, signup.size)
    edges = np.quantile(score, np.cumsum(vocab.LOYALTY_SHARES)[:-1]) if score.size else np.empty(0)
    loyalty_tier = np.searchsorted(edges, score, side="right").astype(np.int8)

    order = np.argsort(signup, kind="stable")
    roster = Roster(
        signup_s=signup[order],
        country=country[order],
        segment=segment[order],
        industry=industry[order],
        channel=channel[order],
        lead_index=lead_index[order],
        subscribed=subscribed[order],
        plan=plan[order],
        monthly_price=monthly_price[order],
        loyalty_tier=loyalty_tier[order],
        health_mean=health_mean[order],
        login_level=login_level[order],
        order_propensity=order_propensity[order],
    )
    log.info(
        "roster: %d customers (%d initial, %d direct, %d from leads), %d subscribers",
        roster.n,
        n_initial,
        n_direct - n_initial,
        converted.size,
        int(roster.subscribed.sum()),
    )
    return roster
