"""Compression engine: every registered method × {tiny CNN, tiny ViT, tiny BERT}, plus API, size and latency.

The method × model tests are generated from ``METHODS``: registering a method adds its tests.
"""
import dataclasses
import io
import sys
import types
import warnings

import pytest
import torch
import yaml
from torch import nn

from fairq.compression import (
    METHODS, DynamicConfig, MixedPrecisionConfig, PTQConfig, apply_method, apply_quantization, effective_weights,
    layer_bits, measure_latency, measure_latency_paired, model_size, model_size_mb, quantize, register_method,
    compress, make_config, MethodInputs, MethodResult,
)
from fairq.compression.core.registry import get_method, method_of
from fairq.compression.core.data import iter_model_inputs, logits_of
from fairq.models import create_model

N, CLASSES = 8, 2



def _image_data(seed):
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(N, 3, 32, 32, generator=g) for _ in range(2)]
    y = [torch.randint(0, CLASSES, (N,), generator=g) for _ in range(2)]
    calib = x  # a list of tensors: an iterable of batches
    val = [{"image": xi, "target": yi, "sensitive": torch.zeros(N, dtype=torch.long), "sample_id": torch.arange(N)}
           for xi, yi in zip(x, y)]  # fairq datamodule batches
    train = list(zip(x, y))  # (x, y) tuples
    return calib, val, train


def _text_data(seed, vocab):
    g = torch.Generator().manual_seed(seed)
    batches = [dict(input_ids=torch.randint(0, vocab, (N, 12), generator=g),
                    attention_mask=torch.ones(N, 12, dtype=torch.long),
                    labels=torch.randint(0, CLASSES, (N,), generator=g)) for _ in range(2)]
    return batches, batches, batches


def _tiny_bert():
    import transformers

    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=CLASSES)
    return transformers.BertForSequenceClassification(cfg)


def _build(kind):
    torch.manual_seed(0)
    if kind == "bert":
        model = _tiny_bert()
        data = _text_data(1, 64)
    else:
        model = create_model({"cnn": "tiny_cnn", "vit": "tiny_vit"}[kind], num_classes=CLASSES)
        data = _image_data(1)
    return types.SimpleNamespace(kind=kind, model=model.eval(), calib=data[0], val=data[1], train=data[2])


@pytest.fixture(scope="module", params=["cnn", "vit", "bert"])
def zoo(request):
    return _build(request.param)


def _outputs(model, batches):
    with torch.no_grad():
        return torch.cat([logits_of(model(*a, **k)) for a, k in iter_model_inputs(batches)])


def _max_levels_per_channel(w):
    return max(int(torch.unique(row).numel()) for row in w.reshape(w.shape[0], -1))


def _assert_levels(qmodel):
    """Every k-bit layer holds ≤ 2**k distinct weight values per output channel; returns #quantized layers."""
    weights, bits = effective_weights(qmodel), layer_bits(qmodel)
    n = 0
    for name, k in bits.items():
        if k is None:
            continue
        levels = _max_levels_per_channel(weights[name])
        assert levels <= 2**k, f"{name}: {levels} distinct values > 2**{k}"
        n += 1
    return n


# ---------------------------------------------------------------- registry-generated: method × model × bits
# The engine's own methods; fairq.mitigation's (registered when it is imported) need sensitive-attribute batches
# and get the same generated checks in tests/test_mitigation.py.
# Pruning (and distillation) methods change the architecture or the sparsity, not the widths: tests/test_pruning.py
# generates their checks.
ENGINE_METHODS = sorted(m for m, c in METHODS.items() if c.__module__.startswith("fairq.compression")
                        and get_method(m).family == "quantization")


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("method", ENGINE_METHODS)
def test_every_method_on_every_tiny_model(zoo, method, bits):
    fields = {f.name for f in dataclasses.fields(METHODS[method])}
    options = {"backend": "simulated"} if bits == 8 and "backend" in fields else {}
    if "epochs" in fields:
        options["lr"] = 1e-3
    fp_before = {k: v.clone() for k, v in zoo.model.state_dict().items()}
    result = compress(zoo.model, make_config(method, bits, **options),
                      MethodInputs(calibration=zoo.calib, train_loader=zoo.train, validation=zoo.val))
    q = result.model

    assert q is not zoo.model
    assert all(torch.equal(v, zoo.model.state_dict()[k]) for k, v in fp_before.items()), "input model mutated"
    assert method_of(make_config(method, bits, **options)).name == method and result.backend in {"int8", "simulated"}
    assert result.weight_bits is not None and result.act_bits in {None, 2, 3, 4, 5, 6, 7, 8}
    assert (result.simulation is not None) == (result.backend == "simulated")  # a simulated cell says how
    assert not any(a.startswith("fairq_") for a in vars(q))  # what the cell records is in the result, not the model
    fp, out = _outputs(zoo.model, zoo.calib), _outputs(q, zoo.calib)
    assert out.shape == fp.shape and torch.isfinite(out).all()
    assert (out - fp).abs().max() > 0, "quantized outputs identical to FP32"
    assert _assert_levels(q) > 0, "no layer was quantized"


# ---------------------------------------------------------------- level audit for every k
def test_levels_for_every_k_and_scheme(zoo):
    """The layer-input simulation (``FakeQuantLayer``), symmetric and affine, per channel and per tensor."""
    for k in range(2, 9):
        for per_channel, symmetric in [(True, True), (True, False), (False, True), (False, False)]:
            cfg = PTQConfig(weight_bits=k, act_bits=None, per_channel=per_channel, symmetric=symmetric,
                            backend="simulated", simulation="layer_input")
            q = quantize(zoo.model, cfg, zoo.calib)
            assert _assert_levels(q) > 0
            if not per_channel:  # one scale for the whole tensor: ≤ 2**k values in the whole layer
                for name, w in effective_weights(q).items():
                    assert torch.unique(w).numel() <= 2**k, name
    # 8 bits really uses more than 4 bits' worth of levels (the audit can fail)
    q8 = quantize(zoo.model, PTQConfig(weight_bits=8, act_bits=None, backend="simulated",
                                       simulation="layer_input"), zoo.calib)
    assert max(_max_levels_per_channel(w) for w in effective_weights(q8).values()) > 16


def test_graph_simulation_levels_for_every_k(zoo):
    """The default graph simulation (symmetric weights only, as the kernels take them), per channel and per
    tensor. Kept apart from the layer-input audit: each case is a ``torch.export``, seconds on BERT, and mutation
    testing of ``fakequant.py`` (which this path does not use) need not pay for it."""
    for k in range(2, 9):
        for per_channel in (True, False):
            cfg = PTQConfig(weight_bits=k, act_bits=None, per_channel=per_channel, backend="simulated")
            q = quantize(zoo.model, cfg, zoo.calib)
            assert _assert_levels(q) > 0
            if not per_channel:
                for name, w in effective_weights(q).items():
                    assert torch.unique(w).numel() <= 2**k, name
            if k == 8:
                assert max(_max_levels_per_channel(w) for w in effective_weights(q).values()) > 16


def test_per_channel_beats_per_tensor_on_uneven_channels():
    layer = nn.Linear(16, 4)
    with torch.no_grad():
        layer.weight.mul_(torch.tensor([100.0, 1.0, 0.01, 10.0])[:, None])
    model = nn.Sequential(layer)
    errs = {}
    for pc in (True, False):
        q = quantize(model, PTQConfig(weight_bits=4, act_bits=None, per_channel=pc, backend="simulated",
                                      simulation="layer_input"))
        errs[pc] = (effective_weights(q)["0"] - layer.weight).abs()[2].max().item()
        assert q[0].weight_scale.numel() == (4 if pc else 1)
    assert errs[True] < errs[False]
    assert errs[False] == pytest.approx(layer.weight[2].abs().max().item(), rel=1e-5)  # small channel → all zero


def test_symmetric_has_zero_zero_point_and_affine_uses_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight.add_(0.5)  # skewed positive
    sym = quantize(model, PTQConfig(weight_bits=4, act_bits=None, symmetric=True, backend="simulated",
                                    simulation="layer_input"))
    aff = quantize(model, PTQConfig(weight_bits=4, act_bits=None, symmetric=False, backend="simulated",
                                    simulation="layer_input"))
    assert sym[0].weight_zero_point.abs().sum() == 0
    assert aff[0].weight_zero_point.abs().sum() > 0
    err = {n: (effective_weights(m)["0"] - model[0].weight).abs().mean() for n, m in [("s", sym), ("a", aff)]}
    assert err["a"] < err["s"]


# ---------------------------------------------------------------- observers inside PTQ
def _input_act_scale(q) -> float:
    """Scale of the quantizer on the model's input (first linear's input) in either simulation."""
    from fairq.compression.quant.graph_sim import SimulatedProgram, activation_quantizers

    if isinstance(q, SimulatedProgram):

        return float(next(iter(activation_quantizers(q).values()))["scale"])
    return float(q[0].act_scale)


@pytest.mark.parametrize("simulation", ["graph", "layer_input"])
def test_observers_give_different_activation_params_in_a_model(simulation):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)).eval()
    calib = [torch.distributions.LogNormal(0.0, 1.5).sample((64, 8)) for _ in range(3)]  # heavy right tail
    scales = {}
    for obs in ("minmax", "percentile", "mse", "histogram"):
        q = quantize(model, PTQConfig(weight_bits=8, act_bits=4, observer=obs, percentile=99.0,
                                      backend="simulated", simulation=simulation), calib)
        scales[obs] = _input_act_scale(q)
    assert len(set(scales.values())) == 4, scales
    assert all(scales["minmax"] > scales[o] for o in ("percentile", "mse", "histogram")), scales


def test_activation_quantization_is_applied_with_calibrated_levels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4)).eval()
    calib = [torch.randn(32, 8)]
    q = quantize(model, PTQConfig(weight_bits=8, act_bits=3, backend="simulated", simulation="layer_input"), calib)
    seen = {}
    q[0].register_forward_hook(lambda m, i, o: seen.setdefault("x", m.quantize_input(i[0])))
    q(calib[0])
    assert torch.unique(seen["x"]).numel() <= 2**3
    with pytest.raises(ValueError, match="calibration_data"):
        quantize(model, PTQConfig(weight_bits=4, act_bits=8, backend="simulated", simulation="layer_input"))
    with pytest.raises(ValueError, match="calibration_data"):
        quantize(model, PTQConfig(weight_bits=4, act_bits=8, backend="simulated"))


# ---------------------------------------------------------------- sizes and latency
def test_size_4bit_packed_lt_8bit_packed_lt_fp32_serialized(zoo):
    fp_mb, fp_kind = model_size(zoo.model)
    buf = io.BytesIO()
    torch.save(zoo.model.state_dict(), buf)
    assert fp_kind == "serialized" and fp_mb == pytest.approx(buf.getbuffer().nbytes / 2**20)
    sizes = {}
    for k in (4, 8):
        q = quantize(zoo.model, PTQConfig(weight_bits=k, act_bits=8, backend="simulated"), zoo.calib)
        sizes[k], kind = model_size(q)
        assert kind == "packed_estimate" and model_size_mb(q) == sizes[k]
    assert sizes[4] < sizes[8] < fp_mb
    # weight codes dominate these tiny models except BERT's FP32 embeddings: 8-bit at most ~0.3 of FP32 there
    if zoo.kind != "bert":
        assert sizes[8] < 0.3 * fp_mb


def test_latency_reports_median_and_batch_size():
    model = create_model("tiny_cnn", num_classes=CLASSES)
    model.train()
    res = measure_latency(model, torch.randn(4, 3, 32, 32), warmup=1, repeats=3)
    assert res["latency_ms"] > 0 and res["batch_size"] == 4 and res["repeats"] == 3
    assert model.training, "measure_latency must restore the training mode"


class _FakeClock:
    """A ``perf_counter`` that only moves when a model "runs": timings exact whatever the machine's load."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class _Sleeper(nn.Module):
    """A model whose forward takes a known time on a fake clock."""

    def __init__(self, ms: float, clock: _FakeClock):
        super().__init__()
        self.ms, self.clock = ms, clock
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        self.clock.now += self.ms / 1000.0
        return x


def test_paired_latency_alternates_with_the_reference_and_reports_the_ratio(monkeypatch):
    import fairq.compression.core.measure as measure

    clock = _FakeClock()
    monkeypatch.setattr(measure, "time", clock)
    slow, fast = _Sleeper(24.0, clock).eval(), _Sleeper(6.0, clock).train()
    res = measure_latency_paired(slow, fast, torch.randn(4, 3), warmup=1, repeats=4)
    assert slow.calls == fast.calls == 5, "each repeat must time one forward of each model"
    assert res["latency_ratio_vs_fp32"] == pytest.approx(4.0) and res["latency_ms"] == pytest.approx(24.0)
    assert res["reference_latency_ms"] == pytest.approx(6.0) and res["batch_size"] == 4 and res["repeats"] == 4
    assert fast.training and not slow.training, "modes must be restored"


# ---------------------------------------------------------------- API contract
def test_configs_validate_and_come_from_yaml():
    for bad in (dict(weight_bits=1), dict(weight_bits=9), dict(act_bits=True), dict(observer="kl"),
                dict(backend="int8", weight_bits=4), dict(percentile=10)):
        with pytest.raises(ValueError):
            PTQConfig(**bad)
    with pytest.raises(ValueError, match="budget"):
        MixedPrecisionConfig()
    with pytest.raises(ValueError):
        DynamicConfig(bits=4, backend="int8")
    text = """
    ptq_static: {weight_bits: 4, act_bits: null, observer: percentile, skip_modules: [classifier, "blocks.*"]}
    mixed_precision: {candidate_bits: [4, 8, null], budget_mb: 1.5}
    qat: {weight_bits: 4, epochs: 2}
    """
    for name, fields in yaml.safe_load(text).items():
        cfg = METHODS[name](**fields)
        assert METHODS[name](**yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg
    assert PTQConfig(skip_modules=["head"]).skip_modules == ("head",)


def test_apply_quantization_maps_bit_width_and_rejects_unknowns():
    model = nn.Sequential(nn.Linear(4, 2))
    result = apply_method(model, "ptq_dynamic", 4)
    q = result.model
    assert result.weight_bits == 4 and q[0].weight_bits == 4 and q[0].act_mode == "dynamic"
    with pytest.raises(ValueError, match="unknown compression method"):
        apply_quantization(model, "nope", 4)
    with pytest.raises(TypeError, match="no option"):
        apply_quantization(model, "ptq_static", 4, weight_bit=3)
    with pytest.raises(ValueError, match="train_fn"):
        apply_quantization(model, "qat", 4, [torch.randn(2, 4)])


def test_skip_modules_stay_fp32(zoo):
    pattern = {"cnn": "classifier", "vit": "blocks.*.attn", "bert": "bert.encoder.layer.0"}[zoo.kind]
    q = quantize(zoo.model, PTQConfig(weight_bits=4, act_bits=None, skip_modules=(pattern,), backend="simulated"),
                 zoo.calib)
    bits = layer_bits(q)
    kept = [n for n, b in bits.items() if b is None]
    assert kept and all(n.startswith(pattern.split("*")[0]) for n in kept)
    assert any(b == 4 for b in bits.values())


def test_register_method_plugs_into_quantize_and_rejects_duplicates():
    @dataclasses.dataclass
    class HalfConfig:
        bits_field = "weight_bits"
        weight_bits: int = 16

        @classmethod
        def from_bit_width(cls, bit_width, **options):
            return cls(**options)

    def handler(model, config, inputs):
        return MethodResult(model.half(), weight_bits=16, act_bits=16, backend="simulated", record={"half": True})

    register_method("_test_half", HalfConfig, handler)
    try:
        q = apply_quantization(nn.Linear(2, 2), "_test_half", 16)
        assert q.weight.dtype == torch.float16
        result = compress(nn.Linear(2, 2), HalfConfig())
        assert (result.weight_bits, result.backend, result.record) == (16, "simulated", {"half": True})
        with pytest.raises(ValueError, match="twice"):
            register_method("_test_half", HalfConfig, handler)
    finally:
        from fairq.compression.core import registry

        registry.unregister_method("_test_half")
    assert "_test_half" not in METHODS


def test_simulated_state_dict_round_trip():
    torch.manual_seed(0)
    model = create_model("tiny_cnn", num_classes=CLASSES).eval()
    calib, _, _ = _image_data(3)
    cfg = PTQConfig(weight_bits=4, backend="simulated", simulation="layer_input")
    q1 = quantize(model, cfg, calib)
    q2 = quantize(model, cfg, [c * 3 for c in calib])
    assert not torch.equal(_outputs(q1, calib), _outputs(q2, calib))
    q2.load_state_dict(q1.state_dict())
    assert torch.equal(_outputs(q1, calib), _outputs(q2, calib))


def test_graph_simulation_survives_pickle_and_deepcopy():
    """The graph simulation's activation qparams live in its graph: the whole model travels (as real INT8's)."""
    import copy

    torch.manual_seed(0)
    model = create_model("tiny_cnn", num_classes=CLASSES).eval()
    calib, _, _ = _image_data(3)
    q = quantize(model, PTQConfig(weight_bits=4, backend="simulated"), calib)
    buf = io.BytesIO()
    torch.save(q, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    ref = _outputs(q, calib)
    assert not torch.equal(ref, _outputs(model, calib))
    assert torch.equal(_outputs(loaded, calib), ref) and torch.equal(_outputs(copy.deepcopy(q), calib), ref)
    assert layer_bits(loaded) == layer_bits(q) and model_size(loaded) == model_size(q)


# ---------------------------------------------------------------- real INT8 dispatch
class _Recorder(types.ModuleType):
    """Stand-in for fairq/compression/backends/int8.py that records how the engine calls it."""

    class ProgramModel(nn.Module):
        """What the engine reads of a converted program: its fields."""

        weight_bits, act_bits, act_qrange, engine, simulation = 8, 8, (0, 127), "stub", None

        def __init__(self, model):
            super().__init__()
            self.model = model

    DYNAMIC_ACT_QRANGE, ENGINE_DYNAMIC = (0, 127), "stub-dynamic"

    def __init__(self):
        super().__init__("fairq.compression.backends.int8")
        self.calls = []

    def convert_static_int8(self, model, config, calibration_data):
        self.calls.append(("static", type(config).__name__, calibration_data is not None))
        return self.ProgramModel(model)

    def convert_dynamic_int8(self, model, config):
        self.calls.append(("dynamic", type(config).__name__))
        return self.ProgramModel(model)

    def int8_effective_weights(self, model):
        return {"0": torch.zeros(2, 2)}


def test_int8_dispatch_contract(monkeypatch):
    import fairq.compression.quant.graph_sim  # noqa: F401 (bound to the real backend before the stub replaces it)

    stub = _Recorder()
    monkeypatch.setitem(sys.modules, "fairq.compression.backends.int8", stub)
    model, calib = nn.Sequential(nn.Linear(4, 2)), [torch.randn(3, 4)]
    r = apply_method(model, "ptq_static", 8, calib)
    assert r.backend == "int8" and (r.weight_bits, r.act_bits) == (8, 8) and r.act_qrange == (0, 127)
    assert effective_weights(r.model).keys() == {"0"} and layer_bits(r.model) == {"0": 8}
    r = apply_method(model, "ptq_dynamic", 8)
    assert r.backend == "int8" and (r.act_qrange, r.engine) == ((0, 127), "stub-dynamic")
    assert apply_method(model, "ptq_static", 4, calib).backend == "simulated"
    assert apply_method(model, "ptq_static", 8, calib, backend="simulated").backend == "simulated"
    r = apply_method(model, "qat", 8, calib, train_loader=[(torch.randn(3, 4), torch.tensor([0, 1, 0]))])
    assert r.backend == "int8"
    assert stub.calls == [("static", "PTQConfig", True), ("dynamic", "DynamicConfig"), ("static", "PTQConfig", True)]


def test_real_int8_agrees_with_simulated_int8():
    torch.manual_seed(0)
    model = create_model("tiny_cnn", num_classes=CLASSES).eval()
    calib = [torch.randn(32, 3, 32, 32) for _ in range(4)]
    evals = [torch.randn(64, 3, 32, 32) for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = compress(model, PTQConfig(backend="int8"), MethodInputs(calibration=calib))
    real = result.model
    sim = quantize(model, PTQConfig(backend="simulated"), calib)
    assert result.backend == "int8"
    for k in effective_weights(real).values():
        assert _max_levels_per_channel(k) <= 256
    agree = (_outputs(real, evals).argmax(1) == _outputs(sim, evals).argmax(1)).float().mean()
    assert agree >= 0.99
    assert model_size(real)[0] < 0.5 * model_size(model)[0]


def test_timm_same_padding_convs_are_quantized_like_the_rest(caplog):
    """tf_* EfficientNets put their stem and strided depthwise convs in timm's Conv2dSame; INT-k covers them."""
    from fairq.compression import QATConfig, convert_qat, prepare_qat
    from fairq.compression.core.fakequant import FakeQuantConv2d
    from fairq.compression.quant.qat import _to_float, qat_layers

    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", num_classes=CLASSES, pretrained=False).eval()
    same = {n for n, m in model.named_modules() if type(m).__name__ == "Conv2dSame"}
    assert len(same) == 5
    layers = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    x = torch.randn(2, 3, 37, 42)  # odd / even sizes: the 'same' padding depends on the input
    with caplog.at_level("WARNING"):
        q4 = quantize(model, PTQConfig(weight_bits=4, act_bits=8, backend="simulated", simulation="layer_input"),
                      [x])
    assert "left in full precision" not in caplog.text
    assert layer_bits(q4) == {n: 4 for n in layers}
    assert _assert_levels(q4) == len(layers)
    assert all(q4.get_submodule(n).same_pad for n in same)
    # the default graph simulation quantizes every conv too (same-padding ones included), BatchNorm folded
    g4 = quantize(model, PTQConfig(weight_bits=4, act_bits=8, backend="simulated"), [x])
    assert layer_bits(g4) == {n: 4 for n in layers} and _assert_levels(g4) == len(layers)
    with torch.no_grad():
        assert g4(x).shape == model(x).shape
    # 8-bit weights, FP32 activations: the same function as the float model (padding included).
    q8 = quantize(model, PTQConfig(weight_bits=8, act_bits=None, backend="simulated", simulation="layer_input"))
    with torch.no_grad():
        ref, out = model(x), q8(x)
    assert torch.allclose(out, ref, atol=0.05 * ref.abs().max().item())

    # QAT keeps the run-time padding while training and through both conversions.
    import copy
    qat = prepare_qat(copy.deepcopy(model), QATConfig(weight_bits=4, backend="simulated"), calibration_data=[x])
    assert all(qat_layers(qat)[n].same_pad for n in same)
    qat.eval()
    with torch.no_grad():
        trained = qat(x)
    assert type(_to_float(qat_layers(qat)["conv_stem"])).__name__ == "Conv2dSame"
    converted = convert_qat(qat, QATConfig(weight_bits=4, backend="simulated"))
    assert isinstance(converted.conv_stem, FakeQuantConv2d) and converted.conv_stem.same_pad
    with torch.no_grad():
        assert converted(x).shape == trained.shape
