"""The product catalogue and the latent customer × product affinities.

The true affinity of customer i for product j is ``u_i · v_j + b_j``:

- product factors v_j = the centre of its category + a product offset, so
  products of one category are liked together (category structure);
- b_j is popularity, lower for expensive products;
- customer factors u_i = a segment effect + an industry effect + individual
  taste, so firmographics say something about taste (useful for cold start).

Only the factors are stored (``_truth/``); scores are computed on demand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from crmdata.synth import vocab
from crmdata.synth.customers import Roster
from crmdata.synth.params import PurchaseParams


@dataclass
class Catalog:
    category: np.ndarray  # int16 index into vocab.CATEGORIES
    price: np.ndarray
    repeatable: np.ndarray  # bool
    name: pl.Series
    factors: np.ndarray  # (P, k) float32
    bias: np.ndarray  # (P,) float32

    @property
    def n(self) -> int:
        return int(self.price.size)


def _categories_for(n_products: int) -> np.ndarray:
    """Which categories a catalogue of this size uses (all of them from 24 products up).

    Small catalogues take categories spread over the list, so they always hold
    repeatable (first entries) and non-repeatable (last entries) products.
    """
    n_cat = min(len(vocab.CATEGORIES), max(2, n_products // 2))
    return np.unique(np.round(np.linspace(0, len(vocab.CATEGORIES) - 1, n_cat)).astype(np.int16))


def build_catalog(n_products: int, n_factors: int, p: PurchaseParams, rng: np.random.Generator) -> Catalog:
    cats = _categories_for(n_products)
    # Every category used gets at least one product; the rest are spread unevenly.
    share = rng.dirichlet(np.full(cats.size, 2.0))
    extra = rng.choice(cats.size, n_products - cats.size, p=share)
    category = np.sort(np.concatenate([np.arange(cats.size), extra])).astype(np.int16)
    category = cats[category]
    repeat_prob = np.asarray([r for _, r in vocab.CATEGORIES])[category]
    repeatable = rng.random(n_products) < repeat_prob
    if not repeatable.any():  # purchases need somewhere to go once everything is owned
        repeatable[0] = True
    median = np.asarray(vocab.CATEGORY_PRICE)[category]
    price = np.maximum(np.round(median * np.exp(rng.normal(0.0, 0.5, n_products))) - 0.01, 0.99)

    centres = rng.normal(0.0, p.category_sd, (len(vocab.CATEGORIES), n_factors))
    factors = centres[category] + rng.normal(0.0, p.product_sd, (n_products, n_factors))
    bias = rng.normal(0.0, p.popularity_sd, n_products) - p.price_elasticity * np.log(price / np.median(price))

    adjective = pl.Series(vocab.PRODUCT_ADJECTIVES).gather(rng.integers(0, len(vocab.PRODUCT_ADJECTIVES), n_products))
    title = pl.Series([c.replace("_", " ").title() for c, _ in vocab.CATEGORIES]).gather(category)
    name = pl.select(
        pl.concat_str(pl.lit(adjective), pl.lit(" "), pl.lit(title), pl.lit(" "), pl.int_range(1, n_products + 1).cast(pl.String))
    ).to_series()
    return Catalog(
        category=category,
        price=price,
        repeatable=repeatable,
        name=name,
        factors=factors.astype(np.float32),
        bias=bias.astype(np.float32),
    )


def customer_factors(roster: Roster, n_factors: int, p: PurchaseParams, rng: np.random.Generator) -> np.ndarray:
    segment = rng.normal(0.0, p.segment_sd, (len(vocab.SEGMENTS), n_factors))
    industry = rng.normal(0.0, p.industry_sd, (len(vocab.INDUSTRIES), n_factors))
    taste = rng.normal(0.0, p.customer_sd, (roster.n, n_factors))
    return (segment[roster.segment] + industry[roster.industry] + taste).astype(np.float32)
