"""Feature services: the feature list of each model version, and the only one.

Training (``features.training.training_frame``), serving and batch scoring ask
for features by service name (``store.get_feature_service(CHURN_SERVICE)``), never
by retyped ``"view:feature"`` strings. A new model version that needs different
features gets a new service (``churn_v2``) so the old one keeps serving.
"""

from feast import FeatureService

try:  # imported as part of the `features` package (crmscore, tests)
    from .catalog import CHURN_SERVICE, LEAD_SERVICE, NBP_SERVICE, PEER_FEATURES, VALUE_SERVICE
    from .feature_views import customer_features, customer_value, lead_features, product_features
except ImportError:  # imported as a top-level module by Feast's CLI (`feast apply` in features/)
    from catalog import (  # type: ignore[no-redef]
        CHURN_SERVICE,
        LEAD_SERVICE,
        NBP_SERVICE,
        PEER_FEATURES,
        VALUE_SERVICE,
    )
    from feature_views import (  # type: ignore[no-redef]
        customer_features,
        customer_value,
        lead_features,
        product_features,
    )

churn_v1 = FeatureService(
    name=CHURN_SERVICE,
    # The peer's P(alive) and expectations: a purchase-process view of churn that the
    # transactional mode above all can use.
    features=[customer_features, customer_value[list(PEER_FEATURES)]],
    description="Churn risk: every customer feature, custom attributes included, and the "
    "probabilistic peer's P(alive), expected orders and spend.",
    tags={"model": "churn", "entities": "customer"},
)

lead_scoring_v1 = FeatureService(
    name=LEAD_SERVICE,
    features=[lead_features],
    description="Lead scoring: every lead feature, custom attributes included.",
    tags={"model": "lead_scoring", "entities": "lead"},
)

next_best_product_v1 = FeatureService(
    name=NBP_SERVICE,
    features=[customer_features, product_features],
    description="Next best product: the customer's features next to each candidate product's.",
    tags={"model": "next_best_product", "entities": "customer,product"},
)

customer_value_v1 = FeatureService(
    name=VALUE_SERVICE,
    features=[customer_features, customer_value],
    description="Customer value: every customer feature (activity, support, subscription, custom "
    "attributes) and the customer-value view (RFM, the probabilistic peer, run-rate, cost to serve).",
    tags={"model": VALUE_SERVICE, "entities": "customer"},
)
