"""Deployment-faithful simulated INT-k (``simulation="graph"``): the real INT8 graph at k bits, and its audits."""
from __future__ import annotations

import io
import types
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from fairq.compression import PTQConfig, effective_weights, layer_bits, quantize
from fairq.compression.quant import graph_sim
from fairq.compression.backends import int8
from fairq.compression.core.data import iter_model_inputs, logits_of
from fairq.models import create_model


class ResidualCNN(nn.Module):
    """conv-BN-ReLU stem, one residual block (conv-BN-ReLU, conv-BN, + identity, ReLU), pooling, linear head."""

    def __init__(self, width: int = 16, num_classes: int = 3):
        super().__init__()

        def cbr(relu: bool):
            layers = [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)]
            return nn.Sequential(*layers, *([nn.ReLU()] if relu else []))

        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.conv1, self.conv2 = cbr(True), cbr(False)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.relu(self.conv2(self.conv1(x)) + x)
        return self.fc(torch.flatten(self.pool(x), 1))


def _residual_cnn():
    torch.manual_seed(0)
    model = ResidualCNN().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them into the convs matters
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    gen = torch.Generator().manual_seed(0)
    calib = [torch.randn(16, 3, 16, 16, generator=gen) for _ in range(4)]
    return types.SimpleNamespace(model=model, calib=calib, x=torch.randn(256, 3, 16, 16, generator=gen))


@pytest.fixture(scope="module")
def res():
    return _residual_cnn()


def _tiny_bert():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2)
    gen = torch.Generator().manual_seed(0)
    batches = [dict(input_ids=torch.randint(0, 64, (8, 12), generator=gen),
                    attention_mask=torch.ones(8, 12, dtype=torch.long)) for _ in range(2)]
    return transformers.BertForSequenceClassification(cfg).eval(), batches


def _zoo(kind):
    if kind == "cnn":
        r = _residual_cnn()
        return r.model, r.calib[:2]
    if kind == "vit":
        torch.manual_seed(0)
        return create_model("tiny_vit", 2).eval(), [torch.randn(8, 3, 32, 32) for _ in range(2)]
    return _tiny_bert()


def _outputs(model, batches):
    with torch.no_grad():
        return torch.cat([logits_of(model(*a, **k)) for a, k in iter_model_inputs(batches)])


def _max_levels_per_channel(w):
    return max(int(torch.unique(row).numel()) for row in w.reshape(w.shape[0], -1))


# ---------------------------------------------------------------- simulated INT8 = real INT8's graph
def test_simulated_int8_logits_match_real_int8_within_one_quantization_step(res):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = quantize(res.model, PTQConfig(backend="int8"), res.calib)
    sim = quantize(res.model, PTQConfig(backend="simulated"), res.calib)
    old = quantize(res.model, PTQConfig(backend="simulated", simulation="layer_input"), res.calib)
    assert isinstance(real, int8.Int8Model) and sim.simulation == "graph"
    with torch.no_grad():
        r, s, o = real(res.x), sim(res.x), old(res.x)
    # One step: the logit change when one classifier-input code moves by one (input scale × largest |weight|).
    fc_in = graph_sim.activation_quantizers(sim)["flatten"]
    step = fc_in["scale"] * effective_weights(sim)["fc"].abs().max().item()
    assert (s - r).abs().max().item() <= step
    assert (s.argmax(1) == r.argmax(1)).all()
    # the check can fail: the per-layer-input simulation (BN unfolded, other quantization points) misses it
    assert (o - r).abs().max().item() > step
    # same activation code range as the kernels of this CPU (0..127 without VNNI)
    assert sim.act_qrange == real.act_qrange == (0, int8.int8_ranges()[0])


def test_graph_is_the_real_int8_graph_with_bn_folded_and_the_residual_add_quantized(res):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        real = int8.convert_static_int8(res.model, PTQConfig(), res.calib)
    sim = quantize(res.model, PTQConfig(backend="simulated"), res.calib)
    ops = [str(n.target) for n in sim.program.graph.nodes]
    assert ops == [str(n.target) for n in real.program.graph.nodes]
    assert not [o for o in ops if "batch_norm" in o], "BatchNorm was not folded"
    qd = torch.ops.quantized_decomposed
    adds = [n for n in sim.program.graph.nodes if n.target == torch.ops.aten.add.Tensor]
    assert adds and all(any(getattr(a, "target", None) == qd.dequantize_per_tensor.default for a in n.args)
                        for n in adds), "the residual input of the add is not quantized"
    assert torch.equal(sim.reference_forward(res.x), real.reference_forward(res.x))
    # the fused fake-quant forward computes the reference graph
    with torch.no_grad():
        assert torch.allclose(sim(res.x), sim.reference_forward(res.x), atol=1e-6)


# ---------------------------------------------------------------- the ≤ 2^k audit on the new path
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("kind", ["cnn", "vit", "bert"])
def test_levels_per_weight_channel_and_activation_tensor(kind, bits):
    model, calib = _zoo(kind)
    q = quantize(model, PTQConfig(weight_bits=bits, act_bits=bits, backend="simulated"), calib)
    assert q.simulation == "graph" and q.weight_bits == bits
    weights, lbits = effective_weights(q), layer_bits(q)
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    assert len(weights) == n_layers and set(lbits.values()) == {bits}, "a conv/linear layer was left FP32"
    levels = {name: _max_levels_per_channel(w) for name, w in weights.items()}
    assert max(levels.values()) <= 2**bits, levels
    quantizers = graph_sim.activation_quantizers(q)
    assert quantizers and all(v["quant_max"] - v["quant_min"] + 1 <= 2**bits for v in quantizers.values())
    (args, kwargs), = iter_model_inputs(calib[:1])
    codes = graph_sim.activation_codes(q, *args, **kwargs)
    assert codes.keys() == quantizers.keys()
    for name, c in codes.items():
        assert c.numel() <= 2**bits and quantizers[name]["quant_min"] <= c.min() <= c.max() \
            <= quantizers[name]["quant_max"], name
    if bits == 8:  # the audit can fail: 8 bits really uses more than 4 bits' worth of levels
        assert max(levels.values()) > 16 and max(c.numel() for c in codes.values()) > 16


def test_weights_only_and_clear_errors(res):
    q = quantize(res.model, PTQConfig(weight_bits=4, act_bits=None, backend="simulated"), res.calib)
    assert not graph_sim.activation_quantizers(q) and q.act_bits is None and q.act_qrange is None
    assert _max_levels_per_channel(effective_weights(q)["stem.0"]) <= 16
    fp, out = _outputs(res.model, [res.x]), _outputs(q, [res.x])
    assert 0 < (out - fp).abs().max() < fp.abs().max()
    with pytest.raises(ValueError, match="layer_input"):
        quantize(res.model, PTQConfig(weight_bits=4, symmetric=False, backend="simulated"), res.calib)
    with pytest.raises(ValueError, match="layer_input"):
        quantize(res.model, PTQConfig(weight_bits=4, act_symmetric=True, backend="simulated"), res.calib)
    with pytest.raises(ValueError, match="simulation"):
        PTQConfig(simulation="module_swap")

    class DataDependent(nn.Module):  # Python control flow on values: torch.export cannot trace it
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x) if float(x.sum()) > 0 else -self.fc(x)

    with pytest.raises(RuntimeError, match="layer_input"):
        quantize(DataDependent().eval(), PTQConfig(weight_bits=4, backend="simulated"), [torch.randn(4, 4)])


def test_a_simulated_bert_keeps_its_config_and_scores_other_sequence_lengths():
    """Text scoring reads the model's ``max_position_embeddings`` to skip items it cannot hold, and feeds lengths
    the calibration batches never had: the traced program must keep both (a wrapper without the HF config made
    the scorers build 133-token inputs for a 128-position model)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=90, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=48)
    model = transformers.BertForMaskedLM(cfg).eval()
    calib = [{"input_ids": torch.randint(5, 90, (4, 10)), "attention_mask": torch.ones(4, 10, dtype=torch.long)}]
    sim = quantize(model, PTQConfig(weight_bits=8, act_bits=8, backend="simulated"), calib)
    assert isinstance(sim, graph_sim.SimulatedProgram)
    assert sim.config.max_position_embeddings == 48
    for batch, length in ((3, 10), (1, 37), (5, 3)):
        ids = torch.randint(5, 90, (batch, length))
        with torch.no_grad():
            out = logits_of(sim(input_ids=ids, attention_mask=torch.ones_like(ids)))
            ref = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        assert out.shape == ref.shape
        assert (out.argmax(-1) == ref.argmax(-1)).float().mean() > 0.5  # INT8: close to FP32, not garbage


@pytest.mark.parametrize("backend", ["simulated", "int8"])
def test_an_exported_masked_lm_runs_its_head_at_the_asked_positions_only(backend):
    """The program of a masked LM is the encoder + the MLM head at given flat positions (the vocabulary projection
    at every token was most of a small BERT's scoring time). Scores through the engine's gathered call equal the
    naive full forward's; called as the model it still returns ``[B, T, vocab]``; layer names, the tied decoder
    left FP32 and the pickled program are as before."""
    transformers = pytest.importorskip("transformers")
    from fairq.compression.core.modules import tied_output_layers
    from fairq.text.engine import MaskedLMEngine, MaskRequest, naive_logprobs

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=500, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=48)
    model = transformers.BertForMaskedLM(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 500, (4, 10), generator=gen)
    att = torch.ones_like(ids)
    att[2:, 6:] = 0  # padded rows: the head's observer sees the real tokens only, as before
    calib = [{"input_ids": ids * att, "attention_mask": att}]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantize(model, PTQConfig(weight_bits=8, act_bits=8, backend=backend), calib)
    assert q.gathers and "positions" in q.input_spec["kwargs"]
    assert tied_output_layers(model) == ["cls.predictions.decoder"]
    assert "cls.predictions.transform.dense" in q.int8_layers and "cls.predictions.decoder" not in q.int8_layers
    assert "bert.encoder.layer.0.attention.self.query" in q.int8_layers
    with torch.no_grad():
        out = q.runner()(input_ids=ids, attention_mask=torch.ones_like(ids), positions=torch.tensor([0, 13, 39]))
        full = logits_of(q(input_ids=ids, attention_mask=torch.ones_like(ids)))
    assert out.shape == (3, 500) and full.shape == (4, 10, 500)  # the head ran on 3 rows, not 40
    torch.testing.assert_close(out, full.reshape(40, 500)[[0, 13, 39]], rtol=1e-5, atol=1e-5)

    def req(n, p, t):
        seq = torch.randint(5, 500, (n,), generator=gen).tolist()
        seq[p] = 103
        return MaskRequest(tuple(seq), p, t)

    reqs = [req(n, p, t) for n, p, t in [(5, 2, 7), (9, 0, 99), (12, 11, 5), (7, 3, 499), (3, 1, 42)]]
    fast = MaskedLMEngine(q, pad_id=0, batch_size=2).logprobs(reqs)
    np.testing.assert_allclose(fast, naive_logprobs(q, reqs), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(MaskedLMEngine(q, pad_id=0, batch_size=1).logprobs(reqs[:1]), fast[:1],
                               rtol=1e-5, atol=1e-5)  # one request: one position
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    assert back.gathers
    np.testing.assert_allclose(MaskedLMEngine(back, pad_id=0, batch_size=2).logprobs(reqs), fast, rtol=1e-6)
