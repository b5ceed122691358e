"""FairnessAwareQuantizer: quantize with the cheapest option whose validation fairness gaps meet a constraint.

>>> faq = FairnessAwareQuantizer(bit_width=4, max_dp_gap=0.05)
>>> qmodel = faq.quantize(model, calibration_data, validation_data, train_data=train_loader)
>>> faq.constraint_met, faq.final_dp_gap, faq.history

The options are tried in order, cheapest first (default: plain static PTQ, bias-aware calibration, sensitive-layer
preservation, fairness fine-tuning at λ = 1 and λ = 5); each is quantized from the same float model and judged on
``validation_data`` with :func:`fairq.metrics.fairness_metrics` (intersectional groups over the chosen sensitive
attributes). The first option meeting every given constraint is returned. When none does, the quantizer says so
— a ``UserWarning`` and ``constraint_met = False`` — and returns the option that came closest (smallest largest
excess over a limit), so a caller never mistakes it for success.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from torch import nn

from fairq.compression import compress
from fairq.errors import InfeasibleError
from fairq.compression.core.config import check_bits, MethodConfig
from fairq.compression.core.registry import METHODS, Artifact, MethodInputs, MethodResult, make_config, register_method

from .batches import fairness_of

log = logging.getLogger(__name__)

#: the default ladder, cheapest first: (method, config options).
DEFAULT_OPTIONS: tuple[tuple[str, dict], ...] = (
    ("ptq_static", {}),
    ("bias_aware_calibration", {}),
    ("sensitive_layer_preservation", {}),
    ("fairness_finetune", {"lam": 1.0}),
    ("fairness_finetune", {"lam": 5.0}),
)
_NEEDS_TRAINING = {"fairness_finetune", "qat"}


def _are_names(attrs) -> bool:
    if attrs is None:
        return False
    attrs = [attrs] if isinstance(attrs, (str, int)) else list(attrs)
    return any(isinstance(a, str) for a in attrs)


def holdout_split(data, share: float = 0.25, seed: int = 0, batch_size: int = 64) -> tuple[list, list]:
    """(rest, held-out) batches: a seeded ``share`` of the samples of ``data`` set aside (stratified by nothing:
    a uniform draw), both as lists of batches in the pool layout of :mod:`fairq.mitigation.batches`."""
    import numpy as np

    from .batches import gather, pool_size, take

    if not 0 < share < 1:
        raise ValueError(f"holdout share must be in (0, 1), got {share!r}")
    pool = gather(data)
    n = pool_size(pool)
    n_out = int(round(share * n))
    if n_out < 1 or n - n_out < 1:
        raise ValueError(f"{n} calibration samples are too few to hold out {share:.0%} for validation; "
                         "pass validation_data")
    order = np.random.default_rng(seed).permutation(n)
    return take(pool, np.sort(order[n_out:]), batch_size), take(pool, np.sort(order[:n_out]), batch_size)


class ConstraintNotMetWarning(UserWarning):
    """No option of a :class:`FairnessAwareQuantizer` met its fairness constraint on the validation data."""


def _check_gap(name: str, value) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number in [0, 1] or None, got {value!r}")


class FairnessAwareQuantizer:
    """Try quantization options cheapest first until the validation fairness gaps meet the constraint.

    Parameters
    ----------
    bit_width : int
        Weight bits of every option (activations: ``act_bits``).
    max_dp_gap, max_eo_gap : float, optional
        Largest acceptable demographic-parity / equalized-odds difference (max − min over groups) on the
        validation data; at least one is required.
    sensitive_attributes : sequence of int or str, optional
        Which columns of the batches' ``sensitive`` codes define the (intersectional) groups: indices, or names
        resolved against ``attribute_names``. Default: all columns.
    attribute_names : sequence of str, optional
        Names of the ``sensitive`` columns in order (e.g. ``datamodule.sensitive_names``).
    act_bits : int or None
        Activation bits of every option (``None``: weights only).
    options : sequence of (method, dict), optional
        The ladder, cheapest first (default :data:`DEFAULT_OPTIONS`); each dict holds config fields.
    fairness_finetune : dict, optional
        Extra config fields for every ``fairness_finetune`` option (e.g. ``max_steps``, ``lr``). Its penalty
        defaults to ``eo`` when only ``max_eo_gap`` is given, else ``dp``.
    min_group_size : int, optional
        Smallest validation group counted in the gaps (default: :data:`fairq.metrics.DEFAULT_MIN_GROUP_SIZE`);
        also the ``min_group_size`` of sensitive-layer preservation options.
    max_accuracy_drop : float, optional
        Also require validation accuracy ≥ the float model's minus this. Without it a collapsed model that
        predicts one class everywhere meets any DP constraint.

    Attributes (after :meth:`quantize`)
    ----------
    history : list of dict
        One record per option: ``method, options, dp_gap, eo_gap, accuracy, worst_group_accuracy, accepted,
        seconds`` (and ``skipped``/``error`` when it could not run).
    constraint_met : bool
    final_dp_gap, final_eo_gap : float
        Validation gaps of the returned model.
    chosen : dict
        The history record of the returned model.
    chosen_result : MethodResult
        The returned model's :class:`~fairq.compression.MethodResult` (its backend, simulation, …).
    """

    def __init__(self, bit_width: int = 4, max_dp_gap: float | None = None, max_eo_gap: float | None = None,
                 sensitive_attributes: Sequence[int | str] | None = None, *,
                 attribute_names: Sequence[str] | None = None,
                 act_bits: int | None = 8, options: Sequence[tuple[str, dict]] | None = None,
                 fairness_finetune: dict | None = None, min_group_size: int | None = None,
                 max_accuracy_drop: float | None = None):
        check_bits("bit_width", bit_width)
        check_bits("act_bits", act_bits, allow_none=True)
        _check_gap("max_dp_gap", max_dp_gap)
        _check_gap("max_eo_gap", max_eo_gap)
        _check_gap("max_accuracy_drop", max_accuracy_drop)
        if max_dp_gap is None and max_eo_gap is None:
            raise ValueError("FairnessAwareQuantizer needs a constraint: max_dp_gap and/or max_eo_gap")
        self.bit_width, self.act_bits = bit_width, act_bits
        self.max_dp_gap, self.max_eo_gap = max_dp_gap, max_eo_gap
        self.max_accuracy_drop, self.reference_accuracy = max_accuracy_drop, math.nan
        self.sensitive_attributes = sensitive_attributes
        # names may be resolved later, from the data itself (a loader made by a fairq datamodule describes itself)
        self.columns, self.names = (self._resolve(sensitive_attributes, attribute_names)
                                    if attribute_names is not None or not _are_names(sensitive_attributes)
                                    else (None, None))
        self.options = [(str(m), dict(o or {})) for m, o in (options if options is not None else DEFAULT_OPTIONS)]
        if not self.options:
            raise ValueError("options must name at least one quantization method")
        self.finetune = dict(fairness_finetune or {})
        self.finetune.setdefault("fairness", "eo" if max_dp_gap is None else "dp")
        if min_group_size is not None and (isinstance(min_group_size, bool) or int(min_group_size) < 1):
            raise ValueError(f"min_group_size must be a positive int, got {min_group_size!r}")
        self.min_group_size = min_group_size
        for method, opts in self.options:  # fail on a bad ladder now, not after minutes of work
            self._config(method, opts)
        self.history: list[dict[str, Any]] = []
        self.constraint_met: bool | None = None
        self.final_dp_gap = self.final_eo_gap = math.nan
        self.chosen: dict[str, Any] | None = None
        self.chosen_result: MethodResult | None = None

    @staticmethod
    def _resolve(attrs, names):  # -> (column indices or None = all, names or None)
        if attrs is None:
            return None, (list(names) if names is not None else None)
        attrs = [attrs] if isinstance(attrs, (str, int)) else list(attrs)
        if all(isinstance(a, int) and not isinstance(a, bool) for a in attrs):
            return attrs, ([names[a] for a in attrs] if names is not None else None)
        if names is None:
            raise ValueError(f"sensitive_attributes {attrs} are names: also give attribute_names (the order of the "
                             "batches' 'sensitive' columns, e.g. datamodule.sensitive_names), or use column indices")
        missing = [a for a in attrs if a not in names]
        if missing:
            raise ValueError(f"sensitive_attributes {missing} not among attribute_names {list(names)}")
        return [list(names).index(a) for a in attrs], list(attrs)

    def _options(self, method: str, opts: dict) -> dict:
        """The config fields of one option: its own, the fine-tune extras and the common ``act_bits``."""
        if method not in METHODS:
            raise ValueError(f"unknown quantization method {method!r} in options; registered: {sorted(METHODS)}")
        opts = {**self.finetune, **opts} if method == "fairness_finetune" else dict(opts)
        fields = {f.name for f in dataclasses.fields(METHODS[method])}
        if "act_bits" in fields:
            opts.setdefault("act_bits", self.act_bits)
        if "min_group_size" in fields and self.min_group_size is not None:
            opts.setdefault("min_group_size", self.min_group_size)
        return opts

    def _config(self, method: str, opts: dict):
        return make_config(method, self.bit_width, **self._options(method, opts))

    def _meets(self, dp: float, eo: float, accuracy: float) -> tuple[bool, float]:
        """(all constraints hold, largest excess over a limit; inf when a gap is undefined)."""
        excess = []
        drop = self.reference_accuracy - accuracy
        for gap, limit in ((dp, self.max_dp_gap), (eo, self.max_eo_gap), (drop, self.max_accuracy_drop)):
            if limit is not None:
                excess.append(math.inf if not math.isfinite(gap) else gap - limit)
        worst = max(excess)
        return worst <= 0, worst

    def quantize(self, model: nn.Module, calibration_data=None, validation_data=None, train_data=None, *,
                 balanced_calibration_data=None, fairness_constraint: bool | float = True, holdout: float = 0.25,
                 calibration_loader=None, **inputs) -> nn.Module:
        """Return the first option's quantized model whose validation gaps meet the constraint (see class doc).

        ``calibration_data``: batches with ``sensitive`` codes (bias-aware calibration redraws from it);
        ``validation_data``: labelled batches with ``sensitive``; ``train_data``: labelled batches with
        ``sensitive`` for fine-tuning options (skipped, and recorded as such, without it);
        ``balanced_calibration_data``: an already group-balanced calibration set for the bias-aware options
        (e.g. ``FaceDataModule.calibration_dataloader(n, balanced=True)``; default: redrawn from
        ``calibration_data``). ``inputs``: further run inputs for every method (e.g. ``make_trainer``,
        ``datamodule``; the :class:`~fairq.compression.core.registry.MethodInputs` fields).

        Without ``validation_data``, a seeded ``holdout`` share of the calibration samples (default 25 %, seed 0,
        :func:`holdout_split`) is set aside to check the constraint on, and the rest calibrates — said in the log.
        ``fairness_constraint``: ``True`` checks the constraints given at construction; a number replaces
        ``max_dp_gap`` (the Beyond-Naive-Quantization study's spelling); ``calibration_loader`` is an alias of
        ``calibration_data``. Sensitive attributes given by name are resolved against the data's own names when
        the loader comes from a fairq datamodule.
        """
        calibration_data = calibration_data if calibration_data is not None else calibration_loader
        if calibration_data is None:
            raise ValueError("FairnessAwareQuantizer.quantize needs calibration_data (batches with sensitive codes)")
        if fairness_constraint is not True and fairness_constraint is not False:
            _check_gap("fairness_constraint", fairness_constraint)
            self.max_dp_gap = float(fairness_constraint)
        if self.names is None and _are_names(self.sensitive_attributes):
            from fairq.batches import task_of

            task = task_of(calibration_data) or task_of(validation_data)
            if task is None or not task.sensitive_names:
                raise ValueError(f"sensitive_attributes {self.sensitive_attributes} are names: give attribute_names "
                                 "(the order of the batches' 'sensitive' columns) or a loader made by a fairq "
                                 "datamodule, which names its columns")
            self.columns, self.names = self._resolve(self.sensitive_attributes, task.sensitive_names)
        if validation_data is None:
            calibration_data, validation_data = holdout_split(calibration_data, holdout)
            log.info("fairness-aware quantizer: no validation_data given; checking the constraint on a held-out "
                     "%.0f%% of the calibration samples (seed 0), calibrating on the rest", 100 * holdout)
        base = MethodInputs.from_kwargs(calibration_data, validation=validation_data, train_loader=train_data,
                                        **inputs)
        if not isinstance(model, nn.Module):
            raise TypeError(f"quantize expects an nn.Module, got {type(model).__name__}")
        self.history, best = [], None
        if self.max_accuracy_drop is not None:
            self.reference_accuracy = fairness_of(model, validation_data, self.columns, self.names,
                                                  min_group_size=self.min_group_size)["accuracy"]
        for method, opts in self.options:
            config = self._config(method, opts)
            rec: dict[str, Any] = {"method": method, "options": self._options(method, opts), "accepted": False}
            if method in _NEEDS_TRAINING and train_data is None:
                rec["skipped"] = "no train_data given"
                self.history.append(rec)
                log.info("fairness-aware quantizer: %s skipped (no train_data)", method)
                continue
            t0 = time.perf_counter()
            try:
                # each option reads what it needs; the balanced draw only where an option asks for one
                result = compress(model, config, base.replace(balanced_calibration=balanced_calibration_data))
            except InfeasibleError as err:  # an option that cannot run here is recorded, not fatal; bugs propagate
                rec.update(error=f"{type(err).__name__}: {err}", seconds=time.perf_counter() - t0)
                self.history.append(rec)
                log.warning("fairness-aware quantizer: %s failed: %s", method, err)
                continue
            m = fairness_of(result.model, validation_data, self.columns, self.names, min_group_size=self.min_group_size)
            ok, excess = self._meets(m["demographic_parity_difference"], m["equalized_odds_difference"], m["accuracy"])
            rec.update(dp_gap=m["demographic_parity_difference"], eo_gap=m["equalized_odds_difference"],
                       accuracy=m["accuracy"], worst_group_accuracy=m["worst_group_accuracy"], accepted=ok,
                       excess=excess, seconds=round(time.perf_counter() - t0, 3))
            self.history.append(rec)
            log.info("fairness-aware quantizer: %s %s → DP %.4f, EO %.4f (%s)", method, rec["options"] or "",
                     rec["dp_gap"], rec["eo_gap"], "meets the constraint" if ok else "violates the constraint")
            if best is None or excess < best[0]:
                best = (excess, result, rec)
            if ok:
                break
        if best is None:
            why = [(r["method"], r.get("skipped") or r.get("error")) for r in self.history]
            raise RuntimeError(f"FairnessAwareQuantizer: no option could run: {why}")
        _, result, rec = best
        self.chosen, self.chosen_result, self.constraint_met = rec, result, bool(rec["accepted"])
        self.final_dp_gap, self.final_eo_gap = rec["dp_gap"], rec["eo_gap"]
        if not self.constraint_met:
            warnings.warn(
                f"FairnessAwareQuantizer: no option met {self._constraint_text()} on the validation data "
                f"(tried {len(self.history)}: " + ", ".join(
                    f"{r['method']}→DP {r.get('dp_gap', math.nan):.3f}/EO {r.get('eo_gap', math.nan):.3f}"
                    if "dp_gap" in r else f"{r['method']}: {r.get('skipped') or r.get('error')}" for r in self.history)
                + f"); returning the closest, {rec['method']} (constraint_met=False)", ConstraintNotMetWarning,
                stacklevel=2)
        return result.model

    def _constraint_text(self) -> str:
        parts = [f"DP gap ≤ {self.max_dp_gap:g}" if self.max_dp_gap is not None else "",
                 f"EO gap ≤ {self.max_eo_gap:g}" if self.max_eo_gap is not None else "",
                 f"accuracy ≥ {self.reference_accuracy:.4f} − {self.max_accuracy_drop:g}"
                 if self.max_accuracy_drop is not None else ""]
        return " and ".join(p for p in parts if p)

    def report(self) -> dict:
        """JSON-ready summary: constraint, whether it was met, the final gaps, the chosen option and the history."""
        return {"bit_width": self.bit_width, "act_bits": self.act_bits, "max_dp_gap": self.max_dp_gap,
                "max_eo_gap": self.max_eo_gap, "max_accuracy_drop": self.max_accuracy_drop,
                "reference_accuracy": self.reference_accuracy, "sensitive_columns": self.columns, "sensitive_names": self.names,
                "constraint_met": self.constraint_met, "final_dp_gap": self.final_dp_gap,
                "final_eo_gap": self.final_eo_gap, "chosen": copy.deepcopy(self.chosen),
                "history": copy.deepcopy(self.history)}


@dataclass
class FairnessAwareQuantizerConfig(MethodConfig):
    """The ``fairness_aware_quantizer`` method: :class:`FairnessAwareQuantizer` as a registered config.

    Give ``max_dp_gap`` and/or ``max_eo_gap`` (both default to None so that the defaults form a valid
    dataclass; running without either is a clear error).

    ``methods``: the ladder's method names, cheapest first (``fairness_finetune`` once per ``finetune_lams``
    value); ``finetune_*``: the fine-tune's size; ``sensitive_columns``: columns of ``sensitive`` (default all);
    ``min_group_size``, ``max_accuracy_drop``: see :class:`FairnessAwareQuantizer`.
    """

    reference_method: ClassVar[str] = "ptq_static"

    weight_bits: int = 4
    act_bits: int | None = 8
    max_dp_gap: float | None = None
    max_eo_gap: float | None = None
    methods: tuple[str, ...] = ("ptq_static", "bias_aware_calibration", "sensitive_layer_preservation",
                                "fairness_finetune")
    finetune_lams: tuple[float, ...] = (1.0, 5.0)
    finetune_max_steps: int | None = 20
    finetune_lr: float = 1e-3
    sensitive_columns: tuple[int, ...] | None = None
    min_group_size: int | None = None
    max_accuracy_drop: float | None = None

    def __post_init__(self):
        check_bits("weight_bits", self.weight_bits)
        check_bits("act_bits", self.act_bits, allow_none=True)
        _check_gap("max_dp_gap", self.max_dp_gap)
        _check_gap("max_eo_gap", self.max_eo_gap)
        _check_gap("max_accuracy_drop", self.max_accuracy_drop)
        self.methods = (self.methods,) if isinstance(self.methods, str) else tuple(self.methods)
        self.finetune_lams = tuple(float(x) for x in self.finetune_lams)
        if self.sensitive_columns is not None:
            self.sensitive_columns = tuple(int(c) for c in self.sensitive_columns)

    def check(self) -> None:
        """Fail now when the quantizer could not run (no constraint given)."""
        self.quantizer()

    def ladder(self) -> list[tuple[str, dict]]:
        out = []
        for m in self.methods:
            if m == "fairness_finetune":
                out += [(m, {"lam": lam}) for lam in self.finetune_lams]
            else:
                out.append((m, {}))
        return out

    def quantizer(self, attribute_names: Sequence[str] | None = None) -> FairnessAwareQuantizer:
        """The configured :class:`FairnessAwareQuantizer` (raises when no constraint is given)."""
        ft = {"lr": self.finetune_lr, "max_steps": self.finetune_max_steps}
        return FairnessAwareQuantizer(self.weight_bits, self.max_dp_gap, self.max_eo_gap,
                                      list(self.sensitive_columns) if self.sensitive_columns is not None else None,
                                      attribute_names=attribute_names, act_bits=self.act_bits, options=self.ladder(),
                                      fairness_finetune=ft, min_group_size=self.min_group_size,
                                      max_accuracy_drop=self.max_accuracy_drop)


def handle_fairness_aware(model: nn.Module, config: FairnessAwareQuantizerConfig, inputs: MethodInputs
                          ) -> MethodResult:
    """Run :class:`FairnessAwareQuantizer` on the run's validation split; its report (history included) goes to
    ``mitigation/<cell>.json`` and the chosen option and validation gaps into the row."""
    if inputs.validation is None:
        raise ValueError("fairness_aware_quantizer needs val_data (labelled batches with sensitive codes) to check "
                         "the constraint on")
    faq = config.quantizer(inputs.sensitive_names)
    rest = {k: getattr(inputs, k) for k in ("datamodule", "make_trainer", "optim", "sensitive_names", "seed")}
    faq.quantize(model, inputs.calibration, inputs.validation, train_data=inputs.train_loader,
                 balanced_calibration_data=inputs.balanced_calibration, **rest)
    report = {**faq.report(), "chosen_method": faq.chosen["method"]}
    # the chosen option's model and how it computes, at the cell's nominal widths
    return faq.chosen_result.replace(weight_bits=config.weight_bits, act_bits=config.act_bits, record={
        "constraint_met": report["constraint_met"], "chosen_method": report["chosen"]["method"],
        "chosen_options": json.dumps(report["chosen"]["options"], sort_keys=True, default=str),
        "val_dp_gap": report["final_dp_gap"], "val_eo_gap": report["final_eo_gap"]},
        artifacts=[Artifact("mitigation", report, column="mitigation_record")], info={"report": report})


register_method("fairness_aware_quantizer", FairnessAwareQuantizerConfig, handle_fairness_aware,
                needs={"calibration", "balanced_calibration", "validation", "training"}, family="mitigation")
