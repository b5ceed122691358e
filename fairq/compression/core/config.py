"""Compression configs: one small dataclass per technique, validated in ``__post_init__`` (torchao style).

Every field is a plain type (int, float, str, bool, None, tuples of those), so a YAML file can name a config
directly: ``PTQConfig(**yaml_dict)`` (YAML lists become tuples here).
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, ClassVar

OBSERVERS = ("minmax", "percentile", "mse", "histogram")
BACKENDS = ("auto", "simulated", "int8")
SIMULATIONS = ("graph", "layer_input")
MIN_BITS, MAX_BITS = 2, 8


def check_bits(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
        extra = " or None (full precision)" if allow_none else ""
        raise ValueError(f"{name} must be an int in {MIN_BITS}..{MAX_BITS}{extra}, got {value!r}")


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def as_str_tuple(name: str, value) -> tuple[str, ...]:
    if isinstance(value, str):
        value = (value,)
    value = tuple(value)
    if not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be module-name patterns (strings), got {value!r}")
    return value


def check_positive(name: str, value, allow_none: bool = False, integer: bool = False) -> None:
    if value is None and allow_none:
        return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise ValueError(f"{name} must be a positive {'int' if integer else 'number'}, got {value!r}")


class MethodConfig:
    """Shared helpers of every method config: ``bit_width`` → field mapping, dict round-trip, the cell's variant
    tag and the control cells a method is compared with."""

    #: the field that ``apply_quantization(..., bit_width)`` fills.
    bits_field: ClassVar[str] = "weight_bits"
    #: fields that are run context (set per run, e.g. a seed), never part of a cell's identity.
    run_fields: ClassVar[tuple[str, ...]] = ()
    #: the plain method a mitigation is judged against in analysis ("" = none); recorded with every cell.
    reference_method: ClassVar[str] = ""

    @classmethod
    def from_bit_width(cls, bit_width, **options):
        """Build from the familiar ``bit_width`` plus field overrides; unknown options raise a clear error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            hints = [f"{u!r} (did you mean {', '.join(map(repr, c))}?)" if (c := difflib.get_close_matches(
                u, names, n=2, cutoff=0.6)) else repr(u) for u in unknown]
            raise TypeError(f"{cls.__name__} has no option(s) {', '.join(hints)}; valid: {sorted(names)}")
        if bit_width is not None and cls.bits_field not in options:
            options[cls.bits_field] = bit_width
        return cls(**options)

    def to_dict(self) -> dict[str, Any]:
        """Plain-typed fields (tuples as lists) for YAML/JSON."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @property
    def bits(self):
        """The value of :attr:`bits_field` (weight bits, or a mixed-precision budget)."""
        return getattr(self, self.bits_field)

    def variant(self) -> str:
        """The cell's variant tag: ``key=value`` for every field that differs from its default (the bits field,
        explicit plans and :attr:`run_fields` excluded), so two settings of one method and width are two cells."""
        return variant_of(self, skip=self.run_fields)

    def controls(self) -> list["MethodConfig"]:
        """Configs of the control cells this setting is compared with (stored alongside it); none by default."""
        return []

    def check(self) -> None:
        """Checks beyond the fields' own (run before any work; raise ``ValueError`` naming the problem)."""

    def uses(self, needs: frozenset) -> frozenset:
        """What this setting uses of what its method declared it ``needs`` (the phase builds only that); all of
        it by default (e.g. a setting without a fine-tune can leave out ``training``)."""
        return needs


def variant_of(config, skip=()) -> str:
    """``key=value`` pairs of the config fields that differ from the defaults (bit fields and ``skip`` excluded)."""
    skip = {getattr(type(config), "bits_field", ""), "plan", *skip}
    parts = []
    for f in dataclasses.fields(config):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        value = getattr(config, f.name)
        if f.name in skip or value == default:
            continue
        value = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        parts.append(f"{f.name}={value}")
    return "_".join(parts)


@dataclass
class PTQConfig(MethodConfig):
    """Static post-training quantization: k-bit weights, calibrated per-tensor k-bit activations.

    ``act_bits=None`` quantizes weights only. ``backend="auto"`` runs real INT8 kernels for W8A8 on CPU and
    simulated (fake-quant) INT-k otherwise; ``backend="int4"`` (W4, ``act_bits=None``, CPU) runs every
    ``nn.Linear`` on a real int4 weight-only kernel and simulates the rest (:mod:`fairq.compression.backends.int4`).
    ``skip_modules``: module-name patterns (fnmatch; a pattern also covers the module's children) left in FP32.
    ``calibration_batches`` caps the calibration batches used.

    ``simulation`` (simulated backend only): ``"graph"`` (default) simulates the graph the real INT8 backend
    deploys, at k bits (BatchNorm folded, tensors quantized where produced, adds/cat quantized; see
    :mod:`fairq.compression.quant.graph_sim`); ``"layer_input"`` is the older per-layer-input fake-quant (module swap,
    BatchNorm unfolded), kept as an explicit option — it is not what a deployed model computes.
    """

    weight_bits: int = 8
    act_bits: int | None = 8
    per_channel: bool = True
    symmetric: bool = True
    observer: str = "minmax"
    percentile: float = 99.99
    backend: str = "auto"
    skip_modules: tuple[str, ...] = ()
    act_symmetric: bool = False
    calibration_batches: int | None = 32
    simulation: str = "graph"

    def __post_init__(self):
        check_bits("weight_bits", self.weight_bits)
        check_bits("act_bits", self.act_bits, allow_none=True)
        check_choice("observer", self.observer, OBSERVERS)
        check_choice("backend", self.backend, BACKENDS + ("int4",))
        check_choice("simulation", self.simulation, SIMULATIONS)
        if self.backend == "int4" and (self.weight_bits, self.act_bits) != (4, None):
            raise ValueError(f"backend='int4' is the weight-only int4 kernel: needs weight_bits=4 and act_bits=None, "
                             f"got {self.weight_bits}/{self.act_bits}")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile!r}")
        self.skip_modules = as_str_tuple("skip_modules", self.skip_modules)
        check_positive("calibration_batches", self.calibration_batches, allow_none=True, integer=True)
        if self.backend == "int8" and (self.weight_bits, self.act_bits) != (8, 8):
            raise ValueError(f"backend='int8' needs weight_bits=8 and act_bits=8, got {self.weight_bits}/"
                             f"{self.act_bits}; use backend='simulated' or 'auto' for other widths")


@dataclass
class DynamicConfig(MethodConfig):
    """Dynamic quantization of Linear layers: k-bit weights, activations quantized per batch at run time.

    ``backend="auto"`` uses real INT8 kernels when ``bits == 8``; otherwise (or ``"simulated"``) weights are
    fake-quantized to ``bits`` and each batch's input is fake-quantized per tensor to ``act_bits``.
    """

    bits_field: ClassVar[str] = "bits"

    bits: int = 8
    backend: str = "auto"
    act_bits: int | None = 8
    per_channel: bool = True
    symmetric: bool = True
    skip_modules: tuple[str, ...] = ()

    def __post_init__(self):
        check_bits("bits", self.bits)
        check_bits("act_bits", self.act_bits, allow_none=True)
        check_choice("backend", self.backend, BACKENDS)
        self.skip_modules = as_str_tuple("skip_modules", self.skip_modules)
        if self.backend == "int8" and self.bits != 8:
            raise ValueError(f"backend='int8' needs bits=8, got {self.bits}; use 'simulated' or 'auto'")


@dataclass
class QATConfig(MethodConfig):
    """Quantization-aware training: fake-quant (straight-through estimator) while training, then convert.

    ``epochs``/``lr``/``max_steps`` drive only the minimal built-in loop (used when ``quantize`` gets a
    ``train_loader`` and no ``train_fn``). 8-bit QAT converts to real INT8 when the backend allows it.
    """

    weight_bits: int = 8
    act_bits: int | None = 8
    epochs: int = 1
    lr: float = 1e-4
    per_channel: bool = True
    symmetric: bool = True
    backend: str = "auto"
    skip_modules: tuple[str, ...] = ()
    max_steps: int | None = None
    calibration_batches: int | None = 8

    def __post_init__(self):
        check_bits("weight_bits", self.weight_bits)
        check_bits("act_bits", self.act_bits, allow_none=True)
        check_positive("epochs", self.epochs, integer=True)
        check_positive("lr", self.lr)
        check_positive("max_steps", self.max_steps, allow_none=True, integer=True)
        check_positive("calibration_batches", self.calibration_batches, allow_none=True, integer=True)
        check_choice("backend", self.backend, BACKENDS)
        self.skip_modules = as_str_tuple("skip_modules", self.skip_modules)
        if self.backend == "int8" and (self.weight_bits, self.act_bits) != (8, 8):
            raise ValueError("backend='int8' needs weight_bits=8 and act_bits=8")


DEFAULT_KEEP_FP32 = ("classifier", "head", "heads", "fc", "last_linear")


@dataclass
class MixedPrecisionConfig(MethodConfig):
    """Per-layer bit allocation from ``candidate_bits`` (``None`` = FP32) under a size budget.

    Budget: ``budget_avg_bits`` (parameter-weighted mean bits over all Conv/Linear weights, FP32 counting as 32)
    or ``budget_mb`` (packed size estimate of the whole model, MiB). Sensitivity per layer and width is the
    validation ``loss`` increase / ``accuracy`` drop when only that layer is quantized (``kl``: label-free KL
    divergence from the FP32 outputs). ``keep_fp32`` patterns (default: the classifier/head) and, with
    ``keep_first``, the first quantizable layer stay FP32. A given ``plan`` ({layer: bits|None}) skips the search.
    """

    bits_field: ClassVar[str] = "budget_avg_bits"

    candidate_bits: tuple[int | None, ...] = (2, 4, 8, None)
    budget_avg_bits: float | None = None
    budget_mb: float | None = None
    keep_fp32: tuple[str, ...] = DEFAULT_KEEP_FP32
    keep_first: bool = False
    sensitivity: str = "loss"
    act_bits: int | None = 8
    plan: dict | None = None
    per_channel: bool = True
    symmetric: bool = True
    observer: str = "minmax"
    val_batches: int | None = 4
    calibration_batches: int | None = 32

    def __post_init__(self):
        self.candidate_bits = tuple(self.candidate_bits)
        if not self.candidate_bits:
            raise ValueError("candidate_bits must not be empty")
        for b in self.candidate_bits:
            check_bits("candidate_bits entry", b, allow_none=True)
        if len(set(self.candidate_bits)) != len(self.candidate_bits):
            raise ValueError(f"candidate_bits has duplicates: {self.candidate_bits}")
        check_positive("budget_avg_bits", self.budget_avg_bits, allow_none=True)
        check_positive("budget_mb", self.budget_mb, allow_none=True)
        if self.budget_avg_bits is not None and self.budget_mb is not None:
            raise ValueError("give one budget: budget_avg_bits or budget_mb, not both")
        if self.budget_avg_bits is None and self.budget_mb is None and self.plan is None:
            raise ValueError("MixedPrecisionConfig needs budget_avg_bits, budget_mb or an explicit plan")
        self.keep_fp32 = as_str_tuple("keep_fp32", self.keep_fp32)
        check_choice("sensitivity", self.sensitivity, ("loss", "accuracy", "kl"))
        check_bits("act_bits", self.act_bits, allow_none=True)
        check_choice("observer", self.observer, OBSERVERS)
        check_positive("val_batches", self.val_batches, allow_none=True, integer=True)
        check_positive("calibration_batches", self.calibration_batches, allow_none=True, integer=True)
        if self.plan is not None:
            if not isinstance(self.plan, dict):
                raise ValueError(f"plan must be a dict {{layer name: bits or None}}, got {type(self.plan).__name__}")
            for layer, b in self.plan.items():
                check_bits(f"plan[{layer!r}]", b, allow_none=True)

    @classmethod
    def from_bit_width(cls, bit_width, **options):
        """``bit_width`` is the average-bits budget unless a ``budget_mb`` or a ``plan`` is given."""
        if "budget_mb" in options or "plan" in options:
            bit_width = None
        return super().from_bit_width(bit_width, **options)
