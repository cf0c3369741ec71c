"""Customer value truth: expected and realized spend and cost to serve over the next H days.

At each value cutoff c (a churn truth cutoff with c + H inside the history) every
customer signed up before c gets

- ``expected_spend`` = E[sum of order amounts in (c, c + H] | the world's exact state at c],
- ``expected_cost_to_serve`` = ticket_cost * E[support tickets] + complaint_cost * E[complaints],

taken over the generator's own processes (``crmdata.synth.activity``), and the
realized values read off the same arrays that become the lake's tables.

How the expectation is taken (docs/synthetic-world.md has the equations):

- **Health** is exogenous: an AR(1) with Gaussian noise and Bernoulli shocks, so
  E[exp(beta * h_{c+k}) | h at c] has a closed form (Gaussian and shock MGFs). Every
  event rate is ``level * exp(beta * h) * state factor``; what the weekly caps of
  tickets and complaints take off is tabulated (``_CapExcess``).
- **State factors** of customers who are not active, undecided subscribers move only
  by dormancy (an exogenous weekly hazard) and by a known subscription end: closed form.
- **Active subscribers** are decided at c with the exact probability of the rule
  (known); their later decisions (c + 13, 26, 39 weeks) read signals of a future that
  has not happened, so those customers get ``mc_replicates`` replicate futures drawn
  with the simulator's own functions (health step, rates, churn rule). The decisions
  are not drawn but carried as probabilities (survival weights), and within a replicate
  every event count that feeds only the expectation is replaced by its rate given the
  path (Rao-Blackwell), so the Monte-Carlo error comes from the health path and the
  signal draws alone. Its standard error is reported.
- **Order amounts**: an order's product is drawn from the softmax of the customer's
  affinities over the products still allowed; E[amount] per product is exact
  (quantity, discount and cent rounding), and so is the next order's expected amount
  given the products owned at c. Later orders find fewer non-repeatable products
  allowed (``OrderValues.spend``; see ``APPROXIMATIONS``).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import polars as pl

from crmdata.synth.activity import (
    INTERACTION_TYPES,
    NO_ORDER,
    PAST_LOGIN_WEEKS,
    PAST_ORDER_WEEKS,
    CutoffState,
    _Buckets,
    advance_health,
    complaint_rate,
    login_rate,
    nps_scores,
    order_rate,
    ticket_rate,
)
from crmdata.synth.catalog import Catalog
from crmdata.synth.config import (
    CHURN_EPOCH_WEEKS,
    CHURN_WINDOW_DAYS,
    DAY_S,
    US_PER_S,
    WEEK_S,
    Calendar,
)
from crmdata.synth.customers import Roster
from crmdata.synth.hazards import (
    LOGIN_PREVIOUS_WEEKS,
    LOGIN_RECENT_WEEKS,
    ORDER_WEEKS,
    SUPPORT_WEEKS,
    ChurnSignals,
    churn_probability,
)
from crmdata.synth.params import (
    BehaviourParams,
    ChurnParams,
    PurchaseParams,
    ValueParams,
    WorldParams,
)
from crmdata.synth.sampling import thinned_events
from crmdata.truth import (
    CUTOFF,
    EXPECTED_COMPLAINTS,
    EXPECTED_COST,
    EXPECTED_MARGIN,
    EXPECTED_ORDERS,
    EXPECTED_SPEND,
    EXPECTED_SPEND_SE,
    EXPECTED_TICKETS,
    HORIZON_DAYS,
    REALIZED_COMPLAINTS,
    REALIZED_COST,
    REALIZED_MARGIN,
    REALIZED_ORDERS,
    REALIZED_SPEND,
    REALIZED_TICKETS,
)

log = logging.getLogger(__name__)


#: What the expectation leaves out, each measured in docs/synthetic-world.md.
APPROXIMATIONS = (
    (
        "non-repeatable products bought inside the horizon leave later orders' choice by a mean-field "
        "recursion at the expected order count, over each customer's 32 likeliest such products"
    ),
    (
        "ticket and complaint caps: tabulated over the law of health (shock sums on a grid) at every 8th week, linear "
        "in between (1 % of the cap's effect); in the replicates' last weeks, the later decisions' mix is "
        "applied to uncapped rates"
    ),
    "a churn decision at the horizon's last epoch can only end a subscription at that very second: ignored",
)
#: Columns of the value truth (and of its empty table when no cutoff fits the history).
_SCHEMA = {
    CUTOFF: pl.Datetime("us", "UTC"),
    "customer_id": pl.String,
    HORIZON_DAYS: pl.Int64,
    EXPECTED_SPEND: pl.Float64,
    REALIZED_SPEND: pl.Float64,
    EXPECTED_COST: pl.Float64,
    REALIZED_COST: pl.Float64,
    EXPECTED_MARGIN: pl.Float64,
    REALIZED_MARGIN: pl.Float64,
    EXPECTED_ORDERS: pl.Float64,
    REALIZED_ORDERS: pl.Int64,
    EXPECTED_TICKETS: pl.Float64,
    REALIZED_TICKETS: pl.Int64,
    EXPECTED_COMPLAINTS: pl.Float64,
    REALIZED_COMPLAINTS: pl.Int64,
    EXPECTED_SPEND_SE: pl.Float64,
}
#: Rows (customers x replicates) simulated at once: bounds memory for large worlds.
_MC_ROWS = 1 << 16
#: Customers per chunk in the closed form and the order values.
_CHUNK = 1 << 13


def value_weeks(calendar: Calendar, horizon_days: int) -> list[int]:
    """Churn truth cutoffs whose whole horizon lies inside the history."""
    return [
        w for w in calendar.churn_truth_weeks if w * WEEK_S + horizon_days * DAY_S <= calendar.end_s
    ]


class _Horizon:
    """Week grid of the horizon (c, c + H]: weeks k = 0..K-1 after c, the last one maybe partial."""

    def __init__(self, horizon_days: int, b: BehaviourParams) -> None:
        if CHURN_WINDOW_DAYS > CHURN_EPOCH_WEEKS * 7:
            raise ValueError("a subscription decided at one epoch must end before the next one")
        full, rest = divmod(horizon_days, 7)
        self.weeks = full + (rest > 0)
        # Orders and rare events fall uniformly in expectation within a week (orders are
        # spread one per k-th of the week): the partial week counts pro rata.
        self.weight = np.ones(self.weeks)
        if rest:
            self.weight[-1] = rest / 7
        # Later churn epochs inside the horizon whose decision can end a subscription before
        # the last week starts (a later one only at the very second the last week starts).
        self.epochs = list(range(CHURN_EPOCH_WEEKS, self.weeks - 1, CHURN_EPOCH_WEEKS))
        #: Weeks simulated event by event: those before the last of those decisions.
        self.event_weeks = self.epochs[-1] if self.epochs else 0
        self.keep = np.exp(-b.dormancy_rate)  # P(no dormancy pick in a week): Poisson picks
        m = np.arange(self.weeks)
        self.kept = self.keep**m
        window = CHURN_WINDOW_DAYS * DAY_S
        # A leaver's end is uniform over the integer seconds [0, window) after the decision and
        # takes effect at the first week start at or after it; dormancy may follow each week.
        self.ended = np.minimum(1.0, (m * WEEK_S + 1) / window)
        ends_at = np.diff(np.r_[0.0, self.ended])
        since = m[:, None] - m[None, :]  # [week, end week]
        lapsed = np.where(since >= 0, self.keep ** np.maximum(since, 0), 0.0)
        dormant = np.where(since >= 0, 1.0 - lapsed, 0.0)
        #: Expected order factor m weeks after a "churn" decision (1 until the end).
        self.order_factor = (1.0 - self.ended) + (
            ends_at[None, :] * (b.order_factor_churned * lapsed + b.order_factor_dormant * dormant)
        ).sum(axis=1)


class _Moments:
    """E[exp(beta * h_k) | h_{-1} = h0] = exp(beta * mu) * exp(beta * a_k * (h0 - mu)) * C_k.

    h_k = rho^(k+1) h0 + (1 - rho^(k+1)) mu + sum_{m=0..k} rho^m (sigma eps - size * B),
    with eps ~ N(0, 1) and B ~ Bernoulli(1 - exp(-shock_rate)) (several shocks of one week
    lower health once) independent every week: the Gaussian and Bernoulli MGFs.
    """

    def __init__(self, beta: float, weeks: int, b: BehaviourParams) -> None:
        rho = b.health_rho
        k = np.arange(weeks)
        self.beta = beta
        self.a = rho ** (k + 1.0)
        variance = b.health_sigma**2 * np.cumsum(rho ** (2.0 * k))
        q = -np.expm1(-b.shock_rate)
        shocks = np.cumsum(np.log1p(q * np.expm1(-beta * b.shock_size * rho**k)))
        self.c = np.exp(0.5 * beta**2 * variance + shocks)

    def sums(self, h0: np.ndarray, mean: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """sum_k columns[j, k] * E[exp(beta h_k)] for each row and each column vector j (rows x j)."""
        # float32 inside: each sum has a few dozen positive terms (relative error ~1e-6).
        x = (np.float32(self.beta) * (h0.astype(np.float32) - mean.astype(np.float32))).astype(
            np.float32
        )
        e = np.exp(np.multiply.outer(x, self.a.astype(np.float32)))
        sums = (e @ (columns * self.c).T.astype(np.float32)).astype(np.float64)
        return np.exp(self.beta * mean.astype(np.float64))[:, None] * sums


class _CapExcess:
    """What a weekly cap takes off a rate: cap * E[(exp(z + Y_k) - 1)^+], tabulated over z.

    A capped rate is min(base * f * exp(beta h_k), cap) = cap * min(exp(z + Y_k), 1), with
    z = ln(base f / cap) + beta m_k (m_k: the mean of h_k without shocks) and
    Y_k = beta (G_k - size S_k): G_k Gaussian, S_k = sum_m rho^m B_m the decayed shocks.
    The law of S_k is carried on a grid week by week (S_k = rho S_(k-1) + B_k), and the
    expectation over G_k is the lognormal call formula. It is tabulated at every
    ``NODE_EVERY``-th week (weeks in between are linear in their neighbours).
    """

    Z0, DZ, NZ = -12.0, 0.1, 161
    DX, XMAX = 0.02, 4.0
    NODE_EVERY = 8

    def __init__(self, beta: float, cap: float, hz: _Horizon, b: BehaviourParams) -> None:

        weeks, rho = hz.weeks, b.health_rho
        self.beta, self.cap = beta, cap
        nodes = list(range(0, weeks, self.NODE_EVERY))
        if nodes[-1] != weeks - 1:
            nodes.append(weeks - 1)
        self.nodes = np.asarray(nodes)
        self.a = rho ** (self.nodes + 1.0)
        # Week k's value, linear between the nodes around it: L[k, node].
        at = np.clip(
            np.searchsorted(self.nodes, np.arange(weeks), side="right") - 1, 0, self.nodes.size - 2
        )
        frac = (np.arange(weeks) - self.nodes[at]) / (self.nodes[at + 1] - self.nodes[at])
        self.linear = np.zeros((weeks, self.nodes.size))
        self.linear[np.arange(weeks), at] = 1.0 - frac
        self.linear[np.arange(weeks), at + 1] += frac
        x = np.arange(0.0, self.XMAX + self.DX / 2, self.DX)
        mass = np.zeros(x.size)
        mass[0] = 1.0
        down = rho * np.arange(x.size)
        low = np.floor(down).astype(np.int64)
        up = down - low
        shift = round(1.0 / self.DX)
        q = -np.expm1(-b.shock_rate)
        variance = b.health_sigma**2 * np.cumsum(rho ** (2.0 * np.arange(weeks)))
        z = self.Z0 + self.DZ * np.arange(self.NZ)
        self.table = np.empty((self.nodes.size, self.NZ))
        node_of = {int(k): j for j, k in enumerate(self.nodes)}
        for k in range(weeks):
            moved = np.bincount(low, weights=mass * (1.0 - up), minlength=x.size)
            moved += np.bincount(
                np.minimum(low + 1, x.size - 1), weights=mass * up, minlength=x.size
            )
            mass = (1.0 - q) * moved
            mass[shift:] += q * moved[:-shift]  # (four shocks within a few weeks: dropped)
            if k in node_of:
                keep = mass > 1e-12
                mu = z[:, None] - beta * b.shock_size * x[keep][None, :]
                v = beta**2 * variance[k]
                call = np.exp(mu + v / 2) * normal_cdf((mu + v) / np.sqrt(v)) - normal_cdf(
                    mu / np.sqrt(v)
                )
                call = np.maximum(call, 0.0)
                self.table[node_of[k]] = cap * (call @ mass[keep])

    def position(self, mean_health: np.ndarray) -> np.ndarray:
        """Grid position of z for a unit level (base * factor = 1), rows x nodes."""
        return (np.log(1.0 / self.cap) + self.beta * mean_health - self.Z0) / self.DZ

    def sums(self, position: np.ndarray, log_level: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """sum over the nodes of weights * excess, for rows of log(base * factor) ``log_level``."""
        pos = position + (log_level / self.DZ)[:, None]
        i = np.clip(np.floor(pos).astype(np.int64), 0, self.NZ - 2)
        f = np.clip(pos - i, 0.0, 1.0)  # below the grid: no excess; above: the top value
        flat = i + (np.arange(self.nodes.size) * self.NZ)[None, :]
        table = self.table.ravel()
        excess = table[flat] + (table[flat + 1] - table[flat]) * f
        return (excess * weights).sum(axis=1)


def _cap_excess(
    state: CutoffState, roster: Roster, b: BehaviourParams, hz: _Horizon, caps: list[_CapExcess]
) -> tuple[np.ndarray, np.ndarray]:
    """Expected tickets and complaints the caps take off the closed form, per customer [0, n).

    Deciding subscribers' weeks before their last later decision are left out: the
    replicates apply the caps there exactly.
    """
    deciding = np.zeros(state.n, dtype=bool)
    deciding[state.eligible] = True
    p0 = np.zeros(state.n)
    p0[state.eligible] = state.p_churn
    late = hz.weight * (np.arange(hz.weeks) >= hz.event_weeks)
    churned = b.rare_factor_churned
    # Node weights of the state at the cutoff and of the churned/dormant state.
    linear = caps[0].linear  # the caps share their nodes
    kept, lapsed = (hz.weight * hz.kept) @ linear, (hz.weight * (1.0 - hz.kept)) @ linear
    stays, leaves = late @ linear, (late * hz.ended) @ linear
    a = caps[0].a
    out = [np.zeros(state.n) for _ in caps]
    for lo in range(0, state.n, _CHUNK):
        i = np.arange(lo, min(lo + _CHUNK, state.n))
        dec, p = deciding[i][:, None], p0[i][:, None]
        rf = np.where(state.active_sub[i], churned, state.rare_factor[i]).astype(np.float64)
        rf = np.where(deciding[i], 1.0, rf)
        as_now = np.where(dec, stays - p * leaves, kept)
        as_churned = np.where(dec, p * leaves, lapsed)
        h0, mu = state.health[i].astype(np.float64), roster.health_mean[i].astype(np.float64)
        m = np.multiply.outer(h0, a) + np.multiply.outer(mu, 1.0 - a)  # mean of h without shocks
        for cap, base, excess in zip(caps, (b.ticket_base, b.complaint_base), out, strict=True):
            position = cap.position(m)
            excess[i] = cap.sums(position, np.log(base * rf), as_now)
            excess[i] += cap.sums(position, np.full(i.size, np.log(base * churned)), as_churned)
    return out[0], out[1]


def normal_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF with relative error below 1.2e-7 (erfc of Numerical Recipes, "erfcc").

    numpy has no erf and scipy.special costs 0.7 s to import, more than the tables it serves.
    """
    y = np.abs(x) / np.sqrt(2.0)
    t = 1.0 / (1.0 + 0.5 * y)
    poly = -1.26551223 + t * (
        1.00002368
        + t
        * (
            0.37409196
            + t
            * (
                0.09678418
                + t
                * (
                    -0.18628806
                    + t
                    * (
                        0.27886807
                        + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))
                    )
                )
            )
        )
    )
    tail = 0.5 * t * np.exp(-y * y + poly)  # P(Z > |x|)
    return np.where(x >= 0, 1.0 - tail, tail)


def _closed_form(
    state: CutoffState,
    rows: np.ndarray,
    roster: Roster,
    b: BehaviourParams,
    hz: _Horizon,
    moments: list[_Moments],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact expected orders, tickets and complaints, except the deciding subscribers' later decisions.

    A customer who is not an active subscriber keeps its order and rare-event factors until
    it goes dormant (a weekly hazard); subscribers who left at an earlier epoch have ended
    by this one (the end comes within 90 days), so they are in that state from week 0.
    A deciding subscriber leaves at the cutoff with the rule's probability p; here it
    stays an active subscriber otherwise (the later decisions come from the replicates).
    """
    out = np.empty((3, rows.size))
    p0 = np.zeros(state.n)
    p0[state.eligible] = state.p_churn
    w = hz.weight
    for lo in range(0, rows.size, _CHUNK):
        i = rows[lo : lo + _CHUNK]
        deciding = np.zeros(state.n, dtype=bool)
        deciding[state.eligible] = True
        deciding = deciding[i]
        pending = state.active_sub[i] & ~deciding
        if np.any(state.end_s[i][pending] > state.week * WEEK_S):
            raise AssertionError(
                "a subscription decided at the previous epoch has not ended by this one"
            )
        p = p0[i]
        of = np.where(pending, b.order_factor_churned, state.order_factor[i]).astype(np.float64)
        rf = np.where(pending, b.rare_factor_churned, state.rare_factor[i]).astype(np.float64)
        h0, mu = state.health[i], roster.health_mean[i]
        level = (b.order_base * roster.order_propensity[i]).astype(np.float32).astype(np.float64)
        for row, (m, base, after, factor, dormant) in enumerate(
            (
                (moments[0], b.order_base, hz.order_factor, of, b.order_factor_dormant),
                (
                    moments[1],
                    b.ticket_base,
                    1.0 - (1.0 - b.rare_factor_churned) * hz.ended,
                    rf,
                    b.rare_factor_churned,
                ),
                (
                    moments[2],
                    b.complaint_base,
                    1.0 - (1.0 - b.rare_factor_churned) * hz.ended,
                    rf,
                    b.rare_factor_churned,
                ),
            )
        ):
            # Columns: kept (not dormant yet), all weeks, and the decision's effect.
            s = m.sums(h0, mu, np.stack([w * hz.kept, w, w * (1.0 - after)]))
            lapsed = factor * s[:, 0] + dormant * (s[:, 1] - s[:, 0])
            deciding_rate = s[:, 1] - p * s[:, 2]
            total = np.where(deciding, deciding_rate, lapsed)
            scale = level if row == 0 else base
            shock = b.shock_ticket_prob if row == 1 else b.shock_complaint_prob
            out[row, lo : lo + i.size] = scale * total + (
                0.0 if row == 0 else w.sum() * b.shock_rate * shock
            )
    return out[0], out[1], out[2]


class _Replicates:
    """Replicate futures of deciding subscribers (rows = customer x replicate, of any cutoffs).

    Every row starts as an active subscriber and stays one along its path: a decision is
    carried as a probability, and later decisions matter only for the share still
    subscribed, whose state factors are those of an active subscriber. Health is drawn
    week by week, and so are the events the later decisions read; what each row returns
    is the *correction* to the closed form (which leaves those later decisions out and
    ignores the ticket and complaint caps), an unbiased estimate of it given the path.
    """

    def __init__(
        self,
        cols: dict[str, np.ndarray],
        b: BehaviourParams,
        rule: ChurnParams,
        hz: _Horizon,
        rng: np.random.Generator,
    ) -> None:
        self.c, self.b, self.rule, self.hz, self.rng = cols, b, rule, hz, rng
        self.n = cols["health"].size

    def run(self, moments: list[_Moments]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b, c, hz, rng, n = self.b, self.c, self.hz, self.rng, self.n
        h = c["health"].copy()
        ones = np.ones(n, np.float32)
        p0 = c["p_churn"].astype(np.float32)
        survive = 1.0 - p0
        later: list[tuple[int, np.ndarray]] = []  # (epoch week, probability mass leaving there)
        d_orders, d_tickets, d_complaints = (np.zeros(n, np.float32) for _ in range(3))
        logins = _LoginSegments(hz.epochs, c["past_logins"], rng)
        ticket_b, complaint_b, order_b = (
            _Buckets(SUPPORT_WEEKS),
            _Buckets(SUPPORT_WEEKS),
            _Buckets(ORDER_WEEKS),
        )
        last_nps, last_order = c["last_nps"].copy(), c["last_order_s"].copy()
        churned = np.float32(1.0 - b.rare_factor_churned)
        nps_rate = b.nps_rate_subscriber
        ended_later = np.zeros(n, np.float32)
        for k in range(hz.event_weeks):
            if k in hz.epochs:
                signals = self._signals(
                    k,
                    c["week_s"] + k * WEEK_S,
                    logins,
                    ticket_b,
                    complaint_b,
                    order_b,
                    last_nps,
                    last_order,
                )
                p = churn_probability(signals, self.rule).astype(np.float32)
                later.append((k, survive * p))
                survive = survive * (1.0 - p)
            shocked = advance_health(h, c["health_mean"], b, rng)
            lam = order_rate(c["order_level"], h, ones, b)
            rates = (ticket_rate(h, ones, b), complaint_rate(h, ones, b))
            if later:
                # Later leavers: fewer orders after their end, and rare events at the churned rate.
                loss = sum(
                    mass * np.float32(1.0 - hz.order_factor[k - week]) for week, mass in later
                )
                ended_later = sum(mass * np.float32(hz.ended[k - week]) for week, mass in later)
                d_orders -= lam * loss
                d_tickets -= churned * rates[0] * ended_later
                d_complaints -= churned * rates[1] * ended_later
            # The caps, exact here: a capped rate falls short of the uncapped one by the excess.
            for d, rate, cap in (
                (d_tickets, rates[0], b.ticket_cap),
                (d_complaints, rates[1], b.complaint_cap),
            ):
                over = np.flatnonzero(rate > cap)
                r, e = rate[over], p0[over] * hz.ended[k] + ended_later[over]
                d[over] -= (1.0 - e) * (r - cap) + e * np.maximum(
                    r * b.rare_factor_churned - cap, 0.0
                )
            # The events the later decisions read, drawn as the simulator draws them.
            logins.add(k, login_rate(c["login_level"], h, ones, b))
            ticket = thinned_events(rng, n, b.ticket_cap, lambda i: ticket_rate(h[i], ones[i], b))
            ticket_b.add(
                np.concatenate([ticket, shocked[rng.random(shocked.size) < b.shock_ticket_prob]])
            )
            complaint = thinned_events(
                rng, n, b.complaint_cap, lambda i: complaint_rate(h[i], ones[i], b)
            )
            complaint_b.add(
                np.concatenate(
                    [complaint, shocked[rng.random(shocked.size) < b.shock_complaint_prob]]
                )
            )
            who = np.unique(thinned_events(rng, n, nps_rate, lambda i: np.full(i.size, nps_rate)))
            last_nps[who] = nps_scores(h[who], b, rng)
            order_b.add(self._orders(lam, k, last_order))
        if hz.event_weeks in hz.epochs:  # the last decision, read off the events drawn above
            start = c["week_s"] + hz.event_weeks * WEEK_S
            signals = self._signals(
                hz.event_weeks, start, logins, ticket_b, complaint_b, order_b, last_nps, last_order
            )
            later.append((hz.event_weeks, survive * churn_probability(signals, self.rule)))
        if later:
            # The weeks after the last decision, in closed form given the path so far.
            rest = np.arange(hz.event_weeks, hz.weeks)
            w = hz.weight[rest]
            for d, m, scale, vector in (
                (
                    d_orders,
                    moments[0],
                    c["order_level"],
                    lambda week: 1.0 - hz.order_factor[rest - week],
                ),
                (
                    d_tickets,
                    moments[1],
                    b.ticket_base * churned,
                    lambda week: hz.ended[rest - week],
                ),
                (
                    d_complaints,
                    moments[2],
                    b.complaint_base * churned,
                    lambda week: hz.ended[rest - week],
                ),
            ):
                tail = _Moments(m.beta, rest.size, b)
                columns = np.stack([w * vector(week) for week, _ in later])
                sums = tail.sums(h, c["health_mean"], columns)
                for j, (_, mass) in enumerate(later):
                    d -= scale * mass * sums[:, j]
        return (
            d_orders.astype(np.float64),
            d_tickets.astype(np.float64),
            d_complaints.astype(np.float64),
        )

    def _signals(
        self,
        k: int,
        start: np.ndarray,
        logins: _LoginSegments,
        ticket_b: _Buckets,
        complaint_b: _Buckets,
        order_b: _Buckets,
        last_nps: np.ndarray,
        last_order: np.ndarray,
    ) -> ChurnSignals:
        c, n = self.c, self.n
        past_orders = c["past_orders"] if k - ORDER_WEEKS < 0 else 0
        if k - ORDER_WEEKS < 0 and k - ORDER_WEEKS != -PAST_ORDER_WEEKS:
            raise ValueError(f"the order window starts {ORDER_WEEKS - k} weeks before the cutoff")
        return ChurnSignals(
            logins_28d=logins.count(k - LOGIN_RECENT_WEEKS, k),
            logins_prev_84d=logins.count(
                k - LOGIN_RECENT_WEEKS - LOGIN_PREVIOUS_WEEKS, k - LOGIN_RECENT_WEEKS
            ),
            tickets_91d=ticket_b.count(k - SUPPORT_WEEKS, k, n),
            complaints_91d=complaint_b.count(k - SUPPORT_WEEKS, k, n),
            nps_last=last_nps.astype(np.float64),
            tenure_days=(start - c["signup_s"]) / DAY_S,
            monthly_price=c["monthly_price"],
            days_since_last_order=np.where(
                last_order == NO_ORDER, np.nan, (start - last_order) / DAY_S
            ),
            orders_182d=order_b.count(k - ORDER_WEEKS, k, n) + past_orders,
            loyalty_tier=c["loyalty_tier"],
        )

    def _orders(self, lam: np.ndarray, week: int, last_order: np.ndarray) -> np.ndarray:
        """This week's orders (row index per order); updates the time of each row's last order.

        The same law as the simulator's Poisson count spread over the week, drawn for the
        rows with an order only: the count given at least one is 1 + Poisson(lam * (1 - T)),
        T the first arrival of a Poisson process of rate lam given T <= 1 (memorylessness).
        """
        rng = self.rng
        p_any = -np.expm1(-lam)
        hit = np.flatnonzero(rng.random(lam.size, dtype=np.float32) < p_any)
        start = self.c["week_s"][hit] + week * WEEK_S
        lam_hit = lam[hit].astype(np.float64)
        first = -np.log1p(-rng.random(hit.size) * p_any[hit]) / lam_hit
        count = 1 + rng.poisson(lam_hit * np.maximum(0.0, 1.0 - first))
        # The last of a week's k orders falls in the last k-th of the week.
        when = start + ((count - 1 + rng.random(hit.size)) * (WEEK_S / count)).astype(np.int64)
        last_order[hit] = np.minimum(when, start + WEEK_S - 1)
        return np.repeat(hit, count).astype(np.int32)


class _LoginSegments:
    """Login counts over the windows the churn rule reads, drawn once per piece of window.

    Logins of a week are Poisson(rate given health), so the count over a run of weeks
    is Poisson(sum of the rates): drawing per piece between window boundaries keeps
    the overlapping windows of consecutive epochs consistent.
    """

    def __init__(self, epochs: list[int], past: np.ndarray, rng: np.random.Generator) -> None:
        bounds = {0}
        for e in epochs:
            for x in (e - LOGIN_RECENT_WEEKS - LOGIN_PREVIOUS_WEEKS, e - LOGIN_RECENT_WEEKS, e):
                if x < 0 and x != -PAST_LOGIN_WEEKS:
                    raise ValueError(
                        f"a login window starts {-x} weeks before the cutoff; the state has {PAST_LOGIN_WEEKS}"
                    )
                bounds.add(max(x, 0))
        self.bounds = sorted(bounds)
        self.past, self.rng = past, rng
        self.pieces: dict[tuple[int, int], np.ndarray] = {}
        self.lam = np.zeros(past.size, np.float32)
        self.piece_start = 0

    def add(self, week: int, lam: np.ndarray) -> None:
        self.lam += lam
        if week + 1 in self.bounds:
            self.pieces[(self.piece_start, week + 1)] = self.rng.poisson(self.lam)
            self.lam = np.zeros(self.past.size, np.float32)
            self.piece_start = week + 1

    def count(self, first: int, last: int) -> np.ndarray:
        total = self.past.astype(np.int64) if first < 0 else np.zeros(self.past.size, np.int64)
        for (a, z), counts in self.pieces.items():
            if a >= max(first, 0) and z <= last:
                total = total + counts
        return total


def _replicate_columns(
    states: list[CutoffState], units: list[tuple[int, int]], roster: Roster, b: BehaviourParams
) -> dict[str, np.ndarray]:
    """Per-row inputs: for each (state, replicates) unit, its deciding subscribers that many times."""
    parts: dict[str, list[np.ndarray]] = {}
    for s, r in units:
        st = states[s]
        i = st.eligible
        columns = {
            "health": st.health[i],
            "health_mean": roster.health_mean[i],
            "login_level": roster.login_level[i],
            "order_level": (b.order_base * roster.order_propensity[i]).astype(np.float32),
            "signup_s": roster.signup_s[i],
            "monthly_price": roster.monthly_price[i],
            "loyalty_tier": roster.loyalty_tier[i],
            "p_churn": st.p_churn,
            "past_logins": st.past_logins,
            "past_orders": st.past_orders,
            "last_order_s": st.last_order_s,
            "last_nps": st.last_nps,
            "week_s": np.full(i.size, st.week * WEEK_S, dtype=np.int64),
        }
        for name, col in columns.items():
            parts.setdefault(name, []).append(
                np.tile(col, r)
            )  # row q * m + j: replicate q of subscriber j
    return {name: np.concatenate(cols) for name, cols in parts.items()}


class OrderValues:
    """Expected spend of a customer's next orders, given the non-repeatable products it owns.

    An order's product is drawn from softmax(u_i . v_j + b_j) over the allowed products,
    so the first order's E[amount] = sum_allowed w_ij a_j / sum_allowed w_ij, with
    w_ij = exp(score_ij) and a_j = E[amount of product j], exactly. The sums over the
    whole catalogue are taken once; each cutoff subtracts the (customer, owned product)
    pairs. Later orders find fewer non-repeatable products allowed: ``spend`` follows
    the customer's ``TOP_ONCE`` likeliest non-repeatable products as they are bought
    (a mean-field recursion, see ``spend``).
    """

    #: Non-repeatable products per customer whose depletion ``spend`` follows.
    TOP_ONCE = 32
    #: Steps of the recursion per customer.
    STEPS = 3

    def __init__(
        self, users: np.ndarray, catalog: Catalog, p: PurchaseParams, follow: np.ndarray
    ) -> None:
        """``follow``: the customers whose later orders ``spend`` will follow (more than one expected)."""
        self.users, self.catalog = users, catalog
        self.amount = product_amounts(catalog, p)
        n = users.shape[0]
        once = np.flatnonzero(~catalog.repeatable)
        k = min(self.TOP_ONCE, once.size)
        self.top = np.empty(n)
        self.weight = np.empty(n)
        self.value = np.empty(n)
        self.once_product = np.zeros((n, k), dtype=np.int32)
        self.once_weight = np.zeros((n, k), dtype=np.float32)
        for lo in range(0, n, _CHUNK):
            score = (
                users[lo : lo + _CHUNK] @ catalog.factors.T + catalog.bias
            )  # float32, as purchases
            top = score.max(axis=1)
            w = np.exp(score - top[:, None])
            self.top[lo : lo + _CHUNK] = top
            self.weight[lo : lo + _CHUNK] = w.sum(axis=1, dtype=np.float64)
            self.value[lo : lo + _CHUNK] = w @ self.amount.astype(np.float32)
            rows = np.flatnonzero(follow[lo : lo + _CHUNK])
            if k < once.size:
                likeliest = np.argpartition(-score[rows][:, once], k - 1, axis=1)[:, :k]
            else:
                likeliest = np.tile(np.arange(k), (rows.size, 1))
            product = once[likeliest]
            self.once_product[lo + rows] = product
            self.once_weight[lo + rows] = np.take_along_axis(w[rows], product, axis=1)

    def owned(
        self, customer: np.ndarray, product: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Weight, weight x amount and followed slot (-1: none) of each non-repeatable purchase.

        The generator never sells a customer the same non-repeatable product twice, so
        each pair comes once and can be subtracted as it is.
        """
        match = self.once_product[customer] == product[:, None]
        slot = np.where(match.any(axis=1), match.argmax(axis=1), -1)
        score = (
            np.einsum("nk,nk->n", self.users[customer], self.catalog.factors[product])
            + self.catalog.bias[product]
        )
        w = np.exp(score.astype(np.float64) - self.top[customer])
        return w, w * self.amount[product], slot

    def spend(
        self,
        customer: np.ndarray,
        w: np.ndarray,
        wa: np.ndarray,
        slot: np.ndarray,
        orders: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """E[amount of the next order] and E[spend of the next ``orders`` orders] of customers [0, n).

        ``customer``, ``w``, ``wa``, ``slot``: the purchases owned at the cutoff (see ``owned``).
        The spend follows the mean-field recursion: after each order, every followed product
        is still allowed with probability pi_j <- pi_j * (1 - w_j / D), D = the expected
        allowed weight; the order's expected amount is (allowed value) / D. Steps of
        orders / STEPS orders compound that factor; the spend is the trapezoid sum.
        """
        n = orders.size
        weight = self.weight[:n] - np.bincount(customer, weights=w, minlength=n)[:n]
        value = self.value[:n] - np.bincount(customer, weights=wa, minlength=n)[:n]
        first = value / weight
        spend = orders * first
        rows = np.flatnonzero(orders > 1.0)  # the first order sees the cutoff's set exactly
        if not rows.size or not self.once_weight.shape[1]:
            return first, spend
        held = np.zeros((n, self.once_product.shape[1]), dtype=bool)
        followed = slot >= 0
        held[customer[followed], slot[followed]] = True
        still = ~held[rows]
        w_once = self.once_weight[rows]
        a_once = self.amount.astype(np.float32)[self.once_product[rows]]
        start = w_once * still  # pi_j * w_j, with pi_j = 1 for the products not owned at the cutoff
        allowed = start.copy()
        d0, v0 = weight[rows].astype(np.float32), value[rows].astype(np.float32)
        step = (orders[rows] / self.STEPS).astype(np.float32)
        total = np.zeros(rows.size)
        now = first[rows]
        for _ in range(self.STEPS):
            d = d0 - (start - allowed).sum(axis=1)
            allowed *= np.exp(
                step[:, None] * np.log1p(-np.minimum(w_once / d[:, None], 1.0 - 1e-6))
            )
            gone = start - allowed
            after = (v0 - (gone * a_once).sum(axis=1)) / (d0 - gone.sum(axis=1))
            total += step * (now + after) / 2.0
            now = after
        spend[rows] = total
        return first, spend


def product_amounts(catalog: Catalog, p: PurchaseParams) -> np.ndarray:
    """E[amount of one order line of product j], with the generator's rounding to cents."""
    weights = np.asarray(p.discount_weights) / np.sum(p.discount_weights)
    factors = np.asarray(p.discount_factors)
    extra = np.arange(0, 64)
    log_pmf = (
        -p.extra_units + extra * np.log(p.extra_units) - np.cumsum(np.log(np.maximum(extra, 1)))
    )
    pmf = np.exp(log_pmf) if p.extra_units > 0 else (extra == 0).astype(float)
    quantity = 1 + extra
    amount = np.empty(catalog.n)
    for j, price in enumerate(catalog.price):
        lines = np.round(quantity[:, None] * price * factors[None, :], 2) @ weights
        amount[j] = lines @ pmf if catalog.repeatable[j] else lines[0]
    return amount


def cutoff_values(
    states: list[CutoffState],
    roster: Roster,
    b: BehaviourParams,
    rule: ChurnParams,
    v: ValueParams,
    rng: np.random.Generator,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Expected orders (and their MC standard error), tickets and complaints per cutoff and customer."""
    hz = _Horizon(v.horizon_days, b)
    moments = [
        _Moments(beta, hz.weeks, b)
        for beta in (b.order_health, b.ticket_health, b.complaint_health)
    ]
    caps = [
        _CapExcess(b.ticket_health, b.ticket_cap, hz, b),
        _CapExcess(b.complaint_health, b.complaint_cap, hz, b),
    ]
    out = []
    for state in states:
        orders, tickets, complaints = _closed_form(
            state, np.arange(state.n), roster, b, hz, moments
        )
        over_t, over_c = _cap_excess(state, roster, b, hz, caps)
        out.append((orders, np.zeros(state.n), tickets - over_t, complaints - over_c))
    if not hz.epochs or v.mc_replicates < 1:
        return out
    # Replicates of every cutoff's deciding subscribers, a bounded number of rows at a time.
    units: list[list[tuple[int, int]]] = [[]]
    rows = 0
    for s, state in enumerate(states):
        m = state.eligible.size
        left = v.mc_replicates
        while m and left:
            r = min(left, max(1, (_MC_ROWS - rows) // m))
            if rows and rows + r * m > _MC_ROWS:
                units.append([])
                rows = 0
                continue
            units[-1].append((s, r))
            rows += r * m
            left -= r
    sums = [np.zeros((3, st.eligible.size)) for st in states]
    squares = [np.zeros(st.eligible.size) for st in states]
    for unit in units:
        if not unit:
            continue
        cols = _replicate_columns(states, unit, roster, b)
        d = np.stack(_Replicates(cols, b, rule, hz, rng).run(moments))
        at = 0
        for s, r in unit:
            m = states[s].eligible.size
            block = d[:, at : at + r * m].reshape(3, r, m)
            sums[s] += block.sum(axis=1)
            squares[s] += (block[0] ** 2).sum(axis=0)
            at += r * m
    r = v.mc_replicates
    for s, state in enumerate(states):
        orders, se, tickets, complaints = out[s]
        i = state.eligible
        mean = sums[s] / r
        orders[i] += mean[0]
        tickets[i] += mean[1]
        complaints[i] += mean[2]
        # Standard error of the mean of r replicates (sample variance with r - 1).
        se[i] = np.sqrt(np.maximum(squares[s] / r - mean[0] ** 2, 0.0) / max(r - 1, 1))
    return out


def value_truth(
    states: list[CutoffState],
    roster: Roster,
    users: np.ndarray,
    catalog: Catalog,
    order_customer: np.ndarray,
    order_s: np.ndarray,
    product: np.ndarray,
    amount: np.ndarray,
    interaction_customer: np.ndarray,
    interaction_s: np.ndarray,
    interaction_type: np.ndarray,
    params: WorldParams,
    calendar: Calendar,
    customer_ids: pl.Series,
    rng: np.random.Generator,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The value truth table (one row per cutoff and customer signed up before it) and its summary."""
    v, b = params.value, params.behaviour
    horizon_s = v.horizon_days * DAY_S
    cents = np.rint(amount * 100.0)  # amounts are whole cents: sums of them are exact
    ticket_code = INTERACTION_TYPES.index("support_ticket")
    complaint_code = INTERACTION_TYPES.index("complaint")
    once = np.flatnonzero(~catalog.repeatable[product])
    expected = cutoff_values(states, roster, b, params.churn, v, rng)
    follow = np.zeros(roster.n, dtype=bool)
    for state, (orders, *_) in zip(states, expected, strict=True):
        follow[: state.n] |= orders > 1.0
    order_value = OrderValues(users, catalog, params.purchase, follow)
    owned_customer, owned_s, owned_product = order_customer[once], order_s[once], product[once]
    owned_w, owned_wa, owned_slot = order_value.owned(owned_customer, owned_product)
    rare = np.flatnonzero((interaction_type == ticket_code) | (interaction_type == complaint_code))
    rare_customer, rare_s, rare_ticket = (
        interaction_customer[rare],
        interaction_s[rare],
        interaction_type[rare] == ticket_code,
    )
    frames, per_cutoff = [], []
    relative_se, error_sq, mc_var = [], 0.0, 0.0
    for state, (orders, se, tickets, complaints) in zip(states, expected, strict=True):
        n, start = state.n, state.week * WEEK_S
        before = owned_s <= start
        _, spend = order_value.spend(
            owned_customer[before], owned_w[before], owned_wa[before], owned_slot[before], orders
        )
        inside = (order_s > start) & (order_s <= start + horizon_s)
        realized = (
            np.bincount(order_customer[inside], weights=cents[inside], minlength=n)[:n] / 100.0
        )
        realized_orders = np.bincount(order_customer[inside], minlength=n)[:n]
        window = (rare_s > start) & (rare_s <= start + horizon_s)
        real_t = np.bincount(rare_customer[window & rare_ticket], minlength=n)[:n]
        real_c = np.bincount(rare_customer[window & ~rare_ticket], minlength=n)[:n]
        # The MC error is the expected orders' (an order's value is exact given the set).
        spend_se = se * spend / np.maximum(orders, 1e-300)
        cost = v.ticket_cost * tickets + v.complaint_cost * complaints
        real_cost = v.ticket_cost * real_t + v.complaint_cost * real_c
        margin = v.gross_margin * spend - cost
        cutoff_us = calendar.origin_us + start * US_PER_S
        frames.append(
            pl.DataFrame(
                {
                    CUTOFF: pl.Series(np.full(n, cutoff_us, dtype=np.int64)).cast(
                        pl.Datetime("us", "UTC")
                    ),
                    "customer_id": customer_ids.slice(0, n),
                    HORIZON_DAYS: np.full(n, v.horizon_days, dtype=np.int64),
                    EXPECTED_SPEND: spend,
                    REALIZED_SPEND: realized,
                    EXPECTED_COST: cost,
                    REALIZED_COST: real_cost.astype(np.float64),
                    EXPECTED_MARGIN: margin,
                    REALIZED_MARGIN: v.gross_margin * realized - real_cost,
                    EXPECTED_ORDERS: orders,
                    REALIZED_ORDERS: realized_orders.astype(np.int64),
                    EXPECTED_TICKETS: tickets,
                    REALIZED_TICKETS: real_t.astype(np.int64),
                    EXPECTED_COMPLAINTS: complaints,
                    REALIZED_COMPLAINTS: real_c.astype(np.int64),
                    EXPECTED_SPEND_SE: spend_se,
                }
            )
        )
        simulated = state.eligible
        relative_se.append(spend_se[simulated] / np.maximum(spend[simulated], 1e-12))
        error_sq += float(((realized - spend) ** 2).sum())
        mc_var += float((spend_se**2).sum())
        per_cutoff.append(
            {
                "cutoff": calendar.week_datetime(state.week).isoformat(),
                "customers": n,
                "simulated_subscribers": int(simulated.size),
                "mean_expected_spend": float(spend.mean()) if n else None,
                "mean_realized_spend": float(realized.mean()) if n else None,
                "mean_expected_cost_to_serve": float(cost.mean()) if n else None,
                "share_negative_margin": float((margin < 0).mean()) if n else None,
                "total_spend_mc_relative_se": float(
                    np.sqrt((spend_se**2).sum()) / max(spend.sum(), 1e-12)
                ),
            }
        )
    rel = np.concatenate(relative_se) if relative_se else np.empty(0)
    # No rechunk: at a million customers the table is ~1 GB, and parquet writes chunks as they are.
    frame = pl.concat(frames, rechunk=False) if frames else pl.DataFrame(schema=_SCHEMA)
    negative = [
        c["share_negative_margin"] for c in per_cutoff if c["share_negative_margin"] is not None
    ]
    summary: dict[str, Any] = {
        "horizon_days": v.horizon_days,
        "gross_margin": v.gross_margin,
        "ticket_cost": v.ticket_cost,
        "complaint_cost": v.complaint_cost,
        "mc_replicates": v.mc_replicates,
        "cutoffs": [c["cutoff"] for c in per_cutoff],
        "share_negative_margin": min(negative) if negative else None,
        "mc_standard_error": {
            # Per simulated subscriber: standard error of its expected spend / that spend
            # (root mean square: with few replicates each estimate is rough, their mean is not).
            "subscriber_relative_rms": float(np.sqrt(np.mean(rel**2))) if rel.size else None,
            "subscriber_relative_p90": float(np.quantile(rel, 0.9)) if rel.size else None,
            "total_relative_max": max(
                (c["total_spend_mc_relative_se"] for c in per_cutoff), default=None
            ),
            # MC variance as a share of the squared error realized - expected, over all rows.
            "share_of_squared_error": mc_var / error_sq if error_sq else None,
        },
        "by_cutoff": per_cutoff,
        "approximations": list(APPROXIMATIONS),
    }
    return frame, summary
