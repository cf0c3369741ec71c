"""From orders to the customer × product confidence matrix, and the time split.

Confidence (documented in docs/next-best-product.md). For customer u, product j,
the orders o of u for j placed before the reference time T (the cutoff):

    strength_o = log2(1 + amount_o / typical_amount_j)        (1 for a typical order)
    decay_o    = 2 ** (-(T - t_o) / half_life_days)            (1 today, ½ after a half-life)
    r_uj       = Σ_o strength_o · decay_o
    c_uj       = 1 + alpha · r_uj                              (Hu, Koren & Volinsky 2008)

``typical_amount_j`` is the median amount of j's orders in the training data, so a
large order of a cheap product weighs like a large order of an expensive one (the
amount says "how much of it", not "how expensive"). Where a product's median
amount is 0 (free items), quantity relative to its median quantity is used
instead. The log keeps a 10-unit order from outweighing ten separate purchases.

implicit's ALS reads a stored value as the confidence c_uj with preference 1,
and an absent entry as confidence 1 with preference 0, which is exactly the
formulation above; the model itself is fitted with implicit's ``alpha = 1``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import BaseModel, Field

from crmdata.contract import CUSTOMERS, ORDERS, PRODUCTS
from crmdata.errors import CrmscoreError
from crmdata.lake import read_table

log = logging.getLogger(__name__)

# Column names, once, from the contract.
CUSTOMER_ID = CUSTOMERS.key[0]
PRODUCT_ID = PRODUCTS.key[0]
SEGMENT = CUSTOMERS.column("segment").name
CATEGORY = PRODUCTS.column("category").name
IS_REPEATABLE = PRODUCTS.column("is_repeatable").name
PRODUCT_NAME = PRODUCTS.column("name").name
ORDERED_AT = ORDERS.column("ordered_at").name
QUANTITY = ORDERS.column("quantity").name
AMOUNT = ORDERS.column("amount").name
ORDER_CUSTOMER = ORDERS.column("customer_id").name
ORDER_PRODUCT = ORDERS.column("product_id").name

UNKNOWN_SEGMENT = ""
#: Integer code columns that ``read_lake`` adds to the orders.
CUSTOMER_CODE, PRODUCT_CODE = "_customer_row", "_product_col"


class ConfidenceParams(BaseModel):
    """How orders become confidences (see the module docstring)."""

    alpha: float = Field(1.0, gt=0, description="confidence gained per unit of decayed strength")
    half_life_days: float = Field(730.0, gt=0, description="an order counts half after this many days")


@dataclass(frozen=True)
class Catalogue:
    """The products, in model column order."""

    product_ids: np.ndarray  # str
    names: np.ndarray  # str
    categories: np.ndarray  # str ("" unknown)
    repeatable: np.ndarray  # bool

    @property
    def n(self) -> int:
        return int(self.product_ids.size)


@dataclass(frozen=True)
class LakeData:
    """What the recommender needs from a lake: customers, the catalogue and product orders."""

    customers: pl.DataFrame  # customer_id, segment
    catalogue: Catalogue
    #: customer_id, product_id, ordered_at, quantity, amount (product_id not null), and the codes
    #: CUSTOMER_CODE (row in ``customers``, -1 unknown) and PRODUCT_CODE (index in the catalogue).
    orders: pl.DataFrame


def read_lake(lake: Path) -> LakeData:
    """Customers, products and orders; a lake without ``products`` gets a catalogue from orders."""
    customers = read_table(lake, CUSTOMERS.name, columns=[CUSTOMER_ID, SEGMENT])
    orders = read_table(lake, ORDERS.name, columns=[ORDER_CUSTOMER, ORDER_PRODUCT, ORDERED_AT, QUANTITY, AMOUNT])
    if customers is None or orders is None:
        raise CrmscoreError(f"{lake}: next-best-product needs the customers and orders tables")
    orders = orders.filter(pl.col(ORDER_PRODUCT).is_not_null())
    if orders.is_empty():
        raise CrmscoreError(f"{lake}: no order names a product (orders.product_id is empty)")
    products = read_table(lake, PRODUCTS.name, columns=[PRODUCT_ID, PRODUCT_NAME, CATEGORY, IS_REPEATABLE])
    if products is None:
        # Without a catalogue we cannot know which products are one-offs: treat all as
        # repeatable (never hide a product wrongly) and say so.
        log.warning("%s: no products table; every product is treated as repeatable", lake)
        ids = orders[ORDER_PRODUCT].unique().sort()
        products = pl.DataFrame({PRODUCT_ID: ids, PRODUCT_NAME: ids, CATEGORY: [""] * ids.len(),
                                 IS_REPEATABLE: [True] * ids.len()})
    products = products.sort(PRODUCT_ID)
    catalogue = Catalogue(
        product_ids=products[PRODUCT_ID].to_numpy().astype(str),
        names=products[PRODUCT_NAME].fill_null("").to_numpy().astype(str),
        categories=products[CATEGORY].fill_null("").to_numpy().astype(str),
        repeatable=products[IS_REPEATABLE].fill_null(True).to_numpy().astype(bool),
    )
    customers = customers.with_columns(pl.col(SEGMENT).fill_null(UNKNOWN_SEGMENT))
    # Integer codes of each order's customer (row of `customers`) and product (index in the
    # catalogue), computed once: every later step works on ints, not millions of id strings.
    orders = orders.with_columns(
        pl.Series(CUSTOMER_CODE, index_of(orders[ORDER_CUSTOMER], customers[CUSTOMER_ID].to_numpy().astype(str))),
        pl.Series(PRODUCT_CODE, index_of(orders[ORDER_PRODUCT], catalogue.product_ids)),
    )
    return LakeData(customers=customers, catalogue=catalogue, orders=orders)


def index_of(ids: np.ndarray | pl.Series | list[str], known: np.ndarray) -> np.ndarray:
    """Row of each id in ``known`` (unique ids; int64), -1 where unknown.

    A cast to an Enum whose categories are ``known`` is a vectorized hash lookup
    (about twice as fast as a join for millions of orders), not a Python dict.
    """
    wanted = pl.Series("id", ids, dtype=pl.String)
    if len(known) == 0:
        return np.full(wanted.len(), -1, dtype=np.int64)
    codes = wanted.cast(pl.Enum(pl.Series(known, dtype=pl.String)), strict=False).to_physical()
    return codes.cast(pl.Int64).fill_null(-1).to_numpy()


def _typical(col: np.ndarray, amount: np.ndarray, quantity: np.ndarray, n_products: int) -> tuple[np.ndarray, np.ndarray]:
    """Median amount and median quantity of each product's orders (NaN where never ordered)."""
    med = (pl.DataFrame({"c": col, "a": amount, "q": quantity}).filter(pl.col("c") >= 0)
           .group_by("c").agg(pl.col("a").median(), pl.col("q").median()))
    typical_amount = np.full(n_products, np.nan)
    typical_quantity = np.full(n_products, np.nan)
    rows = med["c"].to_numpy()
    typical_amount[rows] = med["a"].to_numpy()
    typical_quantity[rows] = med["q"].to_numpy()
    return typical_amount, typical_quantity


@dataclass(frozen=True)
class Interactions:
    """Confidences of customers × products at a reference time, plus order counts."""

    customer_ids: np.ndarray  # str, row order
    confidence: sp.csr_matrix  # c_uj (0 = never bought)
    orders: np.ndarray  # int64: product orders per customer before the reference time
    alpha: float

    def strength(self) -> sp.csr_matrix:
        """r_uj = (c_uj - 1) / alpha: the decayed, size-weighted purchases."""
        r = self.confidence.copy()
        r.data = (r.data - 1.0) / self.alpha
        return r


def build_interactions(orders: pl.DataFrame, product_ids: np.ndarray, as_of: datetime,
                       params: ConfidenceParams, typical_amount: np.ndarray,
                       typical_quantity: np.ndarray) -> Interactions:
    """The confidence matrix of orders placed before ``as_of`` (see the module docstring).

    Rows are the customers with at least one order, sorted. Orders of products outside
    ``product_ids`` are ignored (a product added after the model was trained).
    """
    before = orders.filter(pl.col(ORDERED_AT) < as_of)
    customer_ids = before[ORDER_CUSTOMER].unique().sort().to_numpy().astype(str)
    row = index_of(before[ORDER_CUSTOMER], customer_ids)
    col = index_of(before[ORDER_PRODUCT], product_ids)
    return _interactions(before, row, col, customer_ids, len(product_ids), as_of, params, typical_amount,
                         typical_quantity)


def _interactions(before: pl.DataFrame, row: np.ndarray, col: np.ndarray, customer_ids: np.ndarray,
                  n_products: int, as_of: datetime, params: ConfidenceParams, typical_amount: np.ndarray,
                  typical_quantity: np.ndarray) -> Interactions:
    """The confidence matrix from orders (all before ``as_of``) coded as (row, col); -1 = skip."""
    keep = (col >= 0) & (row >= 0)
    row, col = row[keep], col[keep]
    as_of_us = int(as_of.timestamp() * 1_000_000)
    age_days = (as_of_us - before[ORDERED_AT].dt.epoch("us").to_numpy()[keep]) / 86_400e6
    amount = before[AMOUNT].to_numpy()[keep].astype(np.float64)
    quantity = before[QUANTITY].to_numpy()[keep].astype(np.float64)
    typ_a, typ_q = typical_amount[col], typical_quantity[col]
    # Relative size of the order: amount where the product has a price, else quantity, else 1.
    relative = np.where(typ_a > 0, amount / np.where(typ_a > 0, typ_a, 1.0),
                        np.where(typ_q > 0, quantity / np.where(typ_q > 0, typ_q, 1.0), 1.0))
    strength = np.log2(1.0 + np.nan_to_num(relative, nan=1.0))
    decay = np.exp2(-age_days / params.half_life_days)
    shape = (len(customer_ids), n_products)
    # Sum per (customer, product) pair: CSR conversion + sum_duplicates (C, no global sort).
    # A pair whose orders all have strength 0 (amount 0 on a priced product) still says
    # "bought": the floor keeps it as an entry with confidence 1 instead of a dropped zero.
    r = sp.csr_matrix((np.maximum(strength * decay, 1e-9), (row, col)), shape=shape, dtype=np.float64)
    r.sum_duplicates()
    confidence = sp.csr_matrix(((1.0 + params.alpha * r.data).astype(np.float32), r.indices, r.indptr),
                               shape=shape)
    counts = np.bincount(row, minlength=shape[0]).astype(np.int64)
    return Interactions(customer_ids=customer_ids, confidence=confidence, orders=counts, alpha=params.alpha)


def owned_once(confidence: sp.csr_matrix, repeatable: np.ndarray) -> sp.csr_matrix:
    """The (customer, product) pairs that may never be recommended: bought and not repeatable."""
    owned = confidence.copy().tocsr()
    owned.data = np.ones_like(owned.data)
    owned = owned.multiply(sp.csr_matrix((~repeatable).astype(np.float32))).tocsr()
    owned.eliminate_zeros()
    return owned


@dataclass(frozen=True)
class Split:
    """Train on orders before the cutoff; test on what active customers buy in the window."""

    cutoff: datetime
    window_days: int
    train: Interactions
    #: Rows of ``train`` evaluated (active before the cutoff, bought something eligible after).
    test_rows: np.ndarray
    #: (len(test_rows) × products) products bought in the window, owned one-offs removed.
    relevant: sp.csr_matrix
    #: Median amount and quantity per product in the training orders (the confidence scale).
    typical_amount: np.ndarray
    typical_quantity: np.ndarray


def default_cutoff(orders: pl.DataFrame, window_days: int) -> datetime:
    """The start of the last full window: the day after the last order, minus the window."""
    last = orders[ORDERED_AT].max()
    end = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    return end - timedelta(days=window_days)


def time_split(data: LakeData, window_days: int, cutoff: datetime | None, params: ConfidenceParams) -> Split:
    """The train interactions at the cutoff and the test relevance of the next ``window_days``."""
    orders = data.orders
    cutoff = cutoff or default_cutoff(orders, window_days)
    if cutoff.tzinfo is None:
        cutoff = cutoff.replace(tzinfo=UTC)
    end = cutoff + timedelta(days=window_days)
    train_orders = orders.filter(pl.col(ORDERED_AT) < cutoff)
    if train_orders.is_empty():
        raise CrmscoreError(f"no product orders before the cutoff {cutoff:%Y-%m-%d}")
    ids = data.catalogue.product_ids
    codes = train_orders[CUSTOMER_CODE].to_numpy()
    col = train_orders[PRODUCT_CODE].to_numpy()
    typ_a, typ_q = _typical(col, train_orders[AMOUNT].to_numpy(), train_orders[QUANTITY].to_numpy(), len(ids))
    # Rows: the customers with an order before the cutoff, in customers-table order.
    n_all = data.customers.height
    present = np.flatnonzero(np.bincount(codes[codes >= 0], minlength=n_all))
    remap = np.full(n_all + 1, -1, dtype=np.int64)  # the last slot maps unknown (-1) codes to -1
    remap[present] = np.arange(present.size)
    customer_ids = data.customers[CUSTOMER_ID].to_numpy().astype(str)[present]
    train = _interactions(train_orders, remap[codes], col, customer_ids, len(ids), cutoff, params, typ_a, typ_q)
    test_orders = orders.filter((pl.col(ORDERED_AT) >= cutoff) & (pl.col(ORDERED_AT) < end))
    row = remap[test_orders[CUSTOMER_CODE].to_numpy()]
    col = test_orders[PRODUCT_CODE].to_numpy()
    keep = (row >= 0) & (col >= 0)  # active before the cutoff = at least one earlier order
    bought = sp.csr_matrix((np.ones(int(keep.sum())), (row[keep], col[keep])), shape=train.confidence.shape)
    bought.sum_duplicates()
    bought.data[:] = 1.0
    # Owned one-offs are excluded from recommendations, so they cannot count as relevant either.
    bought = (bought - bought.multiply(owned_once(train.confidence, data.catalogue.repeatable))).tocsr()
    bought.eliminate_zeros()
    test_rows = np.flatnonzero(np.diff(bought.indptr) > 0)
    if test_rows.size == 0:
        raise CrmscoreError(
            f"no customer active before {cutoff:%Y-%m-%d} bought a product in the {window_days} days after it; "
            "choose an earlier --cutoff or a longer window"
        )
    log.info("time split at %s: %d customers, %d products, %d train interactions; %d test customers",
             f"{cutoff:%Y-%m-%d}", train.confidence.shape[0], len(ids), train.confidence.nnz, test_rows.size)
    return Split(cutoff=cutoff, window_days=window_days, train=train, test_rows=test_rows,
                 relevant=bought[test_rows], typical_amount=typ_a, typical_quantity=typ_q)
