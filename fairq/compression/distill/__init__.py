"""Knowledge distillation (importing this package registers ``distill``; it trains with Lightning, so
:mod:`fairq.methods` loads it rather than ``import fairq.compression``, which stays light)."""
from fairq.compression.distill.kd import (DistillConfig, DistillModule, MaskedLMDistillModule, build_student,
                                          distill_loss, half_depth, handle_distill, mean_kl)

__all__ = ["DistillConfig", "DistillModule", "MaskedLMDistillModule", "build_student", "distill_loss", "half_depth",
           "handle_distill", "mean_kl"]
