"""User errors: bad input a user can fix (a config, a dataset, a model name, a missing phase).

``main.py`` prints their message alone and exits with status 2 (``--debug`` or ``FAIRQ_DEBUG=1`` shows the
traceback); every other exception is a programming error and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """Base of every error whose message tells the user what to fix."""


class ConfigError(UserError, ValueError):
    """A config section or method entry is invalid (names the entry and offers close matches)."""


class InfeasibleError(UserError, ValueError):
    """A method cannot run on this model or data as configured (a budget below what any allocation reaches, no
    validation group large enough, no layer to quantize). The fairness-aware quantizer records such an option as
    infeasible and moves on; any other exception is a bug and propagates. A user error: ``main.py`` prints its
    message (what to change) without a traceback."""


class UnknownModelError(UserError, ValueError):
    """A model name is neither fairq's, timm's nor torchvision's."""
