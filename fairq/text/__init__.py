"""The text branch: masked-LM bias benchmarks (StereoSet, CrowS-Pairs, BBQ) and their official scoring rules."""
from .bbq import score_bbq

__all__ = ["score_bbq"]
