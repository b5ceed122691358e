"""Unstructured magnitude pruning (``magnitude_prune``), optionally followed by a quantization method in one cell.

``torch.nn.utils.prune`` ranks weights by |w| per layer (``scope: layer``) or across all pruned layers
(``scope: global``), then ``prune.remove`` makes the zeros permanent (plain ``weight`` Parameters again, no mask
or hook left). Tied weights (BERT's MLM decoder = its word embeddings) are one tensor: it is ranked and pruned
once, under its first owner, and every other owner still holds that same pruned Parameter afterwards (checked).

``then: {method: ptq_static, bits: 4, ...}`` runs a second registered method on the pruned model through
:func:`fairq.compression.compress` — one cell, both recorded (``then_method`` plus the second method's record);
the audit is taken from the weights the final model computes with.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import prune

from fairq.compression.core.config import as_str_tuple, check_choice, check_positive, MethodConfig, variant_of
from fairq.compression.core.modules import matches
from fairq.compression.core.registry import Artifact, MethodInputs, MethodResult, get_method, make_config, register_method
from fairq.compression.core.sparsity import count_flops, count_params, overall_sparsity, sparsity_audit

log = logging.getLogger(__name__)

SCOPES = ("layer", "global")
#: what a chained ``then`` method may need: what ``magnitude_prune`` itself is given by a run.
THEN_NEEDS = frozenset({"calibration"})


@dataclass
class PruneConfigBase(MethodConfig):
    """Shared by the pruning configs: no bit width of their own (a chained ``then`` method brings one), and an
    optional fine-tune of the pruned model (``finetune_epochs`` > 0; ``finetune_steps`` caps it) with fairq's
    Lightning module on the run's training split — unstructured zeros stay zero through it (the masks are
    applied in every forward until the pruning is made permanent)."""

    bits_field: ClassVar[str] = "weight_bits"

    finetune_epochs: int = 0
    finetune_steps: int | None = None
    finetune_lr: float = 1e-3

    def _check_finetune(self) -> None:
        if isinstance(self.finetune_epochs, bool) or not isinstance(self.finetune_epochs, int) \
                or self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be an int ≥ 0, got {self.finetune_epochs!r}")
        check_positive("finetune_steps", self.finetune_steps, allow_none=True, integer=True)
        check_positive("finetune_lr", self.finetune_lr)

    @classmethod
    def from_bit_width(cls, bit_width, **options):
        if bit_width is not None:
            raise ValueError(f"{cls.__name__} takes no bits ({bit_width!r}); to quantize the pruned model add "
                             "then: {method: ptq_static, bits: B}")
        return super().from_bit_width(None, **options)

    @property
    def bits(self):
        then = getattr(self, "then_config", None)
        return then.bits if then is not None else 32

    @property
    def act_bits(self):
        then = getattr(self, "then_config", None)
        return getattr(then, "act_bits", None) if then is not None else None


def _then_config(then: dict | None):
    """The config of a chained method entry ``{method, bits, **fields}`` (validated: a quantization method that
    needs no more than calibration data, one setting — no sweep)."""
    if then is None:
        return None
    if not isinstance(then, dict) or "method" not in then:
        raise ValueError(f"then must be a mapping {{method: NAME, bits: B, ...}}, got {then!r}")
    entry = dict(then)
    name = entry.pop("method")
    method = get_method(name)
    if method.family != "quantization":
        raise ValueError(f"then: {name!r} is a {method.family} method; only quantization methods can follow")
    if not method.needs <= THEN_NEEDS:
        raise ValueError(f"then: {name!r} needs {sorted(method.needs - THEN_NEEDS)}, which a pruning cell is not "
                         f"given (chainable: methods needing at most {sorted(THEN_NEEDS)})")
    bits = entry.pop("bits", entry.pop("bit_width", None))
    if any(isinstance(v, (list, tuple)) for v in (bits, *entry.values())):
        raise ValueError(f"then: {then!r} lists several values; write one entry per setting")
    return make_config(name, bits, **entry)


@dataclass
class MagnitudePruneConfig(PruneConfigBase):
    """Zero the ``sparsity`` fraction of smallest-|w| weights of every Conv/Linear layer (``scope="layer"``) or
    of all of them ranked together (``scope="global"``); ``include_embeddings`` prunes ``nn.Embedding`` tables
    too; ``skip_modules`` (fnmatch patterns) stay dense; ``then`` chains a quantization method."""

    sparsity: float = 0.5
    scope: str = "layer"
    skip_modules: tuple[str, ...] = ()
    include_embeddings: bool = False
    then: dict | None = None

    def __post_init__(self):
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) \
                or not 0.0 <= float(self.sparsity) < 1.0:
            raise ValueError(f"sparsity must be a number in [0, 1), got {self.sparsity!r}")
        self.sparsity = float(self.sparsity)
        check_choice("scope", self.scope, SCOPES)
        self.skip_modules = as_str_tuple("skip_modules", self.skip_modules)
        self._check_finetune()
        self.then_config = _then_config(self.then)

    def variant(self) -> str:
        """Always names the sparsity (the curves' x axis) and the chained method with its own variant."""
        base = variant_of(dataclasses.replace(self, sparsity=0.5, then=None), skip=self.run_fields)
        parts = [f"sparsity={self.sparsity:g}"] + ([base] if base else [])
        if self.then_config is not None:
            parts.append(f"then={get_method_name(self.then_config)}")
            if self.then_config.variant():
                parts.append(self.then_config.variant())
        return "_".join(parts)


def get_method_name(config) -> str:
    from fairq.compression.core.registry import method_of

    return method_of(config).name


def prunable_weights(model: nn.Module, skip=(), include_embeddings: bool = False) -> dict[str, nn.Module]:
    """``{name: module}`` of the layers whose weight is pruned; a weight shared by several layers is listed once."""
    types = (nn.Linear, nn.Conv1d, nn.Conv2d) + ((nn.Embedding,) if include_embeddings else ())
    owners, seen = {}, set()
    for name, mod in model.named_modules():
        if not name or matches(name, skip) or not isinstance(mod, types):
            continue
        w = getattr(mod, "weight", None)
        if isinstance(w, nn.Parameter) and id(w) not in seen:
            seen.add(id(w))
            owners[name] = mod
    return owners


def tied_parameters(model: nn.Module) -> dict[int, list[str]]:
    """``{id(parameter): [every name it goes by]}`` for parameters held under several names (tied weights)."""
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    return {k: v for k, v in names.items() if len(v) > 1}


def magnitude_prune(model: nn.Module, sparsity: float, *, scope: str = "layer", skip=(),
                    include_embeddings: bool = False, while_masked=None) -> dict[str, Any]:
    """Prune ``model`` in place (permanently); returns ``{"layers": [pruned layer names], "tied": {layer weight:
    [the other names of that same tensor, pruned with it]}, "while_masked": what ``while_masked(model)``
    returned}``. ``while_masked`` runs while the masks are still applied in every forward (fine-tuning)."""
    owners = prunable_weights(model, skip, include_embeddings)
    if not owners:
        raise ValueError(f"{type(model).__name__} has no Conv/Linear weights to prune")
    ties = tied_parameters(model)
    # every name a pruned tensor goes by, and the Parameter object each name must still hold afterwards
    tied = {f"{n}.weight": [a for a in ties[id(m.weight)] if a != f"{n}.weight"]
            for n, m in owners.items() if id(m.weight) in ties}
    before = {name: m.weight for name, m in owners.items()}
    params = [(mod, "weight") for mod in owners.values()]
    if sparsity > 0:
        if scope == "global":
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
        else:
            for mod, attr in params:
                prune.l1_unstructured(mod, attr, amount=sparsity)
    during = while_masked(model) if while_masked is not None else None
    if sparsity > 0:
        for mod, attr in params:
            prune.remove(mod, attr)  # writes the masked values into the original Parameter: plain weights again
    for name, mod in owners.items():  # explicit: the tie survives, every alias holds the one pruned tensor
        if mod.weight is not before[name]:
            raise RuntimeError(f"pruning replaced the weight Parameter of {name}; its ties would break")
        for alias in tied.get(f"{name}.weight", []):
            if model.get_parameter(alias) is not mod.weight:
                raise RuntimeError(f"{alias} is no longer tied to {name}.weight after pruning")
    return {"layers": list(owners), "tied": tied, "while_masked": during}


def finetune(model: nn.Module, inputs: MethodInputs, config: PruneConfigBase) -> dict:
    """Fine-tune ``model`` in place per the config's ``finetune_*`` fields (nothing when ``finetune_epochs`` is
    0): the run's datamodule and Trainer factory, else a quiet Trainer over ``inputs.train_loader``. Returns
    ``{"finetune_steps": …}`` for the record."""
    if not config.finetune_epochs:
        return {}
    from fairq.lit import fit, quiet_trainer

    from fairq.compression.core.data import model_device

    overrides = {"max_epochs": int(config.finetune_epochs)}
    if config.finetune_steps:
        overrides["max_steps"] = int(config.finetune_steps)
    kw = dict(lr=config.finetune_lr, weight_decay=float(inputs.optim.get("weight_decay", 0.0)))
    model.train()
    if inputs.make_trainer is not None and inputs.datamodule is not None:
        info = fit(model, inputs.make_trainer, datamodule=inputs.datamodule, **kw, **overrides)
    elif inputs.train_loader is not None:
        device = model_device(model).type
        info = fit(model, lambda **o: quiet_trainer(device, **o), train_loader=inputs.train_loader, **kw, **overrides)
    else:
        raise ValueError("finetune_epochs > 0 needs training data: a datamodule with a trainer factory, or "
                         "train_loader")
    model.eval()
    return {"finetune_steps": int(info["steps"])}


def _effective(model: nn.Module) -> dict[str, torch.Tensor]:
    from fairq.compression.quant.weights import effective_weights

    return effective_weights(model)


def handle_magnitude_prune(model: nn.Module, config: MagnitudePruneConfig, inputs: MethodInputs) -> MethodResult:
    model.eval()
    info = magnitude_prune(model, config.sparsity, scope=config.scope, skip=config.skip_modules,
                           include_embeddings=config.include_embeddings,
                           while_masked=lambda m: finetune(m, inputs, config))
    model.eval()
    layers = info["layers"]
    audit = sparsity_audit(model, {n: model.get_submodule(n).weight for n in layers})
    record = {"target_sparsity": config.sparsity, "sparsity": overall_sparsity(audit),
              "pruned_layers": len(layers), "tied_weights": sum(len(v) for v in info["tied"].values()),
              **count_params(model), "flops": count_flops(model, inputs.calibration), **(info["while_masked"] or {})}
    result = MethodResult.fp32(model, size_format="sparse")
    if config.then_config is not None:
        from fairq.compression.core.registry import compress

        then = compress(model, config.then_config, inputs)
        model = then.model
        # the weights the quantized model computes with; still sparse, or the chain undid the pruning
        eff = _effective(model)
        final = sparsity_audit(model, {k: v for k, v in eff.items() if k in layers} or eff)
        record.update({f"then_{k}": v for k, v in then.record.items()})
        record.update(then_method=get_method_name(config.then_config), sparsity=overall_sparsity(final))
        audit = {k: {**v, **({"after_then": final[k]["sparsity"]} if k in final else {})} for k, v in audit.items()}
        # real INT8 holds its codes densely; the simulations keep the pruned layers' zeros (sized sparse)
        result = then.replace(size_format="dense" if then.backend == "int8" else "sparse")
    artifact = {"target_sparsity": config.sparsity, "scope": config.scope, "tied": info["tied"], "layers": audit}
    return result.replace(record=record, artifacts=[Artifact("pruning", artifact, column="sparsity_audit")])


register_method("magnitude_prune", MagnitudePruneConfig, handle_magnitude_prune, needs={"calibration", "training"},
                family="pruning")
