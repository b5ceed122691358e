"""The one place that discovers compression methods: importing it registers every method fairq ships.

Each technique registers itself from its own module (``register_method`` in
:mod:`fairq.compression.core.registry`); this module only imports those modules, so the library layers never import
the layers above them (``fairq.compression`` knows nothing of ``fairq.mitigation``). A method of your own
registers the same way: declare it as a Python entry point of group ``fairq.methods`` in the package that holds it
(``[project.entry-points."fairq.methods"] my_method = "mypkg.my_method"``), so every process of a run — Ray
workers included — finds it once the package is installed; or name its module in ``$FAIRQ_METHOD_MODULES``.
"""
from __future__ import annotations

import importlib
import os

from fairq.compression.core.registry import METHODS, get_method, make_config, register_method  # noqa: F401

#: modules whose import registers methods, in registration order (``fairq.compression.distill`` trains with
#: Lightning, so it is loaded here rather than by ``import fairq.compression``, which stays light).
METHOD_MODULES = ("fairq.compression", "fairq.compression.distill", "fairq.mitigation")
#: environment variable naming extra method modules (comma-separated), e.g. ``FAIRQ_METHOD_MODULES=mypkg.method``:
#: how a method of your own reaches every process of a run (Ray workers included) without editing fairq.
ENV_MODULES = "FAIRQ_METHOD_MODULES"
#: entry-point group of installed packages' method modules (the value is the module to import; the name is a label)
ENTRY_POINT_GROUP = "fairq.methods"


def plugin_modules() -> list[str]:
    """Method modules of installed packages (entry points of group :data:`ENTRY_POINT_GROUP`), then those named in
    ``$FAIRQ_METHOD_MODULES``."""
    from importlib.metadata import entry_points

    found = [ep.value.split(":")[0].strip() for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return found + [m.strip() for m in os.environ.get(ENV_MODULES, "").split(",") if m.strip()]


def load_methods() -> dict[str, type]:
    """Import every method module (idempotent): the shipped ones, then installed packages' ``fairq.methods`` entry
    points and ``$FAIRQ_METHOD_MODULES``; returns the registry ``{name: config class}``."""
    for name in (*METHOD_MODULES, *plugin_modules()):
        importlib.import_module(name)
    return METHODS


load_methods()


def apply_quantization(model, method: str, bit_width=None, calibration_data=None, **options):
    """:func:`fairq.compression.apply_quantization` with every shipped method registered (mitigations too)."""
    from fairq.compression import apply_quantization as apply

    return apply(model, method, bit_width, calibration_data, **options)
