"""Typed config sections (``quantization``, ``mitigation``, ``analysis``) and the planner that turns a section's
method entries into cells — validated at startup, before any data is loaded or model built.

A method entry is ``{method: NAME, bits: B, **fields of NAME's config dataclass}``:

* ``bits`` (alias ``bit_width``) fills the config's bits field; a list of widths is one cell per width;
* any other field given as a list where the config expects a single value (e.g. ``lam: [0.0, 5.0]``) is a sweep:
  one cell per value (widths outer, sweeps inner);
* ``models: [NAME, ...]`` restricts an entry to those of the run's models (e.g. a method for attention models
  only, in a run that also has a CNN);
* a mitigation entry without ``bits`` runs at the section's ``bits``, else at the widths its reference method
  (``config.reference_method``, e.g. ``ptq_static``) runs at in the ``quantization`` section, else at 4 and 8.

Every problem (unknown method, unknown field, a bad width, a constraint that cannot run) is a
:class:`fairq.errors.ConfigError` naming the entry (``mitigation.methods[2]``) and offering close matches.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from fairq.errors import ConfigError

#: widths of an entry that names none, when nothing else says (the study's INT4 / INT8 pair).
FALLBACK_BITS = (4, 8)

_QUANTIZATION = (
    {"method": "ptq_static", "bits": 8},
    {"method": "ptq_static", "bits": 4},
    {"method": "ptq_dynamic", "bits": 8},
    {"method": "qat", "bits": 8, "epochs": 1},
    {"method": "qat", "bits": 4, "epochs": 1},
    {"method": "mixed_precision", "bits": 4},
)
_MITIGATION = (
    {"method": "bias_aware_calibration"},
    {"method": "fairness_finetune", "lam": [1.0], "max_steps": 20},
    {"method": "sensitive_layer_preservation"},
)


@dataclass
class QuantizationSection:
    """The ``quantization`` phase: every entry of ``methods`` on every baseline (one cell per entry and sweep value).

    ``calibration_samples``: size of the natural (uniform) calibration draw from the training split (a method
    that asks for a group-balanced draw gets the same number, equally per intersectional group).
    """

    calibration_samples: int = 256
    methods: list[dict] = field(default_factory=lambda: [dict(e) for e in _QUANTIZATION])


@dataclass
class MitigationSection:
    """The ``mitigation`` phase: like ``quantization``; ``bits`` are the default widths of its entries (see the
    module doc), ``calibration_samples`` defaults to the quantization section's."""

    bits: Optional[list[int]] = None
    calibration_samples: Optional[int] = None
    methods: list[dict] = field(default_factory=lambda: [dict(e) for e in _MITIGATION])


@dataclass
class AnalysisSection:
    """The ``analysis`` phase (:func:`fairq.analysis.run_analysis`); ``seed`` defaults to the run's ``--seed``.
    The other defaults are :class:`fairq.analysis.AnalysisSettings`' (repeated here so that the CLI starts without
    importing the analysis; a test keeps them equal)."""

    n_bootstrap: int = 1000
    n_permutations: Optional[int] = None
    alpha: float = 0.05
    margin: float = 0.01
    min_group_size: int = 20
    figures: bool = True
    report: bool = True
    seed: Optional[int] = None


@dataclass
class RaySection:
    """``--launcher ray``: where the Ray cluster is and what each cell asks of it.

    ``address``: a cluster to join (default: ``$RAY_ADDRESS``, else a local Ray on this machine's cores);
    ``cpus_per_cell`` / ``gpus_per_cell``: each warm worker's resource request (the worker computes with that many
    intra-op threads; results do not depend on it); ``max_retries``: how often a worker that died is restarted and
    its unfinished cell re-run (a re-run replaces, never duplicates, its cell).
    """

    address: Optional[str] = None
    cpus_per_cell: float = 1.0
    gpus_per_cell: float = 0.0
    max_retries: int = 2


@dataclass
class TextSection:
    """Masked-LM runs (a ``datamodules.TextDataModule``): ``model`` — an HF name, a local HF folder,
    ``fairq-tiny-bert`` (the embedded default, pre-trained in the baseline phase) or ``fairq-minilm-mlm``, or a list
    of them (each is a subject of the run: baseline, cells and analysis per model) — replaces ``--models`` when
    set; ``pretrain``: fields of :class:`fairq.text.embedded.TinyBertSpec` (planted-bias ``rates``, ``steps``,
    sizes, …) for the embedded default."""

    model: Optional[Union[str, list[str]]] = None
    pretrain: dict = field(default_factory=dict)

    def models(self) -> list[str]:
        """The masked LMs of the run, in order (empty: a vision run)."""
        if not self.model:
            return []
        return [self.model] if isinstance(self.model, str) else list(self.model)

    def __post_init__(self):
        if self.model is not None and not isinstance(self.model, str):
            names = list(self.model)
            if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
                raise ConfigError(f"text.model: one name or a list of distinct names, got {self.model!r}")
        if self.pretrain:
            import dataclasses as dc

            from fairq.compression.core.registry import did_you_mean
            from fairq.text.embedded import TinyBertSpec

            names = {f.name for f in dc.fields(TinyBertSpec)} - {"seed"}
            bad = sorted(set(self.pretrain) - names)
            if bad:
                raise ConfigError(f"text.pretrain: unknown field(s) {bad}{did_you_mean(bad[0], names)}; valid: "
                                  f"{sorted(names)} (the seed is --seed)")


#: config key → section type, in phase order.
SECTIONS = {"quantization": QuantizationSection, "mitigation": MitigationSection}


@dataclass(frozen=True)
class PlannedCell:
    """One configured method setting of a section: its registered name, its config and where it came from."""

    method: str
    config: Any
    entry: str  # e.g. "mitigation.methods[2]"
    family: str
    models: tuple[str, ...] | None = None  # the entry's `models:` (None = every configured model)

    def runs_on(self, model_name: str) -> bool:
        return self.models is None or model_name in self.models


def section_of(value, cls):
    """A section dataclass from a parsed value (a dataclass, a jsonargparse Namespace or a dict)."""
    if isinstance(value, cls):
        return value
    if value is None:
        return cls()
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown key(s) {unknown}; valid: {sorted(names)}")
    return cls(**dict(value))


def _scalar_fields(config_cls) -> set[str]:
    """Fields whose default is a single value, so a list given for them is a sweep."""
    out = set()
    for f in dataclasses.fields(config_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if not isinstance(default, (list, tuple, dict, set)):
            out.add(f.name)
    return out


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def plan_section(name: str, section, *, default_bits=None) -> list[PlannedCell]:
    """Expand a section's ``methods`` into :class:`PlannedCell`s, validating every entry.

    ``default_bits(method) -> list | None``: widths of an entry without ``bits`` (``None``: the config's default).
    """
    from fairq.compression.core.registry import did_you_mean, get_method
    from fairq.methods import load_methods

    registry = load_methods()
    out = []
    for i, raw in enumerate(section.methods or []):
        where = f"{name}.methods[{i}]"
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: expected a mapping {{method: NAME, bits: B, ...}}, got {raw!r}")
        entry = dict(raw)
        method = entry.pop("method", None)
        if method is None:
            raise ConfigError(f"{where}: no 'method' in {raw}; registered methods: {', '.join(sorted(registry))}")
        if method not in registry:
            raise ConfigError(f"{where}: unknown method {method!r}{did_you_mean(method, registry)}; registered: "
                              f"{', '.join(sorted(registry))}")
        spec = get_method(method)
        models = entry.pop("models", None)
        if models is not None:
            models = (models,) if isinstance(models, str) else tuple(models)
            if not models or not all(isinstance(m, str) for m in models):
                raise ConfigError(f"{where} ({method}): models must be a list of model names, got {raw['models']!r}")
        bits = entry.pop("bits", entry.pop("bit_width", None))
        widths = _as_list(bits) if bits is not None else (default_bits(method) if default_bits else None) or [None]
        scalar = _scalar_fields(spec.config_cls)
        sweeps = {k: v for k, v in entry.items() if isinstance(v, (list, tuple)) and k in scalar}
        fixed = {k: v for k, v in entry.items() if k not in sweeps}
        keys = list(sweeps)
        for b in widths:
            for values in itertools.product(*(sweeps[k] for k in keys)):
                options = {**fixed, **dict(zip(keys, values))}
                try:
                    config = spec.config_cls.from_bit_width(b, **options)
                    config.check()
                except (TypeError, ValueError) as err:
                    raise ConfigError(f"{where} ({method}): {err}") from None
                out.append(PlannedCell(method, config, where, spec.family, models))
    return out


def calibration_samples(sections: dict, name: str) -> int:
    """Calibration draw size of section ``name`` (a section without its own takes the quantization section's)."""
    quant = section_of(sections.get("quantization"), QuantizationSection).calibration_samples
    own = section_of(sections.get(name), SECTIONS[name]).calibration_samples
    return int(own or quant)


def _is_any_model(name: str) -> bool:
    """A name some run could use: a vision model (fairq, timm, torchvision) or a masked LM available here."""
    from fairq.models import is_model
    from fairq.text.models import is_masked_lm

    return is_model(name) or is_masked_lm(name)


def check_entry_models(planned: dict[str, list[PlannedCell]], models) -> list[str]:
    """Check each entry's ``models:`` against the run's ``models``; returns one line per entry skipped in this run.

    An entry whose ``models:`` names real models (fairq, timm, torchvision, an available masked LM), none of them in
    this run, does not run here: a config written for other models (the default's ``soft_head_pruning`` entry is
    for ``tiny_vit``) still runs with ``--models`` changed. A name that is no model anywhere is a typo: a
    :class:`ConfigError` with close matches (it would otherwise skip the entry silently).
    """
    from fairq.models import close_model_names

    models = list(models)
    skipped = []
    for cells in planned.values():
        entries = {}
        for p in cells:  # one line per entry, not per planned cell of a sweep
            entries.setdefault(p.entry, p)
        for p in entries.values():
            if not p.models:
                continue
            for m in p.models:
                if m not in models and not _is_any_model(m):
                    close = close_model_names(m, extra=models)
                    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
                    raise ConfigError(f"{p.entry} ({p.method}): models: {m!r} is no model{hint}; this run's "
                                      f"models are {models}")
            if not any(m in models for m in p.models):
                skipped.append(f"{p.entry} ({p.method}): skipped in this run — its models: {list(p.models)} are "
                               f"not among the run's models {models}")
    return skipped


def check_methods_apply(planned: dict[str, list[PlannedCell]], models) -> None:
    """Every entry that runs on a model must be able to (``head_prune`` needs attention heads: a CNN has none).

    Checked on each model's weightless skeleton (:func:`fairq.models.skeleton`, seconds), so a run stops at startup,
    not after training its baselines; the message names the method, the model and the ``models:`` fix."""
    from fairq.compression.core.registry import get_method, unmet_requirements
    from fairq.models import skeleton

    models = list(models)
    cells = [p for ps in planned.values() for p in ps if get_method(p.method).requires]
    if not cells:
        return
    skeletons = {m: skeleton(m) for m in models if any(p.runs_on(m) for p in cells)}
    for p in cells:
        method = get_method(p.method)
        for m, model in skeletons.items():
            missing = unmet_requirements(method, model) if p.runs_on(m) else []
            if missing:
                able = [o for o, sk in skeletons.items() if not unmet_requirements(method, sk)]
                fix = (f"restrict the entry to models that have them, e.g. models: {able}" if able else
                       "restrict the entry with models: [...] to such a model, or remove it")
                raise ConfigError(f"{p.entry} ({p.method}): model {m!r} has no {' and no '.join(missing)}, which "
                                  f"{p.method} needs; {fix}")


def plan_run(sections: dict) -> dict[str, list[PlannedCell]]:
    """Plan the ``quantization`` and ``mitigation`` sections of a run (raises :class:`ConfigError` on any problem)."""
    quant = section_of(sections.get("quantization"), QuantizationSection)
    mitig = section_of(sections.get("mitigation"), MitigationSection)
    planned = {"quantization": plan_section("quantization", quant)}
    ref_widths: dict[str, list] = {}
    for cell in planned["quantization"]:
        ref_widths.setdefault(cell.method, [])
        if cell.config.bits not in ref_widths[cell.method]:
            ref_widths[cell.method].append(cell.config.bits)

    def mitigation_bits(method: str):
        if mitig.bits:
            return list(mitig.bits)
        from fairq.compression.core.registry import get_method

        ref = get_method(method).config_cls.reference_method
        if not isinstance(ref, str):  # a per-setting reference (advanced PTQ's balanced draw): the method itself
            ref = method
        return sorted(int(b) for b in ref_widths.get(ref, [])) or list(FALLBACK_BITS)

    planned["mitigation"] = plan_section("mitigation", mitig, default_bits=mitigation_bits)
    return planned
