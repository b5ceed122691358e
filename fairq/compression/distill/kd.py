"""Knowledge distillation (``distill``): the baseline teaches a smaller student, trained with Lightning.

Loss (Hinton et al. 2015): ``alpha · T² · KL(softmax(teacher/T) ‖ softmax(student/T)) + (1 − alpha) · CE(student,
y)``. The student is a fairq / timm model by name (``student: tiny_cnn``, ``student_kwargs: {width: 8}``) or
``half_depth``: the teacher with every other transformer block (timm ViT ``blocks``, BERT ``encoder.layer``),
initialised from the teacher's weights. In a run, training uses the run's datamodule and Trainer factory (its
logger and fairness callback); as a library, a quiet Trainer over ``train_loader``.

Masked LMs (a BERT teacher on MLM batches: token-level ``labels``, ``-100`` where not masked — the text
datamodule's training loader): the same loss at the masked positions, over the vocabulary — KL between the
teacher's and the student's temperature-scaled distributions of each masked token plus the hard-label MLM loss —
in :class:`MaskedLMDistillModule`; the student is ``half_depth``. Which module runs is the run's training objective
(:func:`fairq.lit.objective_of`).

Records: ``student``, ``params``, ``teacher_params``, ``flops``, ``distill_loss_first`` / ``distill_loss_last``
(mean training loss of the first / last epoch; with a single epoch, of its first / last fifth of the steps) and ``kl_to_teacher_before`` / ``_after`` (mean KL of the teacher's
from the student's predictions on the validation split, T = 1: per sample, or per attended token for a masked LM).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fairq.batches import IGNORE_INDEX, as_batches, split_batch
from fairq.lit import FairClassifier, MaskedLMModule, fit_module, objective_of, quiet_trainer

from fairq.compression.core.config import check_choice, check_positive, MethodConfig, variant_of
from fairq.compression.core.data import iter_model_inputs, logits_of, model_device
from fairq.compression.core.registry import MethodInputs, MethodResult, register_method
from fairq.compression.core.sparsity import count_flops, count_params


@dataclass
class DistillConfig(MethodConfig):
    """``student``: a model name or ``half_depth`` (``init``: from the teacher's weights, or ``random``: every
    layer re-initialised); ``temperature`` T; ``alpha``: weight of the soft (KL) term;
    ``epochs`` / ``max_steps`` / ``lr``: the student's training."""

    bits_field = "weight_bits"

    student: str = "half_depth"
    student_kwargs: dict | None = None
    init: str = "teacher"
    temperature: float = 4.0
    alpha: float = 0.7
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 1e-3

    def __post_init__(self):
        if not isinstance(self.student, str) or not self.student:
            raise ValueError(f"student must be a model name or 'half_depth', got {self.student!r}")
        check_choice("init", self.init, ("teacher", "random"))
        check_positive("temperature", self.temperature)
        if not 0.0 <= float(self.alpha) <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha!r}")
        check_positive("epochs", self.epochs, integer=True)
        check_positive("max_steps", self.max_steps, allow_none=True, integer=True)
        check_positive("lr", self.lr)

    def variant(self) -> str:
        """Always names the student; its keyword arguments as ``key=value`` (not as a dict's text)."""
        base = variant_of(dataclasses.replace(self, student="half_depth", student_kwargs=None), skip=self.run_fields)
        kw = [f"{k}={v}" for k, v in sorted((self.student_kwargs or {}).items())]
        return "_".join([f"student={self.student}"] + kw + ([base] if base else []))

    @classmethod
    def from_bit_width(cls, bit_width, **options):
        if bit_width is not None:
            raise ValueError(f"distill takes no bits ({bit_width!r}); quantize the student in a later step")
        return super().from_bit_width(None, **options)

    @property
    def bits(self):
        return 32

    @property
    def act_bits(self):
        return None


def distill_loss(student_logits, teacher_logits, target, temperature: float, alpha: float) -> torch.Tensor:
    """``alpha · T² · KL(p_teacher^T ‖ p_student^T) + (1 − alpha) · CE(student, target)``."""
    t = float(temperature)
    soft = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1), log_target=True,
                    reduction="batchmean") * t * t
    hard = F.cross_entropy(student_logits, target) if alpha < 1 else student_logits.new_zeros(())
    return alpha * soft + (1 - alpha) * hard


class _DistillStep:
    """The distillation training step against a frozen teacher (mixed into a fairq LightningModule, whose
    optimiser and validation it keeps)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, *, temperature: float, alpha: float, lr: float,
                 weight_decay: float = 0.0):
        super().__init__(student, lr=lr, weight_decay=weight_decay)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.temperature, self.alpha = temperature, alpha
        self.epoch_losses: list[list[float]] = []

    def on_train_epoch_start(self):
        self.teacher.eval()
        self.epoch_losses.append([])

    def training_step(self, batch, batch_idx):
        b = split_batch(batch)
        if b.target is None:
            raise ValueError("distillation batches need targets ('target'/'labels') for the hard-label term")
        # a classifier: every sample; a masked LM: the masked positions' vocabulary distributions
        with torch.no_grad():
            teacher_logits, _ = self.scored(self.teacher, b)
        logits, target = self.scored(self.model, b)
        loss = distill_loss(logits, teacher_logits, target, self.temperature, self.alpha)
        self.log("train/distill_loss", loss, batch_size=int(target.shape[0]), on_step=True, on_epoch=True)
        if self.epoch_losses:
            self.epoch_losses[-1].append(float(loss.detach()))
        return loss


class DistillModule(_DistillStep, FairClassifier):
    """A :class:`~fairq.lit.FairClassifier` (validation, optimiser, fairness logging) whose training step is the
    distillation loss against a frozen teacher."""


class MaskedLMDistillModule(_DistillStep, MaskedLMModule):
    """A :class:`~fairq.lit.MaskedLMModule` whose training step is the distillation loss at the masked positions
    (temperature-scaled KL over the vocabulary + the hard-label MLM loss) against a frozen teacher."""


def half_depth(teacher: nn.Module) -> nn.Module:
    """The teacher with every other transformer block (kept blocks keep their weights)."""
    student = copy.deepcopy(teacher)
    if hasattr(student, "blocks") and isinstance(student.blocks, nn.Sequential):  # timm ViT
        student.blocks = nn.Sequential(*list(student.blocks)[::2])
        return student
    encoder = getattr(getattr(student, "bert", student), "encoder", None)
    if encoder is not None and isinstance(getattr(encoder, "layer", None), nn.ModuleList):  # BERT-style
        encoder.layer = nn.ModuleList(list(encoder.layer)[::2])
        for i, layer in enumerate(encoder.layer):  # keep cache indices consistent
            for mod in layer.modules():
                if hasattr(mod, "layer_idx"):
                    mod.layer_idx = i
        student.config.num_hidden_layers = len(encoder.layer)
        return student
    raise ValueError(f"half_depth needs a timm ViT or a BERT-style encoder; got {type(teacher).__name__} "
                     "(name a smaller student model instead, e.g. student: tiny_cnn)")


def _num_classes_and_size(teacher: nn.Module, example) -> tuple[int, int | None]:
    args, kwargs = next(iter_model_inputs(example, limit=1, device=model_device(teacher)))
    with torch.no_grad():
        out = logits_of(teacher(*args, **kwargs))
    size = int(args[0].shape[-1]) if args and torch.is_tensor(args[0]) and args[0].dim() == 4 else None
    return int(out.shape[-1]), size


def build_student(teacher: nn.Module, config: DistillConfig, example, objective: str = "classification"
                  ) -> nn.Module:
    if objective == "masked_lm" and config.student != "half_depth":
        raise ValueError(f"distill on a masked LM takes student: half_depth (the teacher with every other encoder "
                         f"layer), not {config.student!r}: named students are classifiers of the model registry")
    if config.student == "half_depth":
        student = half_depth(teacher)
        if config.init == "random":
            for mod in student.modules():
                if hasattr(mod, "reset_parameters"):
                    mod.reset_parameters()
        return student
    from fairq.models import create_model

    num_classes, size = _num_classes_and_size(teacher, example)
    kwargs = dict(config.student_kwargs or {})
    if "vit" in config.student and size is not None:
        kwargs.setdefault("img_size", size)
    return create_model(config.student, num_classes=num_classes, pretrained=False, **kwargs)


def _kl_positions(logits: torch.Tensor, batch) -> torch.Tensor:
    """Which rows of ``logits.reshape(-1, C)`` the KL averages over: every sample of a classifier; the labelled
    (masked) tokens of an MLM batch, else its attended tokens."""
    if logits.dim() < 3:
        return torch.ones(logits.shape[0], dtype=torch.bool, device=logits.device)
    if batch.target is not None and batch.target.dim() == logits.dim() - 1:
        return (batch.target != IGNORE_INDEX).reshape(-1).to(logits.device)
    mask = batch.kwargs.get("attention_mask")
    return (mask.bool() if mask is not None else torch.ones(logits.shape[:-1], dtype=torch.bool,
                                                            device=logits.device)).reshape(-1).to(logits.device)


def mean_kl(student: nn.Module, teacher: nn.Module, data, limit: int | None = 8) -> float:
    """Mean KL(p_teacher ‖ p_student) per sample (per token for a masked LM, see :func:`_kl_positions`) over
    ``limit`` batches (T = 1)."""
    from itertools import islice

    total, n = 0.0, 0
    was = student.training
    student.eval()
    device = model_device(student)
    with torch.no_grad():
        for batch in islice(as_batches(data), limit):
            b = split_batch(batch).to(device)
            s, t = logits_of(student(*b.args, **b.kwargs)), logits_of(teacher(*b.args, **b.kwargs))
            keep = _kl_positions(s, b)
            s, t = s.reshape(-1, s.shape[-1])[keep], t.reshape(-1, t.shape[-1])[keep]
            total += float(F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="sum"))
            n += int(s.shape[0])
    student.train(was)
    return total / max(1, n)


def handle_distill(model: nn.Module, config: DistillConfig, inputs: MethodInputs) -> MethodResult:
    teacher = model.eval()
    example = inputs.validation if inputs.validation is not None else inputs.train_loader
    if example is None and inputs.datamodule is not None:
        example = inputs.datamodule.val_dataloader()
    if example is None:
        raise ValueError("distill needs data: a datamodule, validation or train_loader")
    in_run = inputs.make_trainer is not None and inputs.datamodule is not None
    if not in_run and inputs.train_loader is None:
        raise ValueError("distill needs training data: a datamodule with a trainer factory, or train_loader")
    objective = objective_of(inputs.datamodule if in_run else None, inputs.train_loader)
    student = build_student(teacher, config, example, objective).to(model_device(teacher))
    kl_before = mean_kl(student, teacher, example)
    student.train()  # a half_depth copy of an eval-mode teacher would otherwise train in eval mode
    module_cls = MaskedLMDistillModule if objective == "masked_lm" else DistillModule
    module = module_cls(student, teacher, temperature=config.temperature, alpha=config.alpha, lr=config.lr,
                        weight_decay=float(inputs.optim.get("weight_decay", 0.0)))
    overrides = {"max_epochs": int(config.epochs)}
    if config.max_steps:
        overrides["max_steps"] = int(config.max_steps)
    if in_run:
        fit_module(module, inputs.make_trainer, datamodule=inputs.datamodule, **overrides)
    else:
        device = model_device(teacher).type
        fit_module(module, lambda **o: quiet_trainer(device, **o), train_loader=inputs.train_loader, **overrides)
    student = module.model.eval()
    losses = [e for e in module.epoch_losses if e]
    if len(losses) == 1:  # one epoch: its first and last fifth of the steps
        k = max(1, len(losses[0]) // 5)
        losses = [losses[0][:k], losses[0][-k:]]
    losses = [sum(e) / len(e) for e in losses]
    record = {"student": config.student, **count_params(student), "teacher_params": count_params(teacher)["params"],
              # on the calibration batch when the run gives one, as the pruning methods count theirs: a text
              # model's FLOPs per sample depend on the sequence length, so cells compare only on the same batch
              "flops": count_flops(student, inputs.calibration if inputs.calibration is not None else example), "distill_loss_first": losses[0] if losses else None,
              "distill_loss_last": losses[-1] if losses else None, "kl_to_teacher_before": kl_before,
              "kl_to_teacher_after": mean_kl(student, teacher, example),
              "distill_steps": sum(len(e) for e in module.epoch_losses)}
    return MethodResult.fp32(student, record=record)


register_method("distill", DistillConfig, handle_distill, needs={"training", "validation", "calibration"},
                family="distillation")
