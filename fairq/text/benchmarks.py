"""Text benchmarks as data: one :func:`register_benchmark` call per benchmark (lm-evaluation-harness's idea).

A benchmark is everything the rest of fairq needs to score, bootstrap, tabulate and report it:

* ``build_requests(tokenizer, items, *, benchmark, max_len) -> Job`` — its items as masked-position requests and a
  ``finish`` that maps the engine's log-probabilities back to one per-item row each (:mod:`fairq.text.scoring`);
  or, for a benchmark that is not scored by masked positions (StereoSet intersentence: NSP), ``score(model,
  tokenizer, items) -> (frame, reason)``;
* ``metrics(frame, w) -> {metric: array [B]}`` — its metrics under per-item resampling weights ``w`` (``[B, n]``;
  ``None`` = unit weights): **one implementation** serves the cell's value (``metrics.csv``, unit weights) and the
  analysis's cluster bootstrap (:mod:`fairq.analysis.text`);
* ``values(frame) -> dict`` (optional) — the cell's ``metrics.csv`` values: ``metrics`` at unit weights plus
  descriptive columns that are not bootstrapped (item counts, rates);
* ``columns`` — the ``metrics.csv`` columns every text row has (NaN when the benchmark is off);
* ``headline`` (the log line), ``report`` (the report's headline table), ``curves`` (sparsity curves) and
  ``sections`` (the report's per-domain tables) — which of its metrics the tables, curves and report show;
* ``reader(root, **options) -> (items, skipped)`` and ``stratum(item)`` — how :class:`datamodules.TextDataModule`
  reads its items and draws a stratified subset (a benchmark of your own is switched on in a config with
  ``--data.init_args.benchmarks '{my_bench: {items: 200}}'``);
* ``units(frame)`` — the resampling unit of each per-item row (default: the item); ``flips`` — how a changed
  answer reads (``"stereotype"``: to / away from the stereotypical option; ``"answer"``: correct ↔ wrong).

fairq's own benchmarks register in :mod:`fairq.text.scoring` (StereoSet, CrowS-Pairs, BBQ) and
:mod:`fairq.text.embedded` (the planted-bias probes). A benchmark of your own registers from its own module: declare
the module as a Python entry point of group ``fairq.benchmarks`` (``[project.entry-points."fairq.benchmarks"]
my_bench = "mypkg.my_bench"``), so every process of a run — Ray workers included — finds it, or name it in
``$FAIRQ_BENCHMARK_MODULES``.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

#: modules whose import registers fairq's own benchmarks, in the order cells score and tables list them
BUILTIN_MODULES = ("fairq.text.scoring", "fairq.text.embedded")
#: entry-point group of installed packages' benchmark modules (the value is the module to import)
ENTRY_POINT_GROUP = "fairq.benchmarks"
#: environment variable naming extra benchmark modules (comma-separated)
ENV_MODULES = "FAIRQ_BENCHMARK_MODULES"


@dataclass(frozen=True)
class Benchmark:
    """One registered text benchmark (see the module doc for each field)."""

    name: str
    metrics: Callable[[pd.DataFrame, Any], dict[str, np.ndarray]]
    build_requests: Callable[..., Any] | None = None
    score: Callable[..., tuple[pd.DataFrame, str]] | None = None
    columns: tuple[str, ...] = ()
    headline: tuple[str, ...] = ()
    report: tuple[str, ...] = ()
    curves: tuple[str, ...] = ()
    sections: tuple[tuple[str, Callable[[list[str]], list[str]]], ...] = ()
    values: Callable[[pd.DataFrame], dict] | None = None
    reader: Callable[..., tuple[list, Any]] | None = None
    stratum: Callable[[Any], Any] | None = None
    units: Callable[[pd.DataFrame], np.ndarray] | None = None
    flips: str = "stereotype"

    def point(self, frame: pd.DataFrame) -> dict:
        """The cell's ``metrics.csv`` values: ``values(frame)`` when registered (``metrics`` at unit weights plus
        descriptive columns such as item counts), else ``metrics`` at unit weights."""
        if self.values is not None:
            return self.values(frame)
        return {k: float(v[0]) for k, v in self.metrics(frame, None).items()}


_REGISTRY: dict[str, Benchmark] = {}


def register_benchmark(name: str, *, metrics, build_requests=None, score=None, columns=(), headline=(), report=None,
                       curves=None, sections=(), values=None, reader=None, stratum=None, units=None,
                       flips: str = "stereotype") -> Benchmark:
    """Register a text benchmark under ``name`` (the per-item ``benchmark`` value; see the module doc).

    ``report`` / ``curves`` default to ``headline``. Exactly one of ``build_requests`` (masked-position scoring)
    and ``score`` (a scorer of its own) is required."""
    if name in _REGISTRY:
        raise ValueError(f"text benchmark {name!r} registered twice")
    if (build_requests is None) == (score is None):
        raise ValueError(f"benchmark {name!r}: give exactly one of build_requests (masked positions) or score")
    if flips not in ("stereotype", "answer"):
        raise ValueError(f"benchmark {name!r}: flips must be 'stereotype' or 'answer', got {flips!r}")
    bench = Benchmark(name, metrics, build_requests, score, tuple(columns), tuple(headline),
                      tuple(headline if report is None else report), tuple(headline if curves is None else curves),
                      tuple(sections), values, reader, stratum, units, flips)
    _REGISTRY[name] = bench
    return bench


def unregister_benchmark(name: str) -> None:
    """Remove ``name`` (tests that register a benchmark of their own clean up with this)."""
    _REGISTRY.pop(name)


def plugin_modules() -> list[str]:
    """Benchmark modules of installed packages (entry points of :data:`ENTRY_POINT_GROUP`), then those named in
    ``$FAIRQ_BENCHMARK_MODULES``."""
    from importlib.metadata import entry_points

    found = [ep.value.split(":")[0].strip() for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return found + [m.strip() for m in os.environ.get(ENV_MODULES, "").split(",") if m.strip()]


def benchmarks() -> dict[str, Benchmark]:
    """Every registered benchmark, in registration order (fairq's own first; importing their modules is
    idempotent)."""
    for module in (*BUILTIN_MODULES, *plugin_modules()):
        importlib.import_module(module)
    return dict(_REGISTRY)


def get_benchmark(name: str) -> Benchmark | None:
    """The registered benchmark ``name``, or None (rows stored by a benchmark no longer registered)."""
    return benchmarks().get(name)


def contract_columns() -> tuple[str, ...]:
    """The ``metrics.csv`` columns every text row has (NaN where a benchmark is off), in registration order."""
    return tuple(c for b in benchmarks().values() for c in b.columns)


def _union(field: str) -> tuple[str, ...]:
    out: list[str] = []
    for b in benchmarks().values():
        out += [m for m in getattr(b, field) if m not in out]
    return tuple(out)


def headline_metrics() -> tuple[str, ...]:
    """The log line's metrics, every benchmark's ``headline`` in registration order."""
    return _union("headline")


def report_metrics() -> tuple[str, ...]:
    """The report's headline table: every benchmark's ``report`` metrics in registration order."""
    return _union("report")


def curve_metrics() -> tuple[str, ...]:
    """The sparsity curves' metrics: every benchmark's ``curves`` in registration order."""
    return _union("curves")
