"""Real INT8 backend (fairq/compression/backends/int8.py): int8 kernels really run, match their reference, audit, agree."""
from __future__ import annotations

import copy
import io
import types

import pytest
import torch
from torch import nn

from fairq.compression.backends import int8
from fairq.compression.core.config import DynamicConfig, PTQConfig
from fairq.compression.quant.weights import layer_bits
from fairq.models import create_model

IMG = 16  # tiny_cnn pools globally, so small images keep every test fast


def _separable(n: int, gen: torch.Generator):
    """Two classes that differ by a small shift of the red channel's mean: overlapping, so margins vary."""
    y = torch.randint(0, 2, (n,), generator=gen)
    x = torch.randn(n, 3, IMG, IMG, generator=gen)
    x[:, 0] += (2 * y.float() - 1)[:, None, None] * 0.15
    return x, y


@pytest.fixture(scope="module")
def cnn():
    """tiny_cnn trained briefly (untrained nets have near-tied logits), its data and its INT8 conversion."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = create_model("tiny_cnn", 2)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(30):
        x, y = _separable(64, gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    calib = [_separable(32, gen)[0] for _ in range(4)]
    x_eval, y_eval = _separable(1024, gen)
    before = copy.deepcopy(model.state_dict())
    qmodel = int8.convert_static_int8(model, PTQConfig(), calib)
    return types.SimpleNamespace(model=model, calib=calib, x=x_eval, y=y_eval, q=qmodel, before=before)


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    model = create_model("tiny_vit", 2).eval()
    calib = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    return types.SimpleNamespace(model=model, q=int8.convert_static_int8(model, PTQConfig(), calib))


@pytest.fixture(scope="module")
def bert():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2)
    gen = torch.Generator().manual_seed(0)
    batches = [dict(input_ids=torch.randint(0, 64, (8, 12), generator=gen),
                    attention_mask=torch.ones(8, 12, dtype=torch.long), labels=torch.zeros(8, dtype=torch.long))
               for _ in range(2)]
    return types.SimpleNamespace(model=transformers.BertForSequenceClassification(cfg).eval(), batches=batches)


def _ops(qmodel) -> list[str]:
    return [str(n.target) for n in qmodel.lower().graph.nodes if n.op == "call_function"]


def _levels(w: torch.Tensor) -> int:
    return max(int(torch.unique(row).numel()) for row in w.reshape(w.shape[0], -1))


def _n_layers(model, types_=(nn.Conv2d, nn.Linear)) -> int:
    return sum(isinstance(m, types_) for m in model.modules())


# ---------------------------------------------------------------- static INT8
def test_static_cnn_runs_int8_kernels_for_every_layer(cnn):
    ops = _ops(cnn.q)
    assert ops.count("onednn.qconv_pointwise.default") + ops.count("onednn.qconv2d_pointwise.binary") == 3
    assert ops.count("onednn.qlinear_pointwise.default") == 1
    assert not [o for o in ops if o in ("aten.convolution.default", "aten.conv2d.default", "aten.addmm.default",
                                        "aten.mm.default", "aten.linear.default")], "an FP32 conv/matmul is left"
    assert isinstance(cnn.q, int8.Int8Model) and (cnn.q.weight_bits, cnn.q.act_bits) == (8, 8)
    assert "onednn" in cnn.q.engine and cnn.q.act_qrange == (0, int8.int8_ranges()[0])
    # the serialized state holds int8 codes, not FP32 weights
    int8_tensors = [t for t in cnn.q.state_dict().values() if t.dtype == torch.int8]
    assert len(int8_tensors) == _n_layers(cnn.model)


def test_static_int8_matches_its_reference_and_fp32(cnn):
    with torch.no_grad():
        out, ref, fp = cnn.q(cnn.x), cnn.q.reference_forward(cnn.x), cnn.model(cnn.x)
    assert out.shape == fp.shape and torch.isfinite(out).all()
    assert not torch.equal(out, fp), "INT8 outputs identical to FP32: nothing was quantized"
    # the int8 kernels compute the quantized graph (dequant -> FP32 op -> quant) up to requantization rounding
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.99
    assert (out.argmax(1) == fp.argmax(1)).float().mean() >= 0.97
    acc_fp, acc_q = (fp.argmax(1) == cnn.y).float().mean(), (out.argmax(1) == cnn.y).float().mean()
    assert acc_fp > 0.6, "the fixture model did not learn the synthetic task"
    assert abs(acc_fp - acc_q) < 0.03


def test_static_effective_weights_hold_at_most_256_levels(cnn):
    weights = int8.int8_effective_weights(cnn.q)
    convs_and_linears = {n for n, m in cnn.model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert set(weights) == convs_and_linears
    for name, w in weights.items():
        assert w.dtype == torch.float32 and _levels(w) <= 256, name
        ref = dict(cnn.model.named_modules())[name].weight
        assert w.shape == ref.shape
    # the classifier has no BatchNorm to fold: its quantized weight is within half a step of the FP32 one
    w, ref = weights["classifier"], cnn.model.classifier.weight.detach()
    step = ref.abs().amax(1, keepdim=True) / 127.5
    assert ((w - ref).abs() <= step / 2 + 1e-6).all() and not torch.equal(w, ref)


def test_static_leaves_the_input_model_untouched(cnn):
    after = cnn.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in cnn.before.items()) and after.keys() == cnn.before.keys()
    assert isinstance(cnn.model.classifier, nn.Linear) and not any(k.startswith("fairq_") for k in vars(cnn.model))
    assert cnn.q is not cnn.model


def test_int8_model_is_smaller_survives_pickle_and_deepcopy(cnn):
    def nbytes(obj):
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getbuffer().nbytes

    assert nbytes(cnn.q.state_dict()) < 0.5 * nbytes(cnn.model.state_dict())
    x = cnn.x[:16]
    buf = io.BytesIO()
    torch.save(cnn.q, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    clone = copy.deepcopy(cnn.q)
    with torch.no_grad():
        expected = cnn.q(x)
        assert torch.equal(loaded(x), expected) and torch.equal(clone(x), expected)
    assert "onednn.qconv_pointwise.default" in _ops(loaded), "reloaded model lost its int8 kernels"
    w0, w1 = int8.int8_effective_weights(cnn.q), int8.int8_effective_weights(loaded)
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    cnn.q.train()  # exported graphs refuse train(); the wrapper only flips flags
    cnn.q.eval()


def test_static_vit_linears_run_int8_with_any_batch_size(vit):
    ops = _ops(vit.q)
    n_linear = sum(o.startswith("onednn.qlinear_pointwise") for o in ops)
    assert n_linear == _n_layers(vit.model, nn.Linear)
    assert "onednn.qconv_pointwise.default" in ops  # the patch embedding
    assert "aten.addmm.default" not in ops and "aten.mm.default" not in ops
    with torch.no_grad():
        for batch in (1, 7):
            x = torch.randn(batch, 3, 32, 32)
            out, ref = vit.q(x), vit.q.reference_forward(x)
            assert out.shape == (batch, 2) and torch.isfinite(out).all()
            assert (out - ref).abs().max() <= 0.1 * ref.abs().max() + 1e-3
    assert all(_levels(w) <= 256 for w in int8.int8_effective_weights(vit.q).values())


def test_static_skip_modules_keeps_those_layers_fp32(cnn):
    q = int8.convert_static_int8(cnn.model, PTQConfig(skip_modules=("classifier",), observer="percentile"), cnn.calib)
    assert "classifier" not in int8.int8_effective_weights(q)
    ops = _ops(q)
    assert not any(o.startswith("onednn.qlinear") for o in ops) and "onednn.qconv_pointwise.default" in ops


def test_static_per_tensor_weights_share_one_scale_and_still_run_int8(cnn):
    q = int8.convert_static_int8(cnn.model, PTQConfig(per_channel=False), cnn.calib)
    ops = _ops(q)
    assert ops.count("onednn.qconv_pointwise.default") == 3 and "aten.convolution.default" not in ops
    for name, w in int8.int8_effective_weights(q).items():
        assert torch.unique(w).numel() <= 256, name  # one grid for the whole tensor


def test_static_bert_with_keyword_inputs(bert):
    q = int8.convert_static_int8(bert.model, PTQConfig(calibration_batches=1), bert.batches)
    assert sum(o.startswith("onednn.qlinear_pointwise") for o in _ops(q)) == _n_layers(bert.model, nn.Linear)
    kwargs = dict(input_ids=torch.randint(0, 64, (3, 20)), attention_mask=torch.ones(3, 20, dtype=torch.long))
    with torch.no_grad():  # other batch size and sequence length than calibration
        out, fp = q(**kwargs).logits, bert.model(**kwargs).logits
    assert out.shape == fp.shape and (out - fp).abs().max() < 0.1 * fp.abs().max() + 0.05


# ---------------------------------------------------------------- calibration parity with the simulated path
@pytest.mark.parametrize("kind", ["minmax", "histogram", "percentile", "mse"])
def test_activation_observers_calibrate_like_the_simulated_path(kind):
    from fairq.compression.core import observers

    torch.manual_seed(0)
    data = [torch.randn(4096) * 2 + 0.5, torch.randn(4096).exp()]
    ours = int8._observer_ctr(kind, 99.9)(dtype=torch.uint8, quant_min=0, quant_max=255,
                                          qscheme=torch.per_tensor_affine)
    sim = observers.act_observer(kind, 8, symmetric=False, percentile=99.9)
    for t in data:
        ours(t)
        sim(t)
    (s0, z0), (s1, z1) = ours.calculate_qparams(), sim.calculate_qparams()
    assert torch.allclose(s0, s1, rtol=1e-5) and torch.equal(z0.long(), z1.long()), kind


def test_activation_range_avoids_int16_saturation_on_this_cpu():
    """oneDNN's int8 linear must equal the float product for the activation range fairq picks here."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: F401  (registers onednn ops)

    act_max, w_min, w_max = int8.int8_ranges()
    if not int8.has_vnni():
        assert act_max == 127
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, act_max + 1, (8, 384), dtype=torch.uint8, generator=gen)
    w = torch.randint(w_min, w_max + 1, (16, 384), dtype=torch.int8, generator=gen)
    packed = torch.ops.onednn.qlinear_prepack(w, [8, 384])
    out = torch.ops.onednn.qlinear_pointwise(x, 0.01, 0, packed, torch.full((16,), 0.01),
                                             torch.zeros(16, dtype=torch.int64), None, 1.0, 0, torch.float32,
                                             "none", [], "")
    ref = (x.double() * 0.01) @ (w.double() * 0.01).t()
    assert (out.double() - ref).abs().max() < 1e-3 * ref.abs().max()


# ---------------------------------------------------------------- dynamic INT8
def test_dynamic_bert_quantizes_every_linear(bert):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    before = copy.deepcopy(bert.model.state_dict())
    q = int8.convert_dynamic_int8(bert.model, DynamicConfig(skip_modules=("classifier",)))
    n_linear = _n_layers(bert.model, nn.Linear)
    assert sum(isinstance(m, DynamicLinear) for m in q.modules()) == n_linear - 1
    assert type(q.classifier) is nn.Linear and set(layer_bits(q).values()) == {8}
    kwargs = {k: v for k, v in bert.batches[0].items() if k != "labels"}
    with torch.no_grad():
        out, fp = q(**kwargs).logits, bert.model(**kwargs).logits
    assert not torch.equal(out, fp) and (out - fp).abs().max() < 0.05 * fp.abs().max() + 0.02
    weights = int8.int8_effective_weights(q)
    assert len(weights) == n_linear - 1 and all(_levels(w) <= 256 for w in weights.values())
    after = bert.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert all(type(m) is not DynamicLinear for m in bert.model.modules())


# ---------------------------------------------------------------- errors
def test_clear_errors(cnn):
    with pytest.raises(ValueError, match="calibration_data"):
        int8.convert_static_int8(cnn.model, PTQConfig(), None)
    with pytest.raises(ValueError, match="no batches"):
        int8.convert_static_int8(cnn.model, PTQConfig(), [])
    with pytest.raises(ValueError, match="no nn.Linear"):
        int8.convert_dynamic_int8(nn.Sequential(nn.Conv2d(3, 4, 3)), DynamicConfig())
    with pytest.raises(ValueError, match="no real INT8 layers"):
        int8.int8_effective_weights(cnn.model)


# ---------------------------------------------------------------- issue 3: real INT8 agrees with simulated INT8
def test_real_int8_agrees_with_simulated_int8_on_99_percent(cnn):
    from fairq.compression import MethodInputs, compress

    result = compress(cnn.model, PTQConfig(weight_bits=8, act_bits=8, backend="simulated"),
                      MethodInputs(calibration=cnn.calib))
    sim = result.model
    assert result.backend == "simulated"
    with torch.no_grad():
        real_pred, sim_pred = cnn.q(cnn.x).argmax(1), sim(cnn.x).argmax(1)
    agree = (real_pred == sim_pred).float().mean().item()
    assert agree >= 0.99, f"real INT8 agrees with simulated INT8 on only {agree:.1%}"


def test_every_conv_of_a_tf_efficientnet_runs_int8_and_leftovers_are_named():
    """timm's Conv2dSame (stem + strided depthwise convs of tf_* EfficientNets) is quantized like any conv; a
    conv the quantizer cannot see is named in a warning instead of silently staying FP32."""
    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", num_classes=2, pretrained=False).eval()
    x = torch.randn(2, 3, 48, 48)
    q = int8.convert_static_int8(model, PTQConfig(), [x])
    convs = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert set(int8.int8_effective_weights(q)) == convs  # conv_stem and blocks.*.0.conv_dw included

    class OddConv(nn.Conv2d):  # its own forward: the quantizer does not annotate it
        def forward(self, x):
            return nn.functional.conv2d(x, self.weight * 1.0, self.bias, self.stride, self.padding)

    net = nn.Sequential(OddConv(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)).eval()
    with pytest.warns(UserWarning, match=r"1 conv/linear layer\(s\) stay FP32.*: 0"):
        int8.convert_static_int8(net, PTQConfig(), [torch.randn(2, 3, 16, 16)])
