"""Per-layer quantization sensitivity: the validation metric change when only one layer is quantized."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fairq.batches import hidden_states, mlm_parts
from fairq.compression.core.data import iter_labelled_batches, iter_model_inputs, logits_of, model_device, real_tokens, token_mask
from fairq.compression.core.fakequant import FakeQuantLayer
from fairq.compression.core.modules import set_layer

METRICS = ("loss", "accuracy", "kl")


class _Evaluator:
    """Caches a few validation batches and the FP32 outputs; scores a model variant against them."""

    def __init__(self, model: nn.Module, data, metric: str, limit: int | None):
        if metric not in METRICS:
            raise ValueError(f"sensitivity metric must be one of {METRICS}, got {metric!r}")
        self.model, self.metric = model, metric
        device = model_device(model)
        if metric == "kl":
            self.batches = [(a, k, None) for a, k in iter_model_inputs(data, limit, device)]
        else:
            self.batches = list(iter_labelled_batches(data, limit, device))
        if not self.batches:
            raise ValueError("sensitivity data yielded no batches")
        # float64 from the logits on: the per-batch sums and their total do not round differently with the
        # batch size or reduction order, so sensitivities differing in float32 noise come out equal
        self.reference = [torch.log_softmax(o.double(), -1) for o in self._outputs()]
        self.base = self.score()

    @torch.no_grad()
    def _outputs(self):
        return [self._output(a, k) for a, k, _ in self.batches]

    def _output(self, args, kwargs) -> torch.Tensor:
        """The model's logits on one batch. KL on a masked LM's padded text batch: the logits of its real tokens
        only (``[n_tokens, vocab]``) — the encoder's hidden states are gathered before the MLM head, so the
        ``hidden × vocabulary`` projection and the float64 softmax do not run on the ``[PAD]`` positions the KL
        leaves out anyway (the same values, at a fraction of the cost for a small BERT)."""
        mask = kwargs.get("attention_mask") if isinstance(kwargs, dict) else None
        if self.metric == "kl" and not args and torch.is_tensor(mask) and mask.dim() == 2:
            encoder, head = mlm_parts(self.model)
            if encoder is not None:
                return logits_of(head(hidden_states(encoder(**kwargs))[mask.bool()]))
        return logits_of(self.model(*args, **kwargs))

    def score(self) -> float:
        """Mean loss / accuracy / KL(FP32 ‖ variant) over the cached batches (per sample: per sequence for text)."""
        total, n = 0.0, 0
        for out, ref, (a, k, y) in zip(self._outputs(), self.reference, self.batches):
            logp = torch.log_softmax(out.double(), -1)
            if self.metric == "loss":
                total += float(F.nll_loss(logp, y.long(), reduction="sum"))
            elif self.metric == "accuracy":
                total += float((logp.argmax(-1) == y).sum())
            else:
                with token_mask(k):  # per-token outputs of a padded text batch: the [PAD] positions left out
                    logp, ref = real_tokens(logp), real_tokens(ref)  # (no-op on already gathered tokens)
                total += float(F.kl_div(logp, ref, log_target=True, reduction="sum"))
            n += _batch_size(a, k, out)
        return total / n

    def change(self) -> float:
        """How much worse the current model is than FP32 (positive = worse)."""
        value = self.score()
        return self.base - value if self.metric == "accuracy" else value - self.base


def _batch_size(args, kwargs, out: torch.Tensor) -> int:
    first = args[0] if args else next((v for v in kwargs.values() if torch.is_tensor(v)), None)
    return int(first.shape[0]) if torch.is_tensor(first) else int(out.shape[0])


def layer_sensitivity(model: nn.Module, layers: dict[str, nn.Module], bits: tuple[int, ...], data, *,
                      metric: str = "loss", limit: int | None = 4, per_channel: bool = True,
                      symmetric: bool = True) -> dict[str, dict[int, float]]:
    """``{layer: {bits: change}}``: metric change on ``data`` when only that layer's weights are quantized.

    ``metric``: ``loss`` (cross-entropy increase), ``accuracy`` (accuracy drop) or ``kl`` (KL divergence of
    the outputs from FP32; needs no labels). The model is restored after each trial.
    """
    model.eval()
    ev = _Evaluator(model, data, metric, limit)
    result: dict[str, dict[int, float]] = {}
    for name, layer in tqdm(layers.items(), desc=f"sensitivity ({metric})", leave=False):
        result[name] = {}
        for b in bits:
            set_layer(model, name, FakeQuantLayer.from_float(layer, b, per_channel=per_channel, symmetric=symmetric))
            try:
                value = ev.change()
            finally:
                set_layer(model, name, layer)
            result[name][b] = value if math.isfinite(value) else float("inf")
    return result
