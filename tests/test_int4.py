"""Real INT4 weight-only Linear (``backend="int4"``): the kernel runs on the simulated INT4 codes, audits."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from fairq.compression import PTQConfig, compress, effective_weights, layer_bits, quantize
from fairq.compression.core.data import iter_model_inputs, logits_of
from fairq.compression.backends.int4 import Int4WeightOnlyLinear, int4_layers, kernel_fits
from fairq.models import create_model


def _bert():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2)
    ids = torch.randint(0, 64, (8, 12), generator=torch.Generator().manual_seed(0))
    return transformers.BertForSequenceClassification(cfg).eval(), [dict(input_ids=ids,
                                                                         attention_mask=torch.ones_like(ids))]


def _vit():
    torch.manual_seed(0)
    return create_model("tiny_vit", 2).eval(), [torch.randn(8, 3, 32, 32)]


def _outputs(model, batches):
    with torch.no_grad():
        return torch.cat([logits_of(model(*a, **k)) for a, k in iter_model_inputs(batches)])


@pytest.mark.parametrize("build", [_vit, _bert], ids=["vit", "bert"])
def test_int4_kernel_layers_compute_the_simulated_int4_weights(build):
    model, batches = build()
    result = compress(model, PTQConfig(weight_bits=4, act_bits=None, backend="int4"))
    real = result.model
    sim = quantize(model, PTQConfig(weight_bits=4, act_bits=None, backend="simulated", simulation="layer_input"),
                   batches)
    fits = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and kernel_fits(m)]
    kernels = [n for n, m in real.named_modules() if isinstance(m, Int4WeightOnlyLinear)]
    assert kernels == int4_layers(real) == fits and len(fits) >= 6
    assert result.backend == "int4" and result.simulated_layers  # the 2-class head has no kernel shape
    assert layer_bits(real) == layer_bits(sim) and set(layer_bits(real).values()) == {4}
    w_real, w_sim = effective_weights(real), effective_weights(sim)
    gen = torch.Generator().manual_seed(1)
    for name in kernels:  # the simulated codes; only the scales are rounded to bfloat16 (relative 2^-9)
        assert torch.allclose(w_real[name], w_sim[name], rtol=2**-8, atol=0), name
        assert max(torch.unique(row).numel() for row in w_real[name]) <= 16
        layer = real.get_submodule(name)
        packed = layer.packed_weight
        assert packed.dtype == torch.uint8 and packed.numel() * 2 == w_real[name].numel()  # two codes a byte
        x = torch.randn(5, layer.in_features, generator=gen)  # the kernel multiplies by exactly those weights
        ref = x.bfloat16().float() @ w_real[name].t() + (0 if layer.bias is None else layer.bias)
        assert (layer(x) - ref).abs().max() <= 1e-2 * ref.abs().max(), name
    out_r, out_s, fp = _outputs(real, batches), _outputs(sim, batches), _outputs(model, batches)
    assert not torch.equal(out_r, fp)
    assert (out_r - out_s).abs().max() <= 1e-2 * out_s.abs().max()  # bfloat16 activations and scales
    buf = io.BytesIO()
    torch.save(real, buf)
    buf.seek(0)
    assert torch.equal(_outputs(torch.load(buf, weights_only=False), batches), out_r)


def test_int4_backend_errors_are_clear():
    model, _ = _vit()
    with pytest.raises(ValueError, match="act_bits=None"):
        PTQConfig(weight_bits=4, backend="int4")
    with pytest.raises(ValueError, match="weight_bits=4"):
        PTQConfig(weight_bits=8, act_bits=None, backend="int4")
    with pytest.raises(ValueError, match="no nn.Linear"):
        quantize(create_model("tiny_cnn", 2).eval(), PTQConfig(weight_bits=4, act_bits=None, backend="int4"))
    with pytest.raises(ValueError, match="symmetric"):
        quantize(model, PTQConfig(weight_bits=4, act_bits=None, backend="int4", symmetric=False))
