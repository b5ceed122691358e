"""Analysis products: what the analysis computes, as a registry; :func:`fairq.analysis.run_analysis` loops over it.

A *product* (deltas, flips, findings, Pareto fronts, sparsity curves, head attribution, the text tables, …) says
when it applies, what it computes, which figures it draws and which section of ``report.html`` it writes:

```python
from fairq.analysis import register_product
from fairq.analysis.report import html_table

def compute(ctx):                          # ctx: AnalysisContext (stores, settings, earlier products' results)
    deltas = ctx.results["deltas"]
    return {"my_table": deltas.groupby("method")["delta"].mean().reset_index()}  # → tables/my_table.csv

register_product("my_table", compute, requires=("deltas",),   # runs after deltas, and only if deltas ran
                 report=lambda ctx: "<h2>My table</h2>" + html_table(ctx.results["my_table"]))
```

A run goes in four steps over the registered products: every product that applies computes (after the products
it ``requires`` — and only when they ran — or lists in ``after``; ``compute`` returns its tables, and anything else other products read goes into
``ctx.results`` under a name of its own), then every table is written to ``tables/<name>.csv``, then other files
(``files``: LaTeX) and, with ``figures``, the figures; last, with ``report``, ``report.html`` gets each product's
section in ``order``. Tables are written only after every product computed, because the findings product adjusts
the p-values of the deltas and summary tables with its own (one Benjamini–Hochberg family per run).

fairq's own products are registered by :mod:`fairq.analysis.builtin`. A product of your own is one module that
calls :func:`register_product`: import it before the run, name it in ``$FAIRQ_ANALYSIS_MODULES`` (comma-separated)
or declare it as a Python entry point of group ``fairq.analysis_products`` in the package that holds it.
"""
from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from fairq.errors import ConfigError
from fairq.metrics import DEFAULT_MIN_GROUP_SIZE
from fairq.store import atomic_write_csv

from .findings import EQUIVALENCE_MARGIN
from .load import Store

__all__ = ["AnalysisSettings", "AnalysisContext", "Product", "register_product", "unregister_product",
           "registered_products", "run_order", "load_products", "plugin_modules", "ENV_MODULES", "ENTRY_POINT_GROUP"]

#: environment variable naming extra product modules (comma-separated), e.g. ``FAIRQ_ANALYSIS_MODULES=mypkg.prod``
ENV_MODULES = "FAIRQ_ANALYSIS_MODULES"
#: entry-point group of installed packages' product modules (the value is the module to import; the name a label)
ENTRY_POINT_GROUP = "fairq.analysis_products"


@dataclass(frozen=True)
class AnalysisSettings:
    """Everything an analysis run is told (the ``analysis:`` config section, plus ``progress``).

    Parameters
    ----------
    n_bootstrap : int, default 1000
        Bootstrap resamples for every CI.
    seed : int, default 0
        Seeds every resampling (results do not depend on the order cells are listed in).
    alpha : float, default 0.05
        Level of the findings' decision rule (on BH-adjusted p-values); CIs are ``1 − alpha``.
    n_permutations : int, optional
        Permutations of the paired permutation tests (default: ``n_bootstrap``).
    min_group_size : int
        Groups smaller than this are left out of gaps (as in :func:`fairq.metrics.fairness_metrics`).
    margin : float
        Equivalence margin of the findings rule.
    figures, report : bool
        Write the PNG figures / the HTML report.
    progress : bool, default True
        tqdm bars.
    """

    n_bootstrap: int = 1000
    seed: int = 0
    alpha: float = 0.05
    n_permutations: int | None = None
    min_group_size: int = DEFAULT_MIN_GROUP_SIZE
    margin: float = EQUIVALENCE_MARGIN
    figures: bool = True
    report: bool = True
    progress: bool = True

    def __post_init__(self):
        def positive_int(name, value):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"analysis.{name} must be a positive integer, got {value!r}")

        positive_int("n_bootstrap", self.n_bootstrap)
        if self.n_permutations is not None:
            positive_int("n_permutations", self.n_permutations)
        positive_int("min_group_size", self.min_group_size)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"analysis.seed must be an integer, got {self.seed!r}")
        if not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 1:
            raise ConfigError(f"analysis.alpha must be a level strictly between 0 and 1 (e.g. 0.05), got "
                              f"{self.alpha!r}")
        if not isinstance(self.margin, (int, float)) or not (math.isfinite(self.margin) and self.margin >= 0):
            raise ConfigError(f"analysis.margin must be a finite number >= 0 (a difference of proportions, e.g. "
                              f"0.01), got {self.margin!r}")

    @property
    def n_perm(self) -> int:
        """Permutations actually run: ``n_permutations``, else ``n_bootstrap``."""
        return int(self.n_permutations if self.n_permutations is not None else self.n_bootstrap)

    @property
    def confidence(self) -> float:
        """Confidence of every interval, ``1 − alpha``."""
        return 1.0 - float(self.alpha)

    @property
    def level(self) -> str:
        """The confidence as the figures and tables label it, e.g. ``"95%"``."""
        return f"{self.confidence * 100:g}%"


@dataclass
class AnalysisContext:
    """What a product sees: the run's stores, its settings and what the products before it computed.

    ``store`` holds the classification cells and ``text`` the masked-LM cells (either is None when the run has
    none). ``results`` maps names to what products computed (every table by its name, e.g.
    ``results["deltas"]``, and the intermediate values products share, e.g. ``results["pairs"]``); ``tables``
    and ``figures`` collect the written files.
    """

    output_dir: Path
    settings: AnalysisSettings
    store: Store | None = None
    text: Store | None = None
    results: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Path] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)

    @property
    def fig_dir(self) -> Path:
        return self.output_dir / "figures"

    @property
    def n_cells(self) -> int:
        return sum(len(s.cells) for s in (self.store, self.text) if s is not None)

    def write_table(self, name: str, frame: pd.DataFrame) -> Path:
        """``tables/<name>.csv``, atomically."""
        return atomic_write_csv(self.output_dir / "tables" / f"{name}.csv", frame)


def _always(ctx: AnalysisContext) -> bool:
    return True


@dataclass(frozen=True)
class Product:
    """One registered analysis product (see the module doc).

    ``compute(ctx)`` returns ``{table name: DataFrame}`` (written as ``tables/<name>.csv``; may be empty);
    ``applies(ctx)`` decides, just before it would compute, whether it runs at all; ``files(ctx)`` writes other
    files after every table is written and returns ``{name: path}``; ``figures(ctx, fig_dir)`` returns the
    figures it wrote; ``report(ctx)`` returns its HTML section of ``report.html``. ``order`` places its tables,
    figures and report section (lower first; ties by name). ``requires`` names the products it reads: it computes
    after them and is skipped when one of them did not run; ``after`` names products it computes after when they
    run (an order only).
    """

    name: str
    compute: Callable[[AnalysisContext], Mapping[str, pd.DataFrame] | None]
    applies: Callable[[AnalysisContext], bool] = _always
    files: Callable[[AnalysisContext], Mapping[str, Path]] | None = None
    figures: Callable[[AnalysisContext, Path], list[Path]] | None = None
    report: Callable[[AnalysisContext], str] | None = None
    order: int = 500
    requires: tuple[str, ...] = ()
    after: tuple[str, ...] = ()


_PRODUCTS: dict[str, Product] = {}


def register_product(name: str, compute: Callable | None = None, *, applies: Callable = _always,
                     files: Callable | None = None, figures: Callable | None = None, report: Callable | None = None,
                     order: int = 500, requires=(), after=()):
    """Register an analysis product (fields as :class:`Product`); returns it. Without ``compute`` it is a
    decorator: ``@register_product("name", order=…)`` over the compute function."""
    if compute is None:
        return lambda fn: (register_product(name, fn, applies=applies, files=files, figures=figures, report=report,
                                            order=order, requires=requires, after=after), fn)[1]
    if name in _PRODUCTS:
        raise ValueError(f"analysis product {name!r} registered twice")
    if not callable(compute) or not callable(applies):
        raise TypeError(f"analysis product {name!r}: compute and applies must be callables")
    names = [(r,) if isinstance(r, str) else tuple(r) for r in (requires, after)]
    product = Product(name, compute, applies, files, figures, report, int(order), *names)
    _PRODUCTS[name] = product
    return product


def unregister_product(name: str) -> None:
    """Remove a product (tests register toy products and remove them again)."""
    _PRODUCTS.pop(name, None)


def registered_products() -> list[Product]:
    """The registered products in report order (``order``, then name)."""
    return sorted(_PRODUCTS.values(), key=lambda p: (p.order, p.name))


def run_order(items: list[Product] | None = None) -> list[Product]:
    """The products in the order they compute: report order, except that each comes after those it requires or
    lists in ``after``."""
    pending = list(registered_products() if items is None else items)
    known = {p.name for p in pending}
    for p in pending:
        missing = [r for r in p.requires if r not in known]
        if missing:
            raise ValueError(f"analysis product {p.name!r} requires {missing}, which is not registered; registered: "
                             f"{sorted(known)}")
    done, out = set(), []
    while pending:
        ready = next((p for p in pending if set(p.requires) | (set(p.after) & known) <= done), None)
        if ready is None:
            raise ValueError(f"analysis products require each other in a cycle: {[p.name for p in pending]}")
        pending.remove(ready)
        done.add(ready.name)
        out.append(ready)
    return out


def plugin_modules() -> list[str]:
    """Product modules of installed packages (entry points of group :data:`ENTRY_POINT_GROUP`), then those named
    in ``$FAIRQ_ANALYSIS_MODULES``."""
    from importlib.metadata import entry_points

    found = [ep.value.split(":")[0].strip() for ep in entry_points(group=ENTRY_POINT_GROUP)]
    return found + [m.strip() for m in os.environ.get(ENV_MODULES, "").split(",") if m.strip()]


def load_products() -> list[Product]:
    """Import fairq's own products and every plugin module (idempotent); returns :func:`registered_products`."""
    for name in ("fairq.analysis.builtin", *plugin_modules()):
        importlib.import_module(name)
    return registered_products()


def compute_products(ctx: AnalysisContext) -> list[Product]:
    """Steps 1–2 of a run: compute every product that applies, then write their tables; returns those that ran,
    in report order."""
    ran, frames = [], {}
    for p in run_order():
        if not set(p.requires) <= {q.name for q in ran} or not p.applies(ctx):
            continue
        tables = dict(p.compute(ctx) or {})
        for name, frame in tables.items():
            if name in frames:
                raise ValueError(f"analysis product {p.name!r} writes tables/{name}.csv, which "
                                 f"{frames[name][0]!r} writes too")
            frames[name] = (p.name, frame)
            ctx.results[name] = frame
        ran.append(p)
    ran.sort(key=lambda p: (p.order, p.name))
    for p in ran:  # written in report order, once everything is computed (BH adjusts earlier tables in place)
        for name, (owner, frame) in frames.items():
            if owner == p.name:
                ctx.tables[name] = ctx.write_table(name, frame)
    for p in ran:
        if p.files is not None:
            ctx.tables.update(p.files(ctx) or {})
    return ran
