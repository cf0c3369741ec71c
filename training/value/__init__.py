"""Customer value (issue #13): predicted spend over a horizon, its interval, margin and A–D tiers.

``spec`` holds what a registered version carries besides its boosters (settings,
tier thresholds, the conformal correction); ``scorer`` loads and applies a version;
``metrics`` and ``tiers`` are plain functions on frames; ``train`` fits, evaluates
and registers.
"""
