"""Bias-aware calibration (``bias_aware_calibration``): static PTQ calibrated on a group-balanced draw.

The calibration set has the same size as a natural one but holds equally many samples of every intersectional
group (drawn with :func:`fairq.sampling.balanced_indices`, the rule of the datamodules' balanced sampler, so
the seed policy is the same). Activation ranges then reflect minority groups as much as majority ones.

What the draw can change: with ``observer="minmax"`` only samples the natural draw *missed* can move a range,
so rebalancing the same samples changes nothing; distribution-dependent observers (``percentile``, ``mse``,
``histogram``) also react to the reweighting itself. The balanced draw is taken from ``calibration_data``
(the *pool*): pass a pool larger than ``calibration_samples`` (e.g. the training loader) so that minority
samples a natural draw misses are available, or a pool already balanced (``FaceDataModule.calibration_dataloader(
n, balanced=True)``), which is used as is.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from torch import nn

from fairq.compression.core.config import PTQConfig, check_positive
from fairq.compression.quant.ptq import ptq_result
from fairq.compression.core.registry import Artifact, MethodInputs, MethodResult, register_method

from .batches import gather, group_ids, pool_size, take

log = logging.getLogger(__name__)


@dataclass
class BiasAwareCalibrationConfig(PTQConfig):
    """:class:`~fairq.compression.PTQConfig` whose calibration set is redrawn equally per intersectional group.

    ``calibration_samples``: size of the balanced set (default: the pool's size); ``seed``: the draw's seed;
    ``pool_batches``: read at most this many batches of ``calibration_data`` as the pool; ``batch_size``: of
    the calibration batches fed to the observers.
    """

    run_fields: ClassVar[tuple[str, ...]] = ("seed",)
    reference_method: ClassVar[str] = "ptq_static"

    calibration_samples: int | None = None
    seed: int = 0
    pool_batches: int | None = None
    batch_size: int = 128

    def __post_init__(self):
        super().__post_init__()
        check_positive("calibration_samples", self.calibration_samples, allow_none=True, integer=True)
        check_positive("pool_batches", self.pool_batches, allow_none=True, integer=True)
        check_positive("batch_size", self.batch_size, integer=True)

    def controls(self) -> list[PTQConfig]:
        """The plain ``ptq_static`` setting with the same fields: only the calibration draw differs."""
        names = {f.name for f in dataclasses.fields(PTQConfig)}
        return [PTQConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})]


def balanced_draw(sensitive, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` samples, equally many per intersectional group of the ``[N, n_attrs]`` codes.

    A pool already balanced to within one sample per group, with ``n`` equal to its size, is returned as is
    (0..N-1); otherwise the datamodules' rule draws it (groups smaller than their quota with replacement).
    """
    from fairq.sampling import balanced_indices

    ids, _ = group_ids(sensitive)
    counts = np.bincount(ids.numpy())
    if n == len(ids) and counts.max() - counts.min() <= 1:
        return np.arange(n)
    return balanced_indices(ids.numpy(), n, np.random.default_rng([seed, 7919]))


def group_counts(sensitive, index=None) -> dict[str, int]:
    """``{"a,b": count}`` of the intersectional code rows among ``sensitive[index]``."""
    ids, rows = group_ids(sensitive)
    ids = ids.numpy() if index is None else ids.numpy()[np.asarray(index)]
    counts = np.bincount(ids, minlength=len(rows))
    return {",".join(map(str, r.tolist())): int(c) for r, c in zip(rows, counts)}


def quantize_bias_aware(model: nn.Module, config: BiasAwareCalibrationConfig, calibration_data=None, *,
                        seed: int | None = None) -> tuple[nn.Module, dict]:
    """Static PTQ (:func:`~fairq.compression.quant.ptq.quantize_ptq`) calibrated on a group-balanced draw from
    ``calibration_data``; returns the model and a record of the pool's and the draw's group counts."""
    result, record = bias_aware_result(model, config, calibration_data, seed=seed)
    return result.model, record


def bias_aware_result(model: nn.Module, config: BiasAwareCalibrationConfig, calibration_data=None, *,
                      seed: int | None = None) -> tuple[MethodResult, dict]:
    """:func:`quantize_bias_aware` with the quantized model's :class:`MethodResult` (what it computes with)."""
    pool = gather(calibration_data, config.pool_batches)
    n = config.calibration_samples or pool_size(pool)
    seed = config.seed if seed is None else seed
    index = balanced_draw(pool["sensitive"], n, seed)
    record = {"n": int(len(index)), "unique_samples": int(len(np.unique(index))), "seed": seed,
              "pool_groups": group_counts(pool["sensitive"]), "drawn_groups": group_counts(pool["sensitive"], index)}
    if record["unique_samples"] < record["n"]:
        log.warning("bias-aware calibration: %d of %d draws repeat a sample (a group is smaller than its quota; "
                    "give a larger pool)", record["n"] - record["unique_samples"], record["n"])
    log.info("bias-aware calibration on %d samples, per group %s", record["n"], record["drawn_groups"])
    batches = take(pool, index, config.batch_size)
    return ptq_result(model, config, batches), record


def handle_bias_aware(model: nn.Module, config: BiasAwareCalibrationConfig, inputs: MethodInputs) -> MethodResult:
    """A run's ``balanced_calibration`` draw (the datamodule's own balanced draw, with the run's seed) is used as
    is; without one, the draw is taken from ``calibration`` (the pool) with ``config.seed``."""
    if inputs.balanced_calibration is not None:
        config = dataclasses.replace(config, calibration_samples=None)
        result, record = bias_aware_result(model, config, inputs.balanced_calibration, seed=inputs.seed)
    else:
        result, record = bias_aware_result(model, config, inputs.calibration)
    return result.replace(record={"calibration_groups": json.dumps(record["drawn_groups"], sort_keys=True),
                                  "calibration_unique": record["unique_samples"]},
                          artifacts=[Artifact("mitigation", {"calibration": record})], info={"calibration": record})


register_method("bias_aware_calibration", BiasAwareCalibrationConfig, handle_bias_aware,
                needs={"balanced_calibration"}, family="mitigation")
