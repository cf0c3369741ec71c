"""Next-best-product: implicit-feedback matrix factorisation over orders.

- ``train_nbp`` (``crmscore train nbp``, ``train.py``): build the confidence matrix,
  fit ALS (or BPR), evaluate on a time split against popularity baselines and the
  oracle (``evaluate.py``), log to MLflow, register ``NBP.model_name`` and gate
  on NDCG@10;
- ``load_recommender`` (``persist.py``): a registered version for serving and batch scoring;
- ``Recommender.recommend`` / ``recommend_all`` (``recommender.py``): top-k with
  reasons and cold start.
"""

from training.nbp.persist import load_recommender
from training.nbp.recommender import MODEL_NAME, Recommender
from training.nbp.train import NbpParams, train_nbp

__all__ = [
    "MODEL_NAME",
    "NbpParams",
    "Recommender",
    "load_recommender",
    "train_nbp",
]
