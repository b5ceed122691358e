"""The method contract and registry: method name → config class + handler + what it needs from a run.

Every compression technique — quantization, mitigation, and whatever comes next — is

* a config dataclass (``fairq.compression.core.config.MethodConfig`` subclass, validated in ``__post_init__``),
* a handler ``handler(model, config, inputs: MethodInputs) -> MethodResult`` that gets a private deep copy of the
  model and returns the compressed model with its record (``metrics.csv`` columns) and artifacts (JSON files),
* one :func:`register_method` call in its own module, declaring what the handler ``needs`` from a run.

A phase reads a config section, builds exactly the declared inputs (:data:`NEEDS`) and stores the result; it knows
no method by name. Methods are discovered through :mod:`fairq.methods`, the one place that imports the modules
that register them (this package never imports the layers above it).

Adding a method: write ``my_method.py`` with ``MyConfig(MethodConfig)`` and ``def handle(model, config, inputs)``,
call ``register_method("my_method", MyConfig, handle, needs={"calibration"})``, and list the module in
:data:`fairq.methods.METHOD_MODULES`, or declare it as a ``fairq.methods`` entry point of its package (or name it
in ``$FAIRQ_METHOD_MODULES``), which also reaches Ray workers; the
registry-generated tests pick it up.
"""
from __future__ import annotations

import copy

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

from torch import nn

#: What a handler may declare it needs; the phase builds exactly these from the run's datamodule:
#: ``calibration`` — a natural (uniform) draw of training samples; ``balanced_calibration`` — the same number drawn
#: equally per intersectional group; ``validation`` — the validation loader; ``training`` — the training loader,
#: the datamodule and a Lightning trainer factory.
NEEDS = ("calibration", "balanced_calibration", "validation", "training")

#: What a handler may declare it requires of a model's architecture (name → what it means), registered with
#: :func:`register_requirement` by the module that knows how to check it; a run checks every entry's requirements
#: against its models' skeletons at startup, before anything is trained (:func:`unmet_requirements`).
REQUIRES: dict[str, str] = {}
_REQUIREMENT_CHECKS: dict[str, Callable[[nn.Module], bool]] = {}


def register_requirement(name: str, meaning: str, check: Callable[[nn.Module], bool]) -> None:
    """Register a requirement a method may declare (``requires={name}``): ``check(model)`` says whether a model (or
    its weightless skeleton) meets it; ``meaning`` completes "model X has no …" in the startup error."""
    REQUIRES[name] = meaning
    _REQUIREMENT_CHECKS[name] = check


@dataclass
class MethodInputs:
    """What a run hands a handler (only the fields its method declared are filled by a phase).

    ``calibration`` / ``balanced_calibration`` / ``validation`` / ``train_loader``: iterables of batches (any form
    :func:`fairq.batches.split_batch` reads); ``datamodule``: the run's datamodule; ``make_trainer(**overrides)``:
    a Lightning Trainer with the run's logger and callbacks; ``train_fn(model)``: a custom training function
    (library use); ``optim``: the run's optimiser settings (``weight_decay``, …); ``sensitive_names``: names of the
    ``sensitive`` columns; ``seed``: the run's seed; ``model_name``: the model's registry name (for messages).
    """

    calibration: Any = None
    balanced_calibration: Any = None
    validation: Any = None
    train_loader: Any = None
    datamodule: Any = None
    make_trainer: Callable[..., Any] | None = None
    train_fn: Callable[[nn.Module], Any] | None = None
    optim: Mapping[str, Any] = field(default_factory=dict)
    sensitive_names: Sequence[str] | None = None
    seed: int = 0
    model_name: str | None = None

    #: keyword names of :func:`fairq.compression.quantize` / ``apply_quantization`` → field names.
    ALIASES = {"calibration_data": "calibration", "balanced_calibration_data": "balanced_calibration",
               "val_data": "validation", "validation_data": "validation", "train_data": "train_loader"}

    @classmethod
    def from_kwargs(cls, calibration_data=None, **kwargs) -> "MethodInputs":
        """Inputs from the keyword names of the functional API (``val_data=…``, ``train_loader=…``, …)."""
        names = {f.name for f in dataclasses.fields(cls)}
        out = {"calibration": calibration_data}
        for key, value in kwargs.items():
            name = cls.ALIASES.get(key, key)
            if name not in names:
                valid = sorted(names | set(cls.ALIASES))
                raise TypeError(f"unknown run input {key!r}{did_you_mean(key, valid)}; valid: {valid}")
            out[name] = value
        return cls(**out)

    def replace(self, **changes) -> "MethodInputs":
        return dataclasses.replace(self, **changes)


@dataclass
class Artifact:
    """A JSON side record of a cell, written by the phase to ``<folder>/<cell>.json``; with ``column`` set, that
    relative path also goes into the cell's ``metrics.csv`` row under ``column``."""

    folder: str
    content: Any
    column: str | None = None


@dataclass
class MethodResult:
    """What a handler returns: the compressed model, what it computes with, and what the run records.

    ``weight_bits`` / ``act_bits`` / ``backend`` (``"fp32"``, ``"simulated"``, ``"int8"``, ``"int4"``): the widths
    and backend of the cell (``weight_bits`` and ``backend`` are required); ``simulation``: how a simulated model
    was built (``"graph"`` / ``"layer_input"``, else None); ``act_qrange``: the activation codes the model really
    uses (``(0, 127)`` on CPUs without VNNI); ``simulated_layers``: layers of a real-kernel model that have no
    kernel and are simulated (real INT4); ``size_format``: ``"sparse"`` for pruned models (sized by their bitmask
    serialization, :func:`fairq.compression.core.measure.model_size`), else ``"dense"``; ``engine``: what runs
    the model (real kernels, graph simulation). ``record``: extra ``metrics.csv`` columns; ``artifacts``: side
    files; ``info``: anything else for library callers (e.g. a mixed-precision plan object).
    """

    model: nn.Module
    weight_bits: float | None = None
    act_bits: int | None = None
    backend: str | None = None
    simulation: str | None = None
    act_qrange: tuple[int, int] | None = None
    simulated_layers: list[str] | None = None
    size_format: str = "dense"
    engine: str | None = None
    record: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    SIZE_FORMATS = ("dense", "sparse")

    def __post_init__(self):
        if not isinstance(self.model, nn.Module):
            raise TypeError(f"MethodResult.model must be an nn.Module, got {type(self.model).__name__}")
        missing = [k for k in ("weight_bits", "backend") if getattr(self, k) is None]
        if missing:
            raise RuntimeError(f"a handler returned no {missing}: fill them in, e.g. "
                               "MethodResult(model, weight_bits=4, act_bits=8, backend='simulated')")
        if self.size_format not in self.SIZE_FORMATS:
            raise ValueError(f"size_format must be one of {self.SIZE_FORMATS}, got {self.size_format!r}")

    @classmethod
    def fp32(cls, model: nn.Module, **fields) -> "MethodResult":
        """A result whose model computes in FP32 (pruned, distilled, the baseline)."""
        return cls(model, weight_bits=32, act_bits=None, backend="fp32", **fields)

    def replace(self, **changes) -> "MethodResult":
        """A copy with ``changes`` (e.g. a chained method's result with the outer method's record)."""
        return dataclasses.replace(self, **changes)


Handler = Callable[[nn.Module, Any, MethodInputs], MethodResult]


@dataclass(frozen=True)
class Method:
    """One registered technique."""

    name: str
    config_cls: type
    handler: Handler
    needs: frozenset[str]
    family: str
    requires: frozenset[str] = frozenset()


#: method name → config class (e.g. ``"ptq_static"`` → ``PTQConfig``).
METHODS: dict[str, type] = {}
_REGISTRY: dict[str, Method] = {}
_BY_CONFIG: dict[type, Method] = {}


def register_method(name: str, config_cls: type, handler: Handler, *, needs: Iterable[str] = (),
                    family: str = "quantization", requires: Iterable[str] = ()) -> Method:
    """Register ``handler(model, config, inputs) -> MethodResult`` for ``config_cls`` under ``name``.

    ``needs``: what the handler uses from a run (a subset of :data:`NEEDS`); ``family``: a free label recorded with
    every cell (``quantization``, ``mitigation``, …); ``requires``: what it needs of a model's architecture (keys of
    :data:`REQUIRES`), checked at startup. The handler gets a private deep copy of the model.
    """
    needs, requires = frozenset(needs), frozenset(requires)
    unknown = needs - set(NEEDS)
    if unknown:
        raise ValueError(f"method {name!r} declares unknown needs {sorted(unknown)}; known: {NEEDS}")
    unknown = requires - set(REQUIRES)
    if unknown:
        raise ValueError(f"method {name!r} declares unknown requirements {sorted(unknown)}; known: {sorted(REQUIRES)}")
    if name in METHODS:
        raise ValueError(f"compression method {name!r} registered twice")
    if config_cls in _BY_CONFIG:
        raise ValueError(f"{config_cls.__name__} already handles method {_BY_CONFIG[config_cls].name!r}; "
                         "give each method its own config class (a subclass is fine)")
    method = Method(name, config_cls, handler, needs, family, requires)
    METHODS[name] = config_cls
    _REGISTRY[name] = method
    _BY_CONFIG[config_cls] = method
    return method


def unmet_requirements(method: Method, model: nn.Module) -> list[str]:
    """What ``method`` requires (:data:`REQUIRES`) that ``model`` (or its weightless skeleton) lacks."""
    return [REQUIRES[r] for r in sorted(method.requires) if not _REQUIREMENT_CHECKS[r](model)]


def unregister_method(name: str) -> None:
    """Remove ``name`` (tests registering a method of their own clean up with this)."""
    method = _REGISTRY.pop(name)
    METHODS.pop(name, None)
    _BY_CONFIG.pop(method.config_cls, None)


def method_of(config) -> Method:
    """The registered method of a config instance; subclasses fall back to their registered parents."""
    for cls in type(config).__mro__:
        if cls in _BY_CONFIG:
            return _BY_CONFIG[cls]
    raise TypeError(f"no compression handler for {type(config).__name__}; registered configs: "
                    f"{', '.join(c.__name__ for c in _BY_CONFIG)}")


def lookup(config) -> tuple[str, Handler]:
    """(method name, handler) for a config instance."""
    m = method_of(config)
    return m.name, m.handler


def registered_methods(family: str | None = None) -> dict[str, Method]:
    """Every registered method by name (of one ``family`` when given), in registration order."""
    return {n: m for n, m in _REGISTRY.items() if family is None or m.family == family}


def get_method(name: str) -> Method:
    """The registered method called ``name``; unknown names raise, offering close matches."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown compression method {name!r}{did_you_mean(name, _REGISTRY)}; registered: "
                         f"{', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


#: The Beyond-Naive-Quantization study's method spellings → (fairq method, bits or None = the caller's). One table,
#: read only by :func:`resolve_alias`; docs/user-guide/python-api.md lists it. Aliases are names, never a second code path.
ALIASES: dict[str, tuple[str, int | None]] = {
    "PTQ": ("ptq_static", None), "PTQ_INT8": ("ptq_static", 8), "PTQ_INT4": ("ptq_static", 4),
    "PTQ_INT2": ("ptq_static", 2), "QAT": ("qat", None), "QAT_INT8": ("qat", 8), "QAT_INT4": ("qat", 4),
    "DYNAMIC": ("ptq_dynamic", None), "DYNAMIC_INT8": ("ptq_dynamic", 8), "MIXED_PRECISION": ("mixed_precision", None),
    "bias_aware": ("bias_aware_calibration", 8), "BIAS_AWARE": ("bias_aware_calibration", 8),
    "fairness_constrained": ("fairness_finetune", None), "sensitive_preservation": ("sensitive_layer_preservation",
                                                                                     None),
}


def resolve_alias(method: str, bit_width=None) -> tuple[str, int | None]:
    """``(registered name, bits)`` for a method name or a study alias (an alias's own width wins)."""
    if method in _REGISTRY or method not in ALIASES:
        return method, bit_width
    name, bits = ALIASES[method]
    return name, bits if bits is not None else bit_width


def make_config(method: str, bit_width=None, **options):
    """Config for a registered ``method`` name (or a study alias, :data:`ALIASES`), ``bit_width`` filling the
    config's bits field."""
    method, bit_width = resolve_alias(method, bit_width)
    return get_method(method).config_cls.from_bit_width(bit_width, **options)


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def compress(model: nn.Module, config, inputs: MethodInputs | None = None) -> MethodResult:
    """Run the registered method of ``config`` on a deep copy of ``model``; the engine's one entry point.

    ``inputs``: what the run provides (:class:`~fairq.compression.core.registry.MethodInputs`). Returns the handler's
    :class:`~fairq.compression.core.registry.MethodResult` (model, widths, backend, record, artifacts).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress expects an nn.Module, got {type(model).__name__}")
    method = method_of(config)
    result = method.handler(copy.deepcopy(model), config, inputs or MethodInputs())
    if not isinstance(result, MethodResult):
        raise TypeError(f"the handler of {method.name!r} returned {type(result).__name__}, not a MethodResult")
    return result
