"""The modality seam: how a batch becomes model inputs, targets, sample ids and sensitive codes, and how a model's
outputs become per-sample predictions. The one batch splitter and the one predict loop of the code base.

A *task* describes a datamodule's batches. :class:`ClassificationTask` covers dict batches (fairq's image batches
``{"image", "target", "sensitive", "sample_id"}``, Hugging Face keyword batches with ``labels``) as well as
tensors and ``(input, target[, sensitive])`` tuples; a datamodule hands its own instance out as ``.task`` (naming
its input keys and sensitive attributes), and a later modality (text) adds a task of its own here without
touching the phases. Everything above ``datamodules/`` reads batches through :func:`split_batch`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import Any, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

#: dict keys that are labels or metadata, never model inputs.
TARGET_KEYS = ("target", "targets", "labels", "label")
META_KEYS = frozenset({*TARGET_KEYS, "sensitive", "sample_id"})


@dataclass
class Batch:
    """One batch split into what the model gets (``args``/``kwargs``) and what scoring needs."""

    args: tuple
    kwargs: dict
    target: torch.Tensor | None = None
    sensitive: torch.Tensor | None = None  # [B, n_attributes] integer level codes
    sample_ids: list[str] | None = None

    def __len__(self) -> int:
        for x in (self.target, self.sensitive, *self.args, *self.kwargs.values()):
            if torch.is_tensor(x) and x.ndim:
                return int(x.shape[0])
        return len(self.sample_ids or ())

    def to(self, device) -> "Batch":
        """Model inputs (and the target) moved to ``device``; metadata stays where it is."""
        if device is None:
            return self
        return Batch(_to(self.args, device), _to(self.kwargs, device), _to(self.target, device), self.sensitive,
                     self.sample_ids)

    def call(self, model: nn.Module):
        return model(*self.args, **self.kwargs)


def _to(x, device):
    if torch.is_tensor(x):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


def _codes(sensitive) -> torch.Tensor | None:
    if sensitive is None:
        return None
    s = torch.as_tensor(sensitive)
    if s.is_floating_point():
        raise ValueError("'sensitive' must hold integer level codes, got floats")
    return s.reshape(len(s), -1).long()


@dataclass(frozen=True)
class ClassificationTask:
    """How batches of one datamodule are read, and what its sensitive codes mean.

    ``input_keys``: the dict keys that are model inputs (default: every key that is not a label or metadata
    key). One input goes to the model positionally (``model(image)``), several as keywords (``model(input_ids=…,
    attention_mask=…)``, the Hugging Face convention). ``sensitive_names`` / ``sensitive_levels`` name the
    columns of ``batch["sensitive"]`` and their level labels in code order.
    """

    input_keys: tuple[str, ...] | None = None
    sensitive_names: tuple[str, ...] = ()
    sensitive_levels: Mapping[str, Sequence[str]] = field(default_factory=dict)

    #: recorded as a cell's ``task`` column (analysis picks its section by it).
    name: ClassVar[str] = "classification"
    #: how methods that train fit a model on this data (:data:`fairq.lit.OBJECTIVES`).
    objective: ClassVar[str] = "classification"

    # --- how a cell is evaluated (the phases call these on any datamodule's task) ---------------------------
    def evaluate(self, model: nn.Module, datamodule, *, progress: bool = False, desc: str = "evaluate"):
        """``(per-sample frame, metrics dict)`` of ``model`` on the datamodule's test split: the
        ``predictions/<cell>.parquet`` rows and the fairness metrics computed from them."""
        frame = predict_frame(model, datamodule.test_dataloader(), task=self, progress=progress, desc=desc)
        return frame, frame_metrics(frame, datamodule.sensitive_names)

    def side_files(self, frame) -> dict[str, Any]:
        """Extra files stored beside a cell's parquet (``predictions/<cell><suffix>`` → JSON content); none here."""
        return {}

    def summary(self, row: Mapping[str, Any]) -> str:
        """One log line of a stored cell's headline metrics."""
        return (f"accuracy {row['accuracy']:.4f}, worst-group {row['worst_group_accuracy']:.4f}, DP diff "
                f"{row['demographic_parity_difference']:.4f}, EO diff {row['equalized_odds_difference']:.4f}")

    def split(self, batch) -> Batch:
        """One batch → :class:`Batch`; see :func:`split_batch` for the accepted forms."""
        if torch.is_tensor(batch):
            return Batch((batch,), {})
        if isinstance(batch, (tuple, list)):
            if not batch:
                raise ValueError("empty tuple/list batch: expected (input, target[, sensitive])")
            third = batch[2] if len(batch) > 2 else None  # sensitive codes when integer; anything else is ignored
            sens = _codes(third) if torch.is_tensor(third) and not third.is_floating_point() else None
            return Batch((batch[0],), {}, batch[1] if len(batch) > 1 else None, sens)
        if isinstance(batch, Mapping):
            target = next((batch[k] for k in TARGET_KEYS if k in batch), None)
            keys = list(self.input_keys) if self.input_keys else [k for k in batch if k not in META_KEYS]
            missing = [k for k in keys if k not in batch]
            if missing or not keys:
                raise ValueError(f"dict batch has no model inputs {missing or ''} (keys: {sorted(batch)}); expected "
                                 "e.g. 'image', or keyword inputs such as input_ids/attention_mask")
            ids = batch.get("sample_id")
            ids = None if ids is None else [str(s) for s in (ids.tolist() if torch.is_tensor(ids) else ids)]
            sens = _codes(batch.get("sensitive"))
            if len(keys) == 1:
                return Batch((batch[keys[0]],), {}, target, sens, ids)
            return Batch((), {k: batch[k] for k in keys}, target, sens, ids)
        raise TypeError(f"unsupported batch type {type(batch).__name__}: expected a tensor, a tuple/list whose first "
                        "item is the input, or a dict")

    def probabilities(self, output) -> torch.Tensor:
        """Per-sample class probabilities ``[B, C]`` of a model output (softmax of the logits)."""
        return torch.softmax(logits_of(output).float(), dim=-1)

    def level_labels(self, name: str, max_codes: int = 4096) -> list[str]:
        """Level labels of attribute ``name`` in code order (the codes themselves when none were given)."""
        levels = self.sensitive_levels.get(name)
        return [str(v) for v in levels] if levels is not None else [str(i) for i in range(max_codes)]


#: the task of batches that come without one (user loaders): every non-metadata key is an input.
GENERIC = ClassificationTask()


def split_batch(batch, task: ClassificationTask | None = None) -> Batch:
    """One batch → :class:`Batch` (the one place fairq reads a batch).

    Accepted: a tensor (the input); a tuple/list ``(input, target[, sensitive])``; a dict holding model inputs
    (``task.input_keys``, or every key that is not ``target/targets/labels/label/sensitive/sample_id``) next to
    an optional target, ``sensitive`` codes ``[B]`` or ``[B, n_attributes]`` and ``sample_id``.
    """
    return (task or GENERIC).split(batch)


def as_batches(data) -> Iterable:
    """A tensor or a dict is one batch; anything else iterable is a sequence of batches."""
    if data is None:
        raise ValueError("data is required here but got None")
    if torch.is_tensor(data) or isinstance(data, Mapping):
        return [data]
    if not hasattr(data, "__iter__"):
        raise TypeError(f"data must be a tensor, a dict or an iterable of batches, got {type(data).__name__}")
    return data


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a stateless model)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


#: ignore index of token-level labels (Hugging Face / ``F.cross_entropy`` convention): positions not trained on.
IGNORE_INDEX = -100


def labelled_positions(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [N, C], target [N])`` of the positions that carry a label: a classifier's ``[B, C]`` / ``[B]``
    unchanged; a masked LM's ``[B, T, V]`` / token-level ``[B, T]`` reduced to the masked positions (labels
    ≠ ``-100``)."""
    if target.dim() == logits.dim() - 1 and target.dim() >= 2:
        keep = target != IGNORE_INDEX
        return logits[keep], target[keep]
    return logits, target


def logits_of(output) -> torch.Tensor:
    """The logits tensor of a model output (plain tensor, HF ``ModelOutput`` or a tuple)."""
    if torch.is_tensor(output):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, (tuple, list)) and output and torch.is_tensor(output[0]):
        return output[0]
    raise TypeError(f"cannot find logits in model output of type {type(output).__name__}")


@dataclass
class Predictions:
    """Per-sample results of :func:`predict`: ids, targets, class probabilities and sensitive codes."""

    sample_ids: list[str]
    target: np.ndarray          # [N] int64
    prob: np.ndarray            # [N, C] float
    sensitive: np.ndarray | None  # [N, n_attributes] int64 codes, or None when the batches carry none

    @property
    def pred(self) -> np.ndarray:
        return self.prob.argmax(1).astype(np.int64)


@torch.inference_mode()
def predict(model: nn.Module, data, task: ClassificationTask | None = None, *, limit: int | None = None,
            progress: bool = False, desc: str = "evaluate", need_target: bool = True) -> Predictions:
    """Run ``model`` over (at most ``limit``) batches of ``data``; the one predict loop of fairq.

    Batches without sample ids get running indices (``"0"``, ``"1"``, …) as ids.
    """
    from tqdm.auto import tqdm

    task = task or GENERIC
    if hasattr(model, "eval"):
        model.eval()
    device = model_device(model) if isinstance(model, nn.Module) else None
    ids, ys, probs, sens = [], [], [], []
    offset = 0
    for i, raw in enumerate(tqdm(islice(as_batches(data), limit), desc=desc, disable=not progress, leave=False)):
        b = task.split(raw).to(device)
        if b.target is None and need_target:
            raise ValueError(f"batch {i} has no target ('target'/'labels', or the second item of a tuple)")
        p = task.probabilities(b.call(model)).cpu()
        probs.append(p)
        if b.target is not None:
            ys.append(torch.as_tensor(b.target).cpu().long().reshape(-1))
        if b.sensitive is not None:
            sens.append(b.sensitive.cpu())
        ids.extend(b.sample_ids if b.sample_ids is not None else [str(j) for j in range(offset, offset + len(p))])
        offset += len(p)
    if not probs:
        raise ValueError("the data yielded no batches")
    if sens and len(sens) != len(probs):
        raise ValueError("some batches carry 'sensitive' codes and others do not")
    prob = torch.cat(probs).numpy()
    target = torch.cat(ys).numpy().astype(np.int64) if ys else np.full(len(prob), -1, dtype=np.int64)
    return Predictions(ids, target, prob, torch.cat(sens).numpy().astype(np.int64) if sens else None)


# ---------------------------------------------------------------------- per-sample frame → metrics row
def predict_frame(model: nn.Module, loader: Iterable, *, task: ClassificationTask | None = None,
                  sensitive_names: Sequence[str] | None = None,
                  sensitive_levels: Mapping[str, Sequence[str]] | None = None, progress: bool = True,
                  desc: str = "evaluate") -> pd.DataFrame:
    """Run ``model`` over ``loader`` (read by ``task``, :func:`fairq.batches.predict`) and return one row per sample.

    Columns: ``sample_id, y_true, y_pred, prob_0..prob_{C-1}`` (``prob`` = ``prob_1`` when binary) and one string
    column per sensitive attribute — the ``predictions/<cell>.parquet`` contract. Attribute names and level
    labels come from ``task`` (a datamodule's ``.task``) unless given here.
    """
    task = task or GENERIC
    names = list(sensitive_names if sensitive_names is not None else task.sensitive_names)
    levels = dict(task.sensitive_levels)
    levels.update(sensitive_levels or {})
    p = predict(model, loader, task, progress=progress, desc=desc)
    frame = pd.DataFrame({"sample_id": p.sample_ids, "y_true": p.target, "y_pred": p.pred})
    for c in range(p.prob.shape[1]):
        frame[f"prob_{c}"] = p.prob[:, c]
    if p.prob.shape[1] == 2:
        frame["prob"] = p.prob[:, 1]
    if names:
        if p.sensitive is None or p.sensitive.shape[1] != len(names):
            got = 0 if p.sensitive is None else p.sensitive.shape[1]
            raise ValueError(f"the batches carry {got} sensitive column(s); expected {len(names)} ({names})")
        for j, name in enumerate(names):
            labels = levels.get(name)
            if labels is None:  # no level labels known: the codes themselves
                labels = [str(i) for i in range(int(p.sensitive[:, j].max()) + 1)]
            labels = np.asarray(labels, dtype=object)
            frame[name] = labels[p.sensitive[:, j]]
    return frame


def frame_metrics(frame: pd.DataFrame, sensitive_names: Sequence[str], **kwargs) -> dict:
    """The scalar fairness metrics of a predictions frame (intersectional groups over ``sensitive_names``)."""
    from fairq.metrics import fairness_metrics

    out = fairness_metrics(frame["y_true"].to_numpy(), frame["y_pred"].to_numpy(),
                           frame[list(sensitive_names)], **kwargs)
    return {k: (float(v) if np.ndim(v) == 0 else v) for k, v in out.items() if k != "per_group"}


# The helpers below live here, the lowest layer, because fairq.lit (training), the text engine and the
# mitigations all use them; a lower layer must not import a higher one (tests/test_engine_seams.py).
def mlm_parts(model: nn.Module):
    """``(encoder, head)`` of a masked LM, or ``(None, None)`` when the model is not split that way."""
    head = None
    cls = getattr(model, "cls", None)
    if cls is not None:
        head = getattr(cls, "predictions", cls)
    elif isinstance(getattr(model, "lm_head", None), nn.Module):
        head = model.lm_head
    prefix = getattr(model, "base_model_prefix", None)
    encoder = getattr(model, prefix, None) if prefix else None
    if head is None or not isinstance(encoder, nn.Module) or encoder is model:
        return None, None
    return encoder, head


def hidden_states(output) -> torch.Tensor:
    """The ``[B, T, d]`` hidden states of an encoder's output (a tensor, an HF ``BaseModelOutput`` or a tuple),
    for gathering positions before the MLM head (:func:`mlm_parts`)."""
    if torch.is_tensor(output):
        return output
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    return output[0]


def task_of(loader):
    """The :class:`fairq.batches.ClassificationTask` a loader or datamodule describes itself with, or None.

    A fairq datamodule has ``.task``; its loaders' datasets carry the same task (``loader.dataset.task``, through
    a ``Subset`` too), so a loader made by a fairq datamodule says which attribute each sensitive column is.
    """
    for obj in (loader, getattr(loader, "dataset", None), getattr(getattr(loader, "dataset", None), "dataset", None)):
        task = getattr(obj, "task", None) if obj is not None else None
        if task is not None:
            return task
    return None
