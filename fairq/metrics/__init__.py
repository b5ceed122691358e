"""Fairness metrics: one group-counts core, metrics as pure functions of it, streaming state and bootstrap."""

from .bootstrap import (
    bootstrap_ci,
    bootstrap_ci_from_counts,
    paired_bootstrap_ci,
    paired_bootstrap_ci_from_counts,
    resample_group_counts,
)
from .core import encode_groups, encode_labels, group_confusion, group_labels
from .fairness import (
    DEFAULT_MIN_GROUP_SIZE,
    GROUP_METRICS,
    SCALAR_METRICS,
    accuracy_difference,
    demographic_parity_difference,
    demographic_parity_ratio,
    disparate_impact,
    equal_opportunity_difference,
    equalized_odds_difference,
    fairness_metrics,
    group_rates,
    metrics_from_counts,
    predictive_equality_difference,
    scalar_metrics_from_counts,
    worst_group_accuracy,
)

_STREAMING = ("GroupConfusionMetric", "intersectional_group_ids", "radix_groups")


def __getattr__(name: str):
    """Import the torch / torchmetrics streaming part on first use (importing torchmetrics takes seconds)."""
    if name in _STREAMING:
        from . import streaming

        return getattr(streaming, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DEFAULT_MIN_GROUP_SIZE", "GROUP_METRICS", "SCALAR_METRICS", "GroupConfusionMetric", "accuracy_difference",
    "bootstrap_ci", "bootstrap_ci_from_counts", "demographic_parity_difference", "demographic_parity_ratio",
    "disparate_impact", "encode_groups", "encode_labels", "equal_opportunity_difference",
    "equalized_odds_difference", "fairness_metrics", "group_confusion", "group_labels", "group_rates",
    "intersectional_group_ids", "metrics_from_counts", "paired_bootstrap_ci", "paired_bootstrap_ci_from_counts",
    "predictive_equality_difference", "radix_groups", "resample_group_counts", "scalar_metrics_from_counts",
    "worst_group_accuracy",
]
