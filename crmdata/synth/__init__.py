"""The synthetic CRM world: a simulated business with exact, learnable ground truth.

``generate_world(WorldConfig(...), out_dir)`` writes the contract tables as a
lake plus ``_truth/``; ``load_truth(lake)`` reads the truth back (churn and
conversion probabilities with realized labels, and the affinity model).
See docs/synthetic-world.md for the processes and equations.
"""

from crmdata.synth.config import Calendar, WorldConfig
from crmdata.synth.params import WorldParams
from crmdata.synth.world import OutcomeStats, WorldSummary, generate_world
from crmdata.truth import Affinity, Truth, load_truth

__all__ = [
    "Affinity",
    "Calendar",
    "OutcomeStats",
    "Truth",
    "WorldConfig",
    "WorldParams",
    "WorldSummary",
    "generate_world",
    "load_truth",
]
