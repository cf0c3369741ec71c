"""Next-best-product: implicit-feedback matrix factorisation over orders.

- ``train_nbp`` (``crmscore train nbp``): build the confidence matrix, fit ALS (or
  BPR), evaluate on a time split against popularity baselines and the oracle,
  log to MLflow, register ``crm-next-best-product`` and gate on NDCG@10;
- ``load_recommender``: a registered version for serving and batch scoring;
- ``Recommender.recommend`` / ``recommend_all``: top-k with reasons and cold start.
"""

from training.nbp.recommender import (
    MODEL_NAME,
    CustomerRecommendations,
    Recommendation,
    Recommender,
)
from training.nbp.train import NbpParams, load_recommender, train_nbp

__all__ = [
    "MODEL_NAME",
    "CustomerRecommendations",
    "NbpParams",
    "Recommendation",
    "Recommender",
    "load_recommender",
    "train_nbp",
]
