"""Customers week by week: health, interactions, order times and churn decisions.

Each customer carries a hidden health that follows an AR(1) with occasional
negative shocks (a bad experience). Health drives every event rate: logins,
tickets, complaints, survey answers, e-mail opens and orders. The simulator
writes the events and counts them in weekly buckets.

Every 13 weeks (a churn epoch starting at c) each active subscriber is decided:
it churns with the exact probability ``hazards.churn_probability(signals at c)``,
computed from those buckets (events before c only), and if so its subscription
ends at a uniform time in [c, c + 90 days). The label "ends within 90 days of
c" is therefore that decision itself. Health never enters the decision: it only
shapes the events a model can see.

Loops run over weeks only; every step is vectorized over customers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from crmdata.contract import InteractionType
from crmdata.synth.config import CHURN_EPOCH_WEEKS, CHURN_WINDOW_DAYS, DAY_S, WEEK_S, Calendar
from crmdata.synth.customers import Roster
from crmdata.synth.epochs import NEVER, EpochRate, EpochTruth
from crmdata.synth.hazards import (
    LOGIN_PREVIOUS_WEEKS,
    LOGIN_RECENT_WEEKS,
    ORDER_WEEKS,
    SUPPORT_WEEKS,
    ChurnSignals,
    churn_probability,
    sigmoid,
)
from crmdata.synth.params import BehaviourParams, ChurnParams
from crmdata.synth.sampling import thinned_events

log = logging.getLogger(__name__)

#: Interaction type codes: index into this tuple (the contract's order).
INTERACTION_TYPES: tuple[str, ...] = tuple(t.value for t in InteractionType)
_CODE = {t: np.uint8(i) for i, t in enumerate(INTERACTION_TYPES)}
_NO_ORDER = np.iinfo(np.int64).min
#: E-mail campaigns go out two days into their week at 09:00 UTC.
_CAMPAIGN_OFFSET_S = 2 * DAY_S + 9 * 3600


@dataclass
class CustomerHistory:
    """Everything the weekly simulation produced, as flat arrays in week order."""

    interaction_customer: np.ndarray  # int32 roster index
    interaction_s: np.ndarray  # int32 seconds since the origin
    interaction_type: np.ndarray  # uint8 index into INTERACTION_TYPES
    interaction_value: np.ndarray  # float32, NaN unless nps/csat
    #: Orders, grouped by week, then by customer, in time order within a customer.
    order_customer: np.ndarray  # int32
    order_s: np.ndarray  # int32
    subscription_end_s: np.ndarray  # int64 per customer, NEVER while (or if never) subscribed
    truth: list[EpochTruth]
    rates: list[EpochRate]
    #: Customer state at each requested cutoff, in week order.
    states: list[CutoffState] = field(default_factory=list)


class _Buckets:
    """Customer indexes of one event type, per week, for the trailing windows."""

    def __init__(self, keep_weeks: int) -> None:
        self.keep = keep_weeks
        self.weeks: list[np.ndarray] = []

    def add(self, idx: np.ndarray) -> None:
        self.weeks.append(idx.astype(np.int32, copy=False))
        old = len(self.weeks) - 1 - self.keep
        if old >= 0:
            self.weeks[old] = np.empty(0, np.int32)  # never read again

    def count(self, first: int, last: int, n: int) -> np.ndarray:
        """Events per customer in weeks [first, last) (clipped to the history)."""
        parts = self.weeks[max(first, 0) : max(last, 0)]
        if not parts:
            return np.zeros(n, dtype=np.int64)
        return np.bincount(np.concatenate(parts), minlength=n)[:n]


# --- the process itself: one definition, used by the simulation and by the value truth ----------
#
# crmdata.synth.value draws replicate futures of the same customers with these
# functions (and takes closed-form expectations of the same rates), so the truth
# is an expectation over exactly the process that wrote the tables.


def advance_health(h: np.ndarray, mean: np.ndarray, b: BehaviourParams, rng: np.random.Generator) -> np.ndarray:
    """One weekly AR(1) step of ``h`` (in place) towards ``mean``, plus shocks; returns the shocked.

    A shock picks a random entry (with replacement), so an entry gets Poisson(shock_rate)
    shocks a week; ``h[shocked] -= size`` lowers a twice-shocked entry only once.
    """
    n = h.size
    h *= np.float32(b.health_rho)
    h += np.float32(1.0 - b.health_rho) * mean
    h += np.float32(b.health_sigma) * rng.standard_normal(n, dtype=np.float32)
    shocked = rng.integers(0, n, int(rng.poisson(n * b.shock_rate)), dtype=np.int32)
    h[shocked] -= np.float32(b.shock_size)
    return shocked


def login_rate(level: np.ndarray, h: np.ndarray, factor: np.ndarray, b: BehaviourParams) -> np.ndarray:
    """Expected logins in the week: exp(level + login_health * h) * state factor."""
    lam = np.exp(level + np.float32(b.login_health) * h)
    lam *= factor
    return lam


def order_rate(level: np.ndarray, h: np.ndarray, factor: np.ndarray, b: BehaviourParams) -> np.ndarray:
    """Expected orders in the week: order_level * exp(order_health * h) * state factor."""
    lam = np.exp(np.float32(b.order_health) * h)
    lam *= level
    lam *= factor
    return lam


def ticket_rate(h: np.ndarray, factor: np.ndarray, b: BehaviourParams) -> np.ndarray:
    """Support tickets per week before the cap (the cap is ``b.ticket_cap``), shocks aside."""
    return b.ticket_base * np.exp(b.ticket_health * h) * factor


def complaint_rate(h: np.ndarray, factor: np.ndarray, b: BehaviourParams) -> np.ndarray:
    """Complaints per week before the cap (``b.complaint_cap``), shocks aside."""
    return b.complaint_base * np.exp(b.complaint_health * h) * factor


def nps_scores(h: np.ndarray, b: BehaviourParams, rng: np.random.Generator) -> np.ndarray:
    """NPS answers (0-10) of customers with health ``h``."""
    score = np.round(b.nps_mid + b.nps_health * h + b.nps_sd * rng.standard_normal(h.size))
    return np.clip(score, 0, 10).astype(np.float32)


@dataclass
class CutoffState:
    """The exact state of the customers signed up before a cutoff, at its start.

    Taken before the cutoff's own churn decision, which is part of the future: its
    probability ``p_churn`` (of the ``eligible`` subscribers) is known, its draw is not.
    Customers [0, n) are those signed up before the cutoff (the roster is sorted).
    The known-past counts are those of the eligible subscribers, which the churn rule
    at the next epoch reads from weeks before the cutoff.
    """

    week: int
    n: int
    health: np.ndarray  # float32 (n,), the health of the week before the cutoff
    order_factor: np.ndarray  # float32 (n,)
    rare_factor: np.ndarray  # float32 (n,)
    active_sub: np.ndarray  # bool (n,)
    end_s: np.ndarray  # int64 (n,), NEVER unless a subscription ends or has ended
    eligible: np.ndarray  # int64 indexes of the subscribers decided at the cutoff
    p_churn: np.ndarray  # float64, one per eligible
    past_logins: np.ndarray  # eligible: logins in [cutoff - PAST_LOGIN_WEEKS weeks, cutoff)
    past_orders: np.ndarray  # eligible: orders in [cutoff - PAST_ORDER_WEEKS weeks, cutoff)
    last_order_s: np.ndarray  # eligible, int64 (_NO_ORDER when none)
    last_nps: np.ndarray  # eligible, float32 (NaN when none)


#: Weeks before a cutoff that the churn rule at the *next* epoch still reads.
PAST_LOGIN_WEEKS = LOGIN_RECENT_WEEKS + LOGIN_PREVIOUS_WEEKS - CHURN_EPOCH_WEEKS
PAST_ORDER_WEEKS = ORDER_WEEKS - CHURN_EPOCH_WEEKS
NO_ORDER = _NO_ORDER


def simulate_customers(
    roster: Roster,
    calendar: Calendar,
    behaviour: BehaviourParams,
    rule: ChurnParams,
    rng: np.random.Generator,
    state_weeks: Sequence[int] = (),
) -> CustomerHistory:
    """Simulate every customer over the whole history (vectorized over customers).

    ``state_weeks`` (churn truth cutoffs): record the customers' exact state there.
    """
    return _CustomerSimulation(roster, calendar, behaviour, rule, rng, state_weeks).run()


@dataclass
class _Events:
    """Events of one type in one week: customer index, time (s), type, survey value."""

    customer: np.ndarray
    seconds: np.ndarray
    kind: str
    value: np.ndarray | None = None


class _CustomerSimulation:
    """The state of every customer, advanced one week at a time."""

    def __init__(
        self,
        roster: Roster,
        calendar: Calendar,
        behaviour: BehaviourParams,
        rule: ChurnParams,
        rng: np.random.Generator,
        state_weeks: Sequence[int] = (),
    ) -> None:
        b = behaviour
        self.roster, self.calendar, self.b, self.rule, self.rng = roster, calendar, behaviour, rule, rng
        n_all = roster.n
        # Customers signed up before week w starts are the first active_from[w] (sorted roster).
        self.active_from = np.searchsorted(roster.first_week, np.arange(calendar.weeks + 1), side="right")
        stationary_sd = b.health_sigma / np.sqrt(1.0 - b.health_rho**2)
        self.health = (roster.health_mean + stationary_sd * rng.standard_normal(n_all)).astype(np.float32)
        self.subscribed = roster.subscribed
        self.managed = roster.subscribed & (roster.segment >= 2)  # mid-market and enterprise accounts
        self.end_s = np.full(n_all, NEVER, dtype=np.int64)
        self.decided = np.zeros(n_all, dtype=bool)
        self.last_nps = np.full(n_all, np.nan, dtype=np.float32)
        self.last_order_s = np.full(n_all, _NO_ORDER, dtype=np.int64)
        # The customer's state, kept as the rate multipliers it implies and updated only
        # when it changes (a churn decision, an end, going dormant) instead of every week.
        self.active_sub = roster.subscribed.copy()
        self.lapsed = np.zeros(n_all, dtype=bool)  # ex-subscriber or dormant
        self.login_factor = np.where(roster.subscribed, 1.0, b.login_factor_transactional).astype(np.float32)
        self.order_factor = np.ones(n_all, dtype=np.float32)
        self.rare_factor = np.where(roster.subscribed, 1.0, b.rare_factor_transactional).astype(np.float32)
        self.pending = np.empty(0, dtype=np.int64)  # leavers whose subscription has not ended yet
        self.order_level = (b.order_base * roster.order_propensity).astype(np.float32)
        # Trailing weekly counts the churn rule reads.
        self.logins = _Buckets(LOGIN_RECENT_WEEKS + LOGIN_PREVIOUS_WEEKS)
        self.tickets = _Buckets(SUPPORT_WEEKS)
        self.complaints = _Buckets(SUPPORT_WEEKS)
        self.orders = _Buckets(ORDER_WEEKS)
        self.inter_chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self.order_chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self.truth: list[EpochTruth] = []
        self.rates: list[EpochRate] = []
        self.state_weeks = set(state_weeks)
        self.states: list[CutoffState] = []

    def run(self) -> CustomerHistory:
        epochs = set(self.calendar.churn_epoch_weeks)
        truth_weeks = set(self.calendar.churn_truth_weeks)
        for week in range(self.calendar.weeks):
            start = week * WEEK_S
            n = int(self.active_from[week])
            if week in epochs:
                state = self._state(week) if week in self.state_weeks else None
                eligible, p_churn = self._decide_churn(week, n, record=week in truth_weeks)
                if state is not None:
                    self.states.append(self._with_decision(state, eligible, p_churn, n))
            self._end_subscriptions(start)
            if n == 0:  # nobody has signed up yet: keep the weekly buckets aligned
                for buckets in (self.logins, self.tickets, self.complaints, self.orders):
                    buckets.add(np.empty(0, np.int32))
                continue
            self._week(week, n)

        history = CustomerHistory(
            interaction_customer=_cat([c[0] for c in self.inter_chunks], np.int32),
            interaction_s=_cat([c[1] for c in self.inter_chunks], np.int32),
            interaction_type=_cat([c[2] for c in self.inter_chunks], np.uint8),
            interaction_value=_cat([c[3] for c in self.inter_chunks], np.float32),
            order_customer=_cat([c[0] for c in self.order_chunks], np.int32),
            order_s=_cat([c[1] for c in self.order_chunks], np.int32),
            subscription_end_s=self.end_s,
            truth=self.truth,
            rates=self.rates,
            states=self.states,
        )
        log.info(
            "customers: %d interactions, %d orders, %d subscriptions ended",
            history.interaction_s.size,
            history.order_s.size,
            int((self.end_s != NEVER).sum()),
        )
        return history

    # --- churn -------------------------------------------------------------------------

    def _state(self, week: int) -> CutoffState:
        """The state of the customers signed up before ``week`` starts (before its decision)."""
        m = int(np.searchsorted(self.roster.signup_s, week * WEEK_S, side="left"))
        empty = np.empty(0, dtype=np.int64)
        return CutoffState(
            week=week,
            n=m,
            health=self.health[:m].copy(),
            order_factor=self.order_factor[:m].copy(),
            rare_factor=self.rare_factor[:m].copy(),
            active_sub=self.active_sub[:m].copy(),
            end_s=self.end_s[:m].copy(),
            eligible=empty,
            p_churn=np.empty(0),
            past_logins=empty,
            past_orders=empty,
            last_order_s=empty,
            last_nps=np.empty(0, np.float32),
        )

    def _with_decision(self, state: CutoffState, eligible: np.ndarray, p_churn: np.ndarray, n: int) -> CutoffState:
        """Add the cutoff's decision probabilities and what the next decision reads from the past."""
        week = state.week
        state.eligible = eligible.astype(np.int64)
        state.p_churn = p_churn.astype(np.float64)
        state.past_logins = self.logins.count(week - PAST_LOGIN_WEEKS, week, n)[eligible]
        state.past_orders = self.orders.count(week - PAST_ORDER_WEEKS, week, n)[eligible]
        state.last_order_s = self.last_order_s[eligible].copy()
        state.last_nps = self.last_nps[eligible].copy()
        return state

    def _decide_churn(self, week: int, n: int, record: bool) -> tuple[np.ndarray, np.ndarray]:
        """Decide every active subscriber at the epoch start, from the signals only."""
        start = week * WEEK_S
        roster = self.roster
        eligible = np.flatnonzero(self.subscribed[:n] & ~self.decided[:n] & (roster.signup_s[:n] < start))
        last_order = self.last_order_s[eligible]
        signals = ChurnSignals(
            logins_28d=self.logins.count(week - LOGIN_RECENT_WEEKS, week, n)[eligible],
            logins_prev_84d=self.logins.count(
                week - LOGIN_RECENT_WEEKS - LOGIN_PREVIOUS_WEEKS, week - LOGIN_RECENT_WEEKS, n
            )[eligible],
            tickets_91d=self.tickets.count(week - SUPPORT_WEEKS, week, n)[eligible],
            complaints_91d=self.complaints.count(week - SUPPORT_WEEKS, week, n)[eligible],
            nps_last=self.last_nps[eligible].astype(np.float64),
            tenure_days=(start - roster.signup_s[eligible]) / DAY_S,  # the subscription started at sign-up
            monthly_price=roster.monthly_price[eligible],
            days_since_last_order=np.where(last_order == _NO_ORDER, np.nan, (start - last_order) / DAY_S),
            orders_182d=self.orders.count(week - ORDER_WEEKS, week, n)[eligible],
            loyalty_tier=roster.loyalty_tier[eligible],
        )
        p_churn = churn_probability(signals, self.rule)
        churn = self.rng.random(eligible.size) < p_churn
        leavers = eligible[churn]
        self.end_s[leavers] = start + self.rng.integers(0, CHURN_WINDOW_DAYS * DAY_S, leavers.size)
        self.decided[leavers] = True
        self.login_factor[leavers] = self.b.login_factor_leaving
        self.pending = np.concatenate([self.pending, leavers])
        self.rates.append(EpochRate(week, int(eligible.size), int(churn.sum())))
        if record:
            self.truth.append(EpochTruth(week, eligible, p_churn, churn, signals.columns()))
        return eligible, p_churn

    def _end_subscriptions(self, start: int) -> None:
        """Subscriptions whose end has come by the start of this week stop being active."""
        if not self.pending.size:
            return
        over = self.end_s[self.pending] <= start
        ended, self.pending = self.pending[over], self.pending[~over]
        self.active_sub[ended] = False
        self.lapsed[ended] = True
        self.login_factor[ended] = self.b.login_factor_churned
        self.order_factor[ended] = self.b.order_factor_churned
        self.rare_factor[ended] = self.b.rare_factor_churned

    # --- one week of events ----------------------------------------------------------------

    def _week(self, week: int, n: int) -> None:
        b, rng = self.b, self.rng
        start = week * WEEK_S
        end = start + WEEK_S
        h, shocked = self._advance_health(n)

        # Logins: dense (most active subscribers log in most weeks).
        login = _repeat_index(rng.poisson(login_rate(self.roster.login_level[:n], h, self.login_factor[:n], b)))
        logins = _Events(login, start + rng.integers(0, WEEK_S, login.size, dtype=np.int64), "login")

        tickets, complaints = self._support(h, n, shocked, start)
        nps, csat = self._surveys(h, n, tickets, start, end)
        email = self._email(h, n, week, start, end)
        meetings, calls = self._touch_points(n, start)

        # Orders: dense Poisson; products are chosen later from the affinities.
        lam = order_rate(self.order_level[:n], h, self.order_factor[:n], b)
        order_idx, order_s = _spread_in_week(rng.poisson(lam), start, rng)

        self._go_dormant(n)
        self._collect([logins, tickets, complaints, nps, csat, *email, meetings, calls])
        self.order_chunks.append((order_idx, order_s.astype(np.int32)))
        self.logins.add(logins.customer)
        self.tickets.add(tickets.customer)
        self.complaints.add(complaints.customer)
        self.orders.add(order_idx)
        assert nps.value is not None
        self.last_nps[nps.customer] = nps.value  # one answer per customer-week: unambiguous
        # Orders are grouped by customer in time order: the last of a group is the latest.
        if order_idx.size:
            last = np.flatnonzero(np.r_[order_idx[1:] != order_idx[:-1], True])
            self.last_order_s[order_idx[last]] = order_s[last]

    def _advance_health(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """AR(1) step towards each customer's mean, plus shocks; returns a view and the shocked."""
        h = self.health[:n]
        return h, advance_health(h, self.roster.health_mean[:n], self.b, self.rng)

    def _support(self, h: np.ndarray, n: int, shocked: np.ndarray, start: int) -> tuple[_Events, _Events]:
        """Tickets and complaints: rare, so drawn by thinning; shocks add more."""
        b, rng, factor = self.b, self.rng, self.rare_factor
        ticket = thinned_events(rng, n, b.ticket_cap, lambda i: ticket_rate(h[i], factor[i], b))
        ticket = np.concatenate([ticket, shocked[rng.random(shocked.size) < b.shock_ticket_prob]])
        tickets = _Events(ticket, start + rng.integers(0, WEEK_S, ticket.size, dtype=np.int64), "support_ticket")
        complaint = thinned_events(rng, n, b.complaint_cap, lambda i: complaint_rate(h[i], factor[i], b))
        complaint = np.concatenate([complaint, shocked[rng.random(shocked.size) < b.shock_complaint_prob]])
        complaints = _Events(complaint, start + rng.integers(0, WEEK_S, complaint.size, dtype=np.int64), "complaint")
        return tickets, complaints

    def _surveys(self, h: np.ndarray, n: int, tickets: _Events, start: int, end: int) -> tuple[_Events, _Events]:
        """At most one NPS answer per customer-week; a CSAT answer after some tickets."""
        b, rng, active = self.b, self.rng, self.active_sub
        cap = max(b.nps_rate_subscriber, b.nps_rate_other)
        who = np.unique(
            thinned_events(rng, n, cap, lambda i: np.where(active[i], b.nps_rate_subscriber, b.nps_rate_other))
        )
        when = start + rng.integers(0, WEEK_S, who.size, dtype=np.int64)
        nps = _Events(who, when, "nps", nps_scores(h[who], b, rng))
        answered = rng.random(tickets.customer.size) < b.csat_prob
        who = tickets.customer[answered]
        when = np.minimum(tickets.seconds[answered] + rng.integers(600, 2 * DAY_S, who.size), end - 1)
        score = np.round(b.csat_mid + b.csat_health * h[who] + b.csat_sd * rng.standard_normal(who.size))
        return nps, _Events(who, when, "csat", np.clip(score, 1, 5).astype(np.float32))

    def _email(self, h: np.ndarray, n: int, week: int, start: int, end: int) -> list[_Events]:
        """A campaign every few weeks; opens depend on health, clicks on opens."""
        b, rng = self.b, self.rng
        if week % b.email_every_weeks == 0:
            sent = np.flatnonzero(rng.random(n, dtype=np.float32) < b.email_send_prob).astype(np.int32)
        else:
            sent = np.empty(0, np.int32)
        sent_s = start + _CAMPAIGN_OFFSET_S + rng.integers(0, 3600, sent.size, dtype=np.int64)
        p_open = sigmoid(
            b.email_open_intercept + b.email_open_health * h[sent] + b.email_open_churned * self.lapsed[sent]
        )
        opened = rng.random(sent.size) < p_open
        opens, open_s = sent[opened], np.minimum(sent_s[opened] + rng.integers(60, 2 * DAY_S, opened.sum()), end - 1)
        clicked = rng.random(opens.size) < b.email_click_prob
        click_s = np.minimum(open_s[clicked] + rng.integers(5, 900, clicked.sum()), end - 1)
        return [
            _Events(sent, sent_s, "email_sent"),
            _Events(opens, open_s, "email_open"),
            _Events(opens[clicked], click_s, "email_click"),
        ]

    def _touch_points(self, n: int, start: int) -> tuple[_Events, _Events]:
        """Account-management meetings (mid-market, enterprise) and calls (all subscribers)."""
        b, rng, active, managed = self.b, self.rng, self.active_sub, self.managed
        meeting = thinned_events(rng, n, b.meeting_rate, lambda i: b.meeting_rate * (managed[i] & active[i]))
        meetings = _Events(meeting, start + rng.integers(0, WEEK_S, meeting.size, dtype=np.int64), "meeting")
        call = thinned_events(rng, n, b.call_rate, lambda i: b.call_rate * active[i])
        calls = _Events(call, start + rng.integers(0, WEEK_S, call.size, dtype=np.int64), "call")
        return meetings, calls

    def _go_dormant(self, n: int) -> None:
        """Transactional customers and ex-subscribers go quiet for good."""
        gone = self.rng.integers(0, n, int(self.rng.poisson(n * self.b.dormancy_rate)), dtype=np.int32)
        gone = gone[~self.active_sub[gone]]
        self.lapsed[gone] = True
        self.login_factor[gone] = self.b.login_factor_dormant
        self.order_factor[gone] = self.b.order_factor_dormant
        self.rare_factor[gone] = self.b.rare_factor_churned

    def _collect(self, events: list[_Events]) -> None:
        """Append the week's interactions (grouped by type) to the output chunks."""
        self.inter_chunks.append(
            (
                np.concatenate([e.customer for e in events]).astype(np.int32),
                np.concatenate([e.seconds for e in events]).astype(np.int32),
                np.concatenate([np.full(e.customer.size, _CODE[e.kind], np.uint8) for e in events]),
                np.concatenate(
                    [e.value if e.value is not None else np.full(e.customer.size, np.nan, np.float32) for e in events]
                ),
            )
        )


def _spread_in_week(counts: np.ndarray, start: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Customer index and time of each order of the week, grouped by customer in time order.

    A customer's k orders of one week fall one in each k-th of the week (at a
    uniform time within it), so they are spread out and come out already sorted.
    """
    rows = np.flatnonzero(counts).astype(np.int32)
    k = counts[rows]
    idx = np.repeat(rows, k)
    size = np.repeat(k, k)
    first = np.repeat(np.cumsum(k) - k, k)
    slot = np.arange(idx.size) - first
    when = start + ((slot + rng.random(idx.size)) * (WEEK_S / size)).astype(np.int64)
    return idx, np.minimum(when, start + WEEK_S - 1)


def _repeat_index(counts: np.ndarray) -> np.ndarray:
    """Row index repeated by its count (only the non-zero rows are touched)."""
    rows = np.flatnonzero(counts).astype(np.int32)
    return np.repeat(rows, counts[rows])


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
