"""Which product each order buys, how many units, and for how much.

Order *times* come from the weekly simulation; the product of an order of
customer i is drawn with P(j) ∝ exp(u_i · v_j + b_j) (a softmax over the
catalogue: affinity + popularity + category structure). A non-repeatable product
is bought at most once per customer: an order that would buy one the customer
already owns is redrawn (rejection), so the choice is the softmax over the
products still allowed.

Sampling is vectorized per chunk of customers: their cumulative distributions
are computed once, every order of the chunk finds its product by bisection in
its customer's row, and redraws reuse the same rows.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np

from crmdata.synth.catalog import Catalog
from crmdata.synth.config import WEEK_S
from crmdata.synth.params import PurchaseParams

log = logging.getLogger(__name__)

#: Customers per chunk when materialising probability rows (chunk × products floats).
_CHUNK_CUSTOMERS = 8192


class _Rows:
    """The choice distributions (cumulative, per customer row) of a chunk of customers."""

    def __init__(self, users: np.ndarray, catalog: Catalog, allowed: np.ndarray | None = None) -> None:
        cdf = users @ catalog.factors.T
        cdf += catalog.bias
        cdf -= cdf.max(axis=1, keepdims=True)
        np.exp(cdf, out=cdf)
        if allowed is not None:
            cdf *= allowed
        np.cumsum(cdf, axis=1, out=cdf)
        cdf /= cdf[:, -1:]
        cdf[:, -1] = 1.0  # guard against rounding below 1: every draw lands in the row
        self.flat = cdf.ravel()
        self.n_products = catalog.n
        self.steps = max(1, int(np.ceil(np.log2(catalog.n))))

    def draw(self, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One product per entry of ``rows`` (local row numbers): inverse CDF by bisection.

        Counts the products whose cumulative weight is <= u with a branch-free
        binary search inside each entry's own row (log2(products) steps), which
        stays within one row of the cache, unlike a search of the whole chunk.
        """
        u = rng.random(rows.size, dtype=np.float32)
        # int32 positions: a chunk holds far fewer than 2**31 probabilities.
        first = rows.astype(np.int32) * np.int32(self.n_products)
        last = first + np.int32(self.n_products - 1)  # its weight is 1.0 > u: never counted
        pos = first.copy()
        step = 1 << self.steps
        while step >= 1:
            probe = pos + np.int32(step - 1)
            np.minimum(probe, last, out=probe)
            pos += np.int32(step) * (self.flat[probe] <= u)
            step >>= 1
        return pos - first


class _RepeatFinder:
    """Finds orders that re-buy a non-repeatable product (per chunk, in O(orders)).

    Orders are grouped by customer, in time order within a customer, so the
    first order of a (customer, product) pair is the one with the lowest position.
    """

    def __init__(self, n_rows: int, repeatable: np.ndarray) -> None:
        self.repeatable = repeatable
        self.n_products = repeatable.size
        self.first = np.full(n_rows * self.n_products, np.iinfo(np.int64).max, dtype=np.int64)

    def __call__(self, positions: np.ndarray, rows: np.ndarray, product: np.ndarray) -> np.ndarray:
        """Mask over ``positions`` of the orders whose product the customer bought before."""
        once = np.flatnonzero(~self.repeatable[product])
        key = rows[once].astype(np.int64) * self.n_products + product[once]
        np.minimum.at(self.first, key, positions[once])
        again = np.zeros(positions.size, dtype=bool)
        again[once] = self.first[key] != positions[once]
        self.first[key] = np.iinfo(np.int64).max  # reset only what was touched
        return again


def _chunk_products(
    local: np.ndarray, users: np.ndarray, catalog: Catalog, p: PurchaseParams, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Products of the orders of one chunk; ``local`` = customer row in ``users``, sorted."""
    rows = _Rows(users, catalog)
    product = rows.draw(local, rng)
    repeats = _RepeatFinder(users.shape[0], catalog.repeatable)
    todo = np.arange(local.size)
    for _ in range(p.max_redraws):
        again = repeats(todo, local[todo], product[todo])
        if not again.any():
            return product, 0
        redraw = todo[again]
        product[redraw] = rows.draw(local[redraw], rng)
        # Only customers with a redrawn order can still hold a repeat buy.
        touched = np.zeros(users.shape[0], dtype=bool)
        touched[local[redraw]] = True
        todo = todo[touched[local[todo]]]
    # Customers whose taste keeps pointing at owned one-off products: draw their
    # remaining repeats among repeatable products only.
    redraw = todo[repeats(todo, local[todo], product[todo])]
    if redraw.size:
        who, row = np.unique(local[redraw], return_inverse=True)
        product[redraw] = _Rows(users[who], catalog, allowed=catalog.repeatable).draw(row, rng)
    return product, int(redraw.size)


def customer_positions(order_customer: np.ndarray, order_s: np.ndarray, n_customers: int) -> np.ndarray:
    """Where each order goes when the orders are grouped by customer, in time order.

    The orders come grouped by week, then by customer in time order (as the
    weekly simulation emits them), so the grouping is a counting sort done one
    week at a time in O(n) instead of a full sort of tens of millions of keys.
    """
    total = np.bincount(order_customer, minlength=n_customers)
    offset = np.cumsum(total) - total  # first position of each customer's group
    seen = np.zeros(n_customers, dtype=np.int64)
    week = order_s // WEEK_S
    bounds = np.flatnonzero(np.r_[True, week[1:] != week[:-1], True]) if week.size else np.zeros(1, np.int64)
    dest = np.empty(order_customer.size, dtype=np.int64)
    for lo, hi in itertools.pairwise(bounds):
        c = order_customer[lo:hi]
        first = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        size = np.diff(np.r_[first, c.size])
        rank = np.arange(c.size) - np.repeat(first, size)
        dest[lo:hi] = offset[c] + seen[c] + rank
        seen[c[first]] += size
    return dest


def choose_products(
    order_customer: np.ndarray,
    order_s: np.ndarray,
    users: np.ndarray,
    catalog: Catalog,
    p: PurchaseParams,
    rng: np.random.Generator,
) -> np.ndarray:
    """Product index of every order (orders as the weekly simulation emits them)."""
    dest = customer_positions(order_customer, order_s, users.shape[0])
    customer = np.empty_like(order_customer)
    customer[dest] = order_customer
    product = np.empty(customer.size, dtype=np.int32)
    starts = np.arange(0, users.shape[0] + _CHUNK_CUSTOMERS, _CHUNK_CUSTOMERS)
    bounds = np.searchsorted(customer, starts)
    fallback = 0
    for c in range(starts.size - 1):
        lo, hi = int(bounds[c]), int(bounds[c + 1])
        if lo == hi:
            continue
        a = int(starts[c])
        chunk_users = users[a : a + _CHUNK_CUSTOMERS]
        product[lo:hi], n = _chunk_products(customer[lo:hi] - a, chunk_users, catalog, p, rng)
        fallback += n
    if fallback:
        log.debug("purchases: %d orders redrawn among repeatable products", fallback)
    return product[dest]


def quantities_and_amounts(
    product: np.ndarray, catalog: Catalog, p: PurchaseParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    repeatable = catalog.repeatable[product]
    quantity = 1 + np.where(repeatable, rng.poisson(p.extra_units, product.size), 0)
    cdf = np.cumsum(p.discount_weights)
    factor = np.asarray(p.discount_factors)[np.searchsorted(cdf, rng.random(product.size) * cdf[-1], side="right")]
    amount = np.round(quantity * catalog.price[product] * factor, 2)
    return quantity.astype(np.int64), amount
