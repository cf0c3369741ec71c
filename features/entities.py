"""Entities: the business objects features describe, and the key that identifies each.

An entity's join key is the column a training frame or an online request uses to
say *which* customer, lead or product it means. The keys are the contract's id
columns, so raw tables, feature tables and requests all use the same names.
"""

from feast import Entity, ValueType

try:  # imported as part of the `features` package (crmscore, tests)
    from .catalog import JOIN_KEYS
except ImportError:  # imported as a top-level module by Feast's CLI (`feast apply` in features/)
    from catalog import JOIN_KEYS  # type: ignore[no-redef]

customer = Entity(
    name="customer",
    join_keys=[JOIN_KEYS["customer"]],
    value_type=ValueType.STRING,
    description="A paying (or once paying) account: one row of the customers table.",
)

lead = Entity(
    name="lead",
    join_keys=[JOIN_KEYS["lead"]],
    value_type=ValueType.STRING,
    description="A prospect in the sales funnel: one row of the leads table.",
)

product = Entity(
    name="product",
    join_keys=[JOIN_KEYS["product"]],
    value_type=ValueType.STRING,
    description="An item of the catalogue: one row of the products table.",
)
