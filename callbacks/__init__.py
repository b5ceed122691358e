"""Lightning callbacks that observe training: fairness metrics at every validation end."""
from .fairness import FairnessMonitor

__all__ = ["FairnessMonitor"]
