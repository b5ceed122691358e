"""Compression building blocks: observers, fake-quant maths, batch normalisation, QAT steps, bit allocation."""
import json
import math

import pytest
import torch
from torch import nn
import torch.nn.functional as F
from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver

from fairq.compression import (
    MixedPrecisionConfig, QATConfig, effective_weights, layer_bits, model_size, prepare_qat, quantize,
    compress, MethodInputs,
)
from fairq.compression.core.data import iter_labelled_batches, iter_model_inputs
from fairq.compression.core.fakequant import (
    FakeQuantLayer, FakeQuantLinear, dynamic_fake_quant, quantize_weight, quantize_with,
)
from fairq.compression.quant.mixed_precision import allocate_bits
from fairq.compression.quant.qat import convert_qat_result
from fairq.compression.core.observers import (
    KBitHistogramObserver, MSEObserver, PercentileObserver, act_observer, act_spec, qrange, weight_observer, weight_spec,
)



def _skewed(n=20000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n).exponential_(1.0, generator=g)
    x[:5] = 60.0  # a few outliers
    return x


def _qmse(x, scale, zp, qmin, qmax):
    q = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), qmin, qmax)
    return float(((q - x) ** 2).mean())


# ---------------------------------------------------------------- observers
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_observers_differ_on_skewed_data_and_clip_outliers(bits):
    x = _skewed()
    qmin, qmax = qrange(bits, signed=False)
    params = {}
    for kind in ("minmax", "percentile", "mse", "histogram"):
        obs = act_observer(kind, bits, percentile=99.9)
        for chunk in x.split(5000):
            obs(chunk)
        params[kind] = tuple(float(t) for t in obs.calculate_qparams())
    scales = {k: v[0] for k, v in params.items()}
    errs = {k: _qmse(x, s, z, qmin, qmax) for k, (s, z) in params.items()}
    assert scales["minmax"] == pytest.approx(60.0 / (2**bits - 1), rel=1e-5)
    assert scales["percentile"] < scales["minmax"]
    # MSE search does what it claims: never worse than min-max on the observed values
    assert errs["mse"] <= errs["minmax"] * (1 + 1e-6)
    if bits <= 4:  # coarse grids: clipping the outliers pays off, and every observer lands elsewhere
        assert len(set(scales.values())) == 4, scales
        assert errs["mse"] < errs["minmax"] and scales["histogram"] < scales["minmax"]
    else:  # 256 levels: five outliers at 60 cost more clipped than kept, so MSE keeps the full range
        assert scales["mse"] == pytest.approx(scales["minmax"])


def test_percentile_matches_torch_quantile():
    x = _skewed()
    obs = act_observer("percentile", 8, percentile=99.0)
    obs(x)
    scale, zp = obs.calculate_qparams()
    hi = float(scale) * (255 - int(zp))  # top of the representable range
    ref = float(torch.quantile(x, 0.99))
    assert hi == pytest.approx(ref, abs=60.0 / 2048 + 1e-6)  # within one histogram bin


def test_kbit_histogram_equals_torch_ao_at_8_bits_and_targets_2k_levels():
    x = _skewed()
    ours, ref = act_observer("histogram", 8), HistogramObserver(dtype=torch.quint8, quant_min=0, quant_max=255)
    ours(x), ref(x)
    assert [float(t) for t in ours.calculate_qparams()] == [float(t) for t in ref.calculate_qparams()]
    assert KBitHistogramObserver(dtype=torch.quint8, quant_min=0, quant_max=15).dst_nbins == 16


def test_minmax_is_torch_ao_unchanged():
    x = torch.randn(1000) * 3 + 1
    ours, ref = act_observer("minmax", 5), MinMaxObserver(dtype=torch.quint8, quant_min=0, quant_max=31)
    ours(x), ref(x)
    assert [float(t) for t in ours.calculate_qparams()] == [float(t) for t in ref.calculate_qparams()]


# Written out by hand from the definition (two's complement: -2^(k-1) .. 2^(k-1)-1; unsigned: 0 .. 2^k-1), so a
# range narrowed or widened by one level fails here rather than passing every test that compares with qrange().
K_BIT_RANGES = {
    2: ((-2, 1), (0, 3)),
    3: ((-4, 3), (0, 7)),
    4: ((-8, 7), (0, 15)),
    5: ((-16, 15), (0, 31)),
    6: ((-32, 31), (0, 63)),
    7: ((-64, 63), (0, 127)),
    8: ((-128, 127), (0, 255)),
}


@pytest.mark.parametrize("bits", sorted(K_BIT_RANGES))
def test_qrange_is_the_k_bit_range(bits):
    signed, unsigned = K_BIT_RANGES[bits]
    assert qrange(bits, signed=True) == signed
    assert qrange(bits, signed=False) == unsigned


@pytest.mark.parametrize("bits", sorted(K_BIT_RANGES))
def test_ramp_wider_than_the_range_uses_exactly_2k_codes(bits):
    """A ramp over [-300, 300] at scale 1, zero point 0 saturates both ends: every level is hit, no more."""
    (smin, smax), (umin, umax) = K_BIT_RANGES[bits]
    ramp = torch.arange(-300.0, 300.25, 0.25)
    codes = quantize_with(ramp, bits, torch.tensor(1.0), torch.tensor(0)).codes
    assert torch.unique(codes).numel() == 2**bits
    assert (int(codes.min()), int(codes.max())) == (smin, smax)
    # Activations (affine → unsigned codes) go through the static input fake-quant of a simulated layer.
    lin = nn.Linear(ramp.numel(), 1)
    layer = FakeQuantLinear(lin, quantize_weight(lin.weight, bits), per_channel=True, symmetric=True,
                            act_bits=bits, act_mode="static", act_qparams=(torch.tensor(1.0), torch.tensor(0)))
    acts = layer.quantize_input(ramp)
    assert torch.unique(acts).numel() == 2**bits
    assert (float(acts.min()), float(acts.max())) == (umin, umax)


def test_specs_name_the_torch_ao_scheme_and_range():
    """Symmetric activations get signed codes (qint8, symmetric scheme); affine ones unsigned (quint8)."""
    assert act_spec(4, True) == dict(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=-8, quant_max=7)
    assert act_spec(4, False) == dict(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=15)
    expected = {(True, True): torch.per_channel_symmetric, (True, False): torch.per_channel_affine,
                (False, True): torch.per_tensor_symmetric, (False, False): torch.per_tensor_affine}
    for (per_channel, symmetric), qscheme in expected.items():
        assert weight_spec(3, per_channel, symmetric) == dict(dtype=torch.qint8, qscheme=qscheme, quant_min=-4,
                                                              quant_max=3)
    for kind in ("minmax", "histogram", "percentile", "mse"):
        obs = act_observer(kind, 4, symmetric=True)
        assert (obs.quant_min, obs.quant_max, obs.qscheme) == (-8, 7, torch.per_tensor_symmetric), kind
        assert (act_observer(kind, 4).quant_min, act_observer(kind, 4).quant_max) == (0, 15), kind
    assert KBitHistogramObserver(dtype=torch.qint8, quant_min=-8, quant_max=7).dst_nbins == 16
    assert KBitHistogramObserver(64, dtype=torch.quint8, quant_min=0, quant_max=15).bins == 64  # torch.ao's args
    with pytest.raises(ValueError, match="unknown observer 'kl'"):
        act_observer("kl", 4)


@pytest.mark.parametrize("per_channel", [True, False])
def test_weight_observer_min_max_over_all_batches_unless_moving(per_channel):
    """The plain observer keeps the range of everything seen; ``moving=True`` (constant 1) only the last batch's."""
    big, small = torch.full((2, 3), 8.0), torch.full((2, 3), 2.0)
    big[:, 0], small[:, 0] = -8.0, -2.0
    for moving, expected_absmax in ((False, 8.0), (True, 2.0)):
        cls, spec = weight_observer(4, per_channel, symmetric=True, moving=moving)
        obs = cls(**spec)
        obs(big), obs(small)
        scale, _ = obs.calculate_qparams()
        # symmetric signed 4-bit: scale = max|w| / ((qmax - qmin) / 2) = max|w| / 7.5
        assert torch.allclose(scale, torch.full_like(scale, expected_absmax / 7.5)), (moving, scale)
        assert scale.numel() == (2 if per_channel else 1)
    cls, spec = weight_observer(4, per_channel, symmetric=True)  # default: not moving
    obs = cls(**spec)
    obs(big), obs(small)
    assert torch.allclose(obs.calculate_qparams()[0], torch.tensor(8.0 / 7.5))


def _two_sided(n=50000, seed=0):
    """Normal values on both sides of 0, plus one outlier on each side (min + max far from 0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 2.0
    x[0], x[1] = -40.0, 60.0
    return x


def test_percentile_clips_both_tails_at_the_quantiles():
    x = _two_sided()
    bin_width = 100.0 / 2048
    for p in (99.0, 99.9):
        obs = PercentileObserver(percentile=p, dtype=torch.quint8, quant_min=0, quant_max=255)
        obs(x)
        scale, zp = (float(t) for t in obs.calculate_qparams())
        lo, hi = -scale * zp, scale * (255 - zp)  # ends of the representable range
        assert lo == pytest.approx(float(torch.quantile(x, 1 - p / 100)), abs=bin_width + scale), p
        assert hi == pytest.approx(float(torch.quantile(x, p / 100)), abs=bin_width + scale), p
    # default 99.99 %: the two outliers (0.002 % each) are clipped; at 100 % the range is min-max
    for obs in (PercentileObserver(dtype=torch.quint8, quant_min=0, quant_max=15), act_observer("percentile", 4)):
        obs(x)
        scale = float(obs.calculate_qparams()[0])
        ref = float(torch.quantile(x, 0.9999) - torch.quantile(x, 0.0001)) / 15
        assert scale == pytest.approx(ref, abs=3 * bin_width / 15)  # each end within a bin or so
    full = PercentileObserver(percentile=100.0, dtype=torch.quint8, quant_min=0, quant_max=15)
    full(x)
    assert float(full.calculate_qparams()[0]) == pytest.approx(100.0 / 15, rel=1e-5)


@pytest.mark.parametrize("bits", [3, 4])
def test_mse_observer_picks_the_best_clipping_on_the_grid(bits):
    """Reference: the quantization MSE of the data itself for every clipping range alpha·[min, max] on the
    observer's own grid, computed with torch's fake-quantize; the observer's choice is (near) the best one."""
    x = _two_sided(20000)
    qmin, qmax = qrange(bits, signed=False)
    obs = MSEObserver(dtype=torch.quint8, quant_min=qmin, quant_max=qmax)
    obs(x)
    scale, zp = obs.calculate_qparams()
    chosen = _qmse(x, scale, zp, qmin, qmax)
    errs = []
    for alpha in torch.linspace(0.05, 1.0, 100).tolist():
        ref = MinMaxObserver(dtype=torch.quint8, quant_min=qmin, quant_max=qmax)
        ref(torch.tensor([-40.0 * alpha, 60.0 * alpha]))
        errs.append(_qmse(x, *ref.calculate_qparams(), qmin, qmax))
    assert chosen <= min(errs) * 1.02, (chosen, min(errs))
    assert chosen < errs[-1] / 2  # clipping the two outliers pays off a lot at these widths
    assert (obs.grid, obs.min_ratio) == (100, 0.05), "the grid the reference above walks is the default one"


# ---------------------------------------------------------------- fake-quant maths
@pytest.mark.parametrize("bits", range(2, 9))
def test_weight_codes_are_k_bit_and_error_bounded(bits):
    torch.manual_seed(bits)
    w = torch.randn(6, 5, 3, 3)
    qw = quantize_weight(w, bits, per_channel=True, symmetric=True)
    qmin, qmax = qrange(bits, signed=True)
    assert qw.codes.dtype == torch.int8 and qmin <= int(qw.codes.min()) and int(qw.codes.max()) <= qmax
    err = (qw.dequantize() - w).abs().amax(dim=(1, 2, 3))
    assert torch.all(err <= qw.scale * 0.5 + 1e-6)  # rounding error ≤ half a step (no clipping at these ranges)


def test_dynamic_fake_quant_uses_each_batch_range():
    small, big = torch.randn(64, 8), torch.randn(64, 8) * 100
    for x in (small, big):
        q = dynamic_fake_quant(x, 4)
        assert torch.unique(q).numel() <= 16
        step = float(x.max() - x.min()) / 15
        assert (q - x).abs().max() <= step / 2 + 1e-4 * step


def test_dynamic_fake_quant_symmetric_uses_signed_codes_around_zero():
    """Symmetric: zero point 0 and scale max|x| / 7.5 at 4 bits, so every output is an integer multiple of it."""
    x = torch.linspace(-3.2, 5.0, 411)
    q = dynamic_fake_quant(x, 4, symmetric=True)
    step = 5.0 / 7.5
    codes = q / step
    assert torch.allclose(codes, codes.round(), atol=1e-5)
    assert (int(codes.round().min()), int(codes.round().max())) == (-5, 7)  # -3.2 / step = -4.8
    assert (q - x).abs().max() <= step / 2 + 1e-5
    assert torch.unique(q).numel() == 13


def test_extra_repr_names_bits_granularity_scheme_and_activations():
    torch.manual_seed(0)
    lin = FakeQuantLayer.from_float(nn.Linear(4, 3), 4, act_bits=8, act_mode="dynamic")
    assert lin.extra_repr() == "in_features=4, out_features=3, weight_bits=4 (per_channel, symmetric), act_bits=8 (dynamic)"
    conv = nn.Conv2d(3, 5, 3, stride=2)
    fq = FakeQuantLayer.from_float(conv, 2, per_channel=False, symmetric=False)
    assert fq.extra_repr() == "3, 5, kernel_size=(3, 3), stride=(2, 2), weight_bits=2 (per_tensor, affine), act=fp32"
    conv.same_pad = True  # as a timm Conv2dSame reports itself
    fq = FakeQuantLayer.from_float(conv, 2, per_channel=True, symmetric=False)
    assert fq.extra_repr() == ("3, 5, kernel_size=(3, 3), stride=(2, 2), padding=same (run time), "
                               "weight_bits=2 (per_channel, affine), act=fp32")


# ---------------------------------------------------------------- calibration data forms
def test_iter_model_inputs_accepts_every_batch_form():
    x = torch.randn(2, 3)
    forms = {
        "tensor": (x, [((x,), {})]),
        "list of tensors": ([x, x], [((x,), {})] * 2),
        "tuples": ([(x, torch.tensor([0, 1]))], [((x,), {})]),
        "fairq dict": ([{"image": x, "target": torch.tensor([0, 1]), "sample_id": [0, 1]}], [((x,), {})]),
    }
    for name, (data, expected) in forms.items():
        got = list(iter_model_inputs(data))
        assert len(got) == len(expected), name
        assert all(torch.equal(a[0][0], b[0][0]) and a[1] == b[1] for a, b in zip(got, expected)), name
    ids = torch.ones(2, 4, dtype=torch.long)
    (args, kwargs), = iter_model_inputs({"input_ids": ids, "attention_mask": ids, "labels": torch.tensor([0, 1])})
    assert args == () and set(kwargs) == {"input_ids", "attention_mask"}
    assert len(list(iter_model_inputs([x] * 5, limit=2))) == 2
    (_, _, y), = iter_labelled_batches({"input_ids": ids, "labels": torch.tensor([1, 0])})
    assert y.tolist() == [1, 0]
    with pytest.raises(ValueError, match="no target"):
        list(iter_labelled_batches([x]))
    with pytest.raises(TypeError, match="unsupported batch"):
        list(iter_model_inputs([3]))
    with pytest.raises(ValueError, match="required"):
        list(iter_model_inputs(None))


# ---------------------------------------------------------------- QAT steps
def _toy():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


@pytest.mark.parametrize("bits", [4, 8])
def test_qat_trains_through_fake_quant_and_converts_to_what_it_trained(bits):
    cfg = QATConfig(weight_bits=bits, act_bits=8, backend="simulated")
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 2, (16,))
    model = prepare_qat(_toy(), cfg, calibration_data=[x])
    assert model.training and layer_bits(model) == {"0": bits, "3": bits}
    before = model[0].weight.detach().clone()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0  # STE passes gradients
    with torch.no_grad():
        model[0].weight.sub_(0.1 * model[0].weight.grad)
    assert not torch.equal(before, model[0].weight)
    model.eval()
    trained_view = effective_weights(model)
    with torch.no_grad():
        out_prepared = model(x)
    result = convert_qat_result(model, cfg)
    q = result.model
    assert result.backend == "simulated" and result.weight_bits == bits and result.simulation == "layer_input"
    for name, w in effective_weights(q).items():
        assert torch.allclose(w, trained_view[name], atol=1e-6), name  # same quantizer as in training
        assert max(torch.unique(r).numel() for r in w.reshape(w.shape[0], -1)) <= 2**bits
    with torch.no_grad():
        assert torch.allclose(q(x), out_prepared, atol=1e-5)  # learned activation ranges carried over


def test_qat_calls_train_fn_between_prepare_and_convert():
    seen = {}

    def train_fn(model):
        seen["layers"] = [type(m).__name__ for m in model.modules()]
        seen["training"] = model.training

    q = quantize(_toy(), QATConfig(weight_bits=4, backend="simulated"), [torch.randn(4, 3, 8, 8)],
                 train_fn=train_fn)
    assert "QATConv2d" in seen["layers"] and seen["training"]
    assert "FakeQuantConv2d" in [type(m).__name__ for m in q.modules()]


# ---------------------------------------------------------------- mixed precision
def test_allocation_prefers_insensitive_layers_and_meets_budget():
    params = {"a": 1000, "b": 1000, "c": 1000}
    sens = {"a": {2: 5.0, 4: 1.0, 8: 0.01}, "b": {2: 0.02, 4: 0.01, 8: 0.0}, "c": {2: 0.5, 4: 0.1, 8: 0.0}}

    def avg(alloc):
        return sum(params[n] * (32 if b is None else b) for n, b in alloc.items()) / sum(params.values())

    alloc = allocate_bits(sens, (2, 4, 8, None), avg, 6.0)
    assert avg(alloc) <= 6.0
    assert alloc["b"] == 2 and (alloc["a"] is None or alloc["a"] >= 8)
    with pytest.raises(ValueError, match="infeasible"):
        allocate_bits(sens, (2, 4, 8, None), avg, 1.5)
    # a fixed FP32 layer counts in the budget: (32 + 8) / 2 = 20 > 18 ≥ (32 + 4) / 2
    two = {"a": 1000, "b": 1000}
    avg2 = lambda a: sum(two[n] * (32 if b is None else b) for n, b in a.items()) / 2000  # noqa: E731
    assert allocate_bits({"a": sens["a"]}, (4, 8), avg2, 18.0, {"b": None}) == {"a": 4}
    assert allocate_bits({"a": sens["a"]}, (4, 8), avg2, 20.0, {"b": None}) == {"a": 8}


def _mp_setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)).eval()
    g = torch.Generator().manual_seed(1)
    val = [(torch.randn(32, 16, generator=g), torch.randint(0, 2, (32,), generator=g)) for _ in range(2)]
    return model, val


def _with_plan(model, cfg, calib, val):
    """(quantized model, mixed-precision plan) — the plan is part of the method's result, not of the model."""
    result = compress(model, cfg, MethodInputs(calibration=calib, validation=val))
    assert result.artifacts[0].folder == "plans" and result.artifacts[0].content == result.info["plan"].to_dict()
    assert result.weight_bits == pytest.approx(result.info["plan"].avg_bits, abs=1e-3)  # the cell's average width
    return result.model, result.info["plan"]


@pytest.mark.parametrize("sensitivity", ["loss", "accuracy", "kl"])
def test_mixed_precision_respects_avg_bits_budget_and_keeps_classifier(sensitivity):
    model, val = _mp_setup()
    cfg = MixedPrecisionConfig(budget_avg_bits=5.0, keep_fp32=("4",), sensitivity=sensitivity)
    q, plan = _with_plan(model, cfg, [v[0] for v in val], val)
    assert plan.avg_bits <= 5.0
    assert plan.bits["4"] is None and layer_bits(q)["4"] is None
    assert {n: b for n, b in layer_bits(q).items()} == plan.bits
    frame = plan.to_frame()
    assert list(frame.columns[:5]) == ["layer", "params", "sensitivity", "bits", "policy"]
    assert frame.set_index("layer").loc["0", "params"] == 16 * 64
    assert frame["bits"].tolist() == [plan.bits[n] for n in frame["layer"]]  # ints and None, not floats/NaN
    assert not math.isnan(frame.set_index("layer").loc["2", "sensitivity_2"])
    json.dumps(plan.to_dict())
    assert "avg weight bits" in str(plan) and "fp32" in str(plan)
    # the plan's predicted packed size is the measured packed size of the model it produced
    assert plan.size_mb == pytest.approx(model_size(q)[0], rel=1e-9)


def test_mixed_precision_mb_budget_and_explicit_plan():
    model, val = _mp_setup()
    fp_mb = model_size(model)[0]
    budget = 0.25 * fp_mb
    q, plan = _with_plan(model, MixedPrecisionConfig(budget_mb=budget, keep_fp32=()), [val[0][0]], val)
    assert model_size(q) == (pytest.approx(plan.size_mb), "packed_estimate")
    assert model_size(q)[0] <= budget
    plan = {"0": 2, "2": 8}
    q = quantize(model, MixedPrecisionConfig(plan=plan, act_bits=None))
    assert layer_bits(q) == {"0": 2, "2": 8, "4": None}
    with pytest.raises(KeyError, match="unknown layers"):
        quantize(model, MixedPrecisionConfig(plan={"nope": 4}))
    with pytest.raises(ValueError, match="val_data"):
        quantize(model, MixedPrecisionConfig(budget_avg_bits=8), [val[0][0]])


def test_keep_first_layer_policy():
    model, val = _mp_setup()
    _, plan = _with_plan(model, MixedPrecisionConfig(budget_avg_bits=12, keep_first=True, keep_fp32=("4",),
                                                     act_bits=None), None, val)
    rows = {r["layer"]: r for r in plan.rows}
    assert rows["0"]["policy"] == "first" and rows["0"]["bits"] is None and rows["4"]["policy"] == "keep_fp32"


def test_quantize_weight_hand_values_per_channel_symmetric_and_per_tensor_affine():
    """Min-max qparams by hand. Symmetric 4-bit: scale = max|w_row| / 7.5, zero point 0, codes round(w / scale)
    clamped to [-8, 7]. Affine 3-bit per tensor over [0, 1.4]: scale = 1.4 / 7 = 0.2, zero point -4."""
    w = torch.tensor([[-0.7, 1.0], [0.25, 2.0]])
    qw = quantize_weight(w, 4, per_channel=True, symmetric=True)
    torch.testing.assert_close(qw.scale, torch.tensor([1.0 / 7.5, 2.0 / 7.5]))
    assert qw.zero_point.tolist() == [0, 0] and qw.bits == 4
    assert qw.codes.tolist() == [[-5, 7], [1, 7]]   # -5.25 → -5, 7.5 → 7 (clamped), 0.9375 → 1
    torch.testing.assert_close(qw.dequantize(), torch.tensor([[-5.0, 7.0], [2.0, 14.0]]) / 7.5)
    default = quantize_weight(w, 4)                  # the default: per channel, symmetric
    assert default.codes.tolist() == qw.codes.tolist() and default.scale.tolist() == qw.scale.tolist()
    assert default.zero_point.tolist() == [0, 0]
    w = torch.tensor([[0.0, 0.62], [1.4, 0.27]])
    qw = quantize_weight(w, 3, per_channel=False, symmetric=False)
    assert float(qw.scale) == pytest.approx(0.2) and int(qw.zero_point) == -4
    assert qw.codes.tolist() == [[-4, -1], [3, -3]]     # round(w / 0.2) − 4
    torch.testing.assert_close(qw.dequantize(), torch.tensor([[0.0, 0.6], [1.4, 0.2]]))


def test_grouped_dequantize_by_hand():
    """A ``[out, groups]`` scale / zero point (GPTQ's ``group_size``) applies to equal consecutive input slices of
    each output channel: (codes − z) · s per group, for a linear and a conv weight (slices span kernel taps)."""
    from fairq.compression.core.fakequant import QuantizedWeight, dequantize

    codes = torch.tensor([[1, 2, -3, 4], [0, -1, 5, 7]], dtype=torch.int8)
    scale = torch.tensor([[0.5, 2.0], [0.25, 1.0]])
    zp = torch.tensor([[0, 1], [-2, 3]], dtype=torch.int32)
    want = torch.tensor([[0.5, 1.0, -8.0, 6.0], [0.5, 0.25, 2.0, 4.0]])
    out = dequantize(codes, scale, zp)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, want)
    conv = codes.reshape(2, 2, 2, 1)                 # [out, in, kh, kw]: group g = input channel g's two taps
    torch.testing.assert_close(dequantize(conv, scale, zp), want.reshape(2, 2, 2, 1))
    torch.testing.assert_close(QuantizedWeight(conv, scale, zp, 4).dequantize(), want.reshape(2, 2, 2, 1))


def test_quantize_with_two_channels_and_a_zero_point_clamps_to_the_signed_range():
    """Per-channel qparams of a 2-channel 4-D weight (conv layout) broadcast along axis 0; codes are
    clamp(round(w / s) + z, -4, 3) at 3 bits."""
    w = torch.tensor([-1.0, 0.0, 0.3, 0.8, 5.0]).repeat(2, 1).reshape(2, 5, 1, 1)
    qw = quantize_with(w, 3, torch.tensor([0.25, 0.5]), torch.tensor([1, -1]))
    assert qw.codes.dtype == torch.int8
    assert qw.codes[:, :, 0, 0].tolist() == [[-3, 1, 2, 3, 3], [-3, -1, 0, 1, 3]]
    torch.testing.assert_close(qw.dequantize()[:, :, 0, 0],
                               torch.tensor([[-1.0, 0.0, 0.25, 0.5, 0.5], [-1.0, 0.0, 0.5, 1.0, 2.0]]))


def test_simulated_layer_validates_activation_settings_and_rejects_other_modules():
    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="act_mode must be"):
        FakeQuantLayer.from_float(lin, 4, act_mode="per_token")
    with pytest.raises(ValueError, match="^static activation quantization needs act_bits and calibrated act_qparams$"):
        FakeQuantLayer.from_float(lin, 4, act_bits=8, act_mode="static")
    with pytest.raises(ValueError, match="needs act_bits and calibrated act_qparams"):
        FakeQuantLayer.from_float(lin, 4, act_mode="static", act_qparams=(torch.tensor(1.0), torch.tensor(0)))
    with pytest.raises(TypeError, match="^cannot fake-quantize Conv1d: only nn.Conv2d and nn.Linear$"):
        FakeQuantLayer.from_float(nn.Conv1d(3, 2, 1), 4)
    plain = FakeQuantLayer.from_float(lin, 4, act_bits=8)          # no act_mode: activations stay float
    assert plain.act_bits is None and plain.act_mode is None
    x = torch.tensor([[0.123, -0.456, 0.789]])
    assert torch.equal(plain.quantize_input(x), x)


def test_static_and_dynamic_input_quantization_of_a_simulated_linear():
    """Static: the calibrated scale/zero point (affine → unsigned codes [0, 15] at 4 bits, symmetric → [-8, 7]);
    dynamic: this batch's range. The output is F.linear of the quantized input with the dequantized weight."""
    torch.manual_seed(0)
    lin = nn.Linear(3, 2)
    x = torch.tensor([[-1.0, 0.26, 9.0]])
    static = FakeQuantLayer.from_float(lin, 8, act_bits=4, act_mode="static",
                                       act_qparams=(torch.tensor(0.5), torch.tensor(2)))
    assert (static.act_quant_min, static.act_quant_max) == (0, 15)
    assert static.act_zero_point.dtype == torch.int32  # the zero-point dtype torch's fake-quant ops take
    torch.testing.assert_close(static.quantize_input(x), torch.tensor([[-1.0, 0.5, 6.5]]))   # (clamp(q+2)−2)·0.5
    torch.testing.assert_close(static(x), F.linear(torch.tensor([[-1.0, 0.5, 6.5]]), static.weight, lin.bias))
    sym = FakeQuantLayer.from_float(lin, 8, act_bits=4, act_mode="static", act_symmetric=True,
                                    act_qparams=(torch.tensor(0.5), torch.tensor(0)))
    assert (sym.act_quant_min, sym.act_quant_max) == (-8, 7)
    torch.testing.assert_close(sym.quantize_input(x), torch.tensor([[-1.0, 0.5, 3.5]]))
    dyn = FakeQuantLayer.from_float(lin, 8, act_bits=4, act_mode="dynamic")
    assert dyn.act_bits == 4
    torch.testing.assert_close(dyn.quantize_input(x), dynamic_fake_quant(x, 4))
    assert not torch.equal(dyn.quantize_input(x), x)
    dyn_sym = FakeQuantLayer.from_float(lin, 8, act_bits=4, act_mode="dynamic", act_symmetric=True)
    torch.testing.assert_close(dyn_sym.quantize_input(x), dynamic_fake_quant(x, 4, symmetric=True))
    assert not torch.equal(dyn_sym.quantize_input(x), dyn.quantize_input(x))  # the option reaches the layer


def test_loading_a_state_dict_refreshes_the_dequantized_weight():
    torch.manual_seed(0)
    a = FakeQuantLayer.from_float(nn.Linear(4, 3), 4)
    b = FakeQuantLayer.from_float(nn.Linear(4, 3), 4)
    assert not torch.equal(a.weight, b.weight)
    assert "_weight_deq" not in a.state_dict()                    # derived from the codes, not stored
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(b.weight, a.weight)
    x = torch.randn(2, 4)
    torch.testing.assert_close(b(x), a(x))


def test_simulated_conv_computes_with_the_dequantized_weight_and_the_conv_settings():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=1, groups=1, bias=True)
    fq = FakeQuantLayer.from_float(conv, 4, per_channel=True, symmetric=True)
    x = torch.randn(1, 2, 7, 7)
    torch.testing.assert_close(fq(x), F.conv2d(x, fq.weight, conv.bias, stride=2, padding=1))
    assert fq.bias is not None and not fq.bias.requires_grad and not fq.same_pad
    assert fq.symmetric is True and "(per_channel, symmetric)" in repr(fq)  # sizes count zero points by this flag
    grouped = nn.Conv2d(4, 4, 3, groups=2, padding=2, dilation=2, bias=False)
    fg = FakeQuantLayer.from_float(grouped, 8)
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(fg(x), F.conv2d(x, fg.weight, None, padding=2, dilation=2, groups=2))
    assert fg.bias is None
