"""Advanced PTQ (rtn, gptq, awq, smoothquant): the properties each algorithm claims, on the tiny CNN / ViT / BERT.

GPTQ's per-layer reconstruction error on the calibration inputs is ≤ round-to-nearest's (measured here from the
two models' effective weights, not from GPTQ's own record); the AWQ / SmoothQuant rescaling leaves the FP32
function unchanged; the balanced calibration option really changes the statistics and the handler uses them;
≤ 2**k levels per channel (per group); config errors. The registry-generated forward / audit checks of the four
methods run in tests/test_compression.py.
"""
import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fairq.compression import (
    AWQConfig, GPTQConfig, MethodInputs, PTQConfig, RTNConfig, SmoothQuantConfig, compress, effective_weights,
    layer_bits, quantize,
)
from fairq.compression.quant.gptq import gptq_codes, grid
from fairq.compression.quant.layer_stats import ScaledInput, collect_input_stats
from fairq.compression.core.modules import quantizable_layers
from fairq.compression.quant.smoothing import smooth
from fairq.errors import UserError

from test_compression import _build, _outputs


@pytest.fixture(scope="module", params=["cnn", "vit", "bert"])
def zoo(request):
    return _build(request.param)


def _layer_inputs(model, calib):
    """The float model's input batches of every quantizable layer, captured by this test's own hooks."""
    layers = quantizable_layers(model)
    seen = {n: [] for n in layers}
    handles = [m.register_forward_pre_hook(lambda _m, a, n=n: seen[n].append(a[0].detach()))
               for n, m in layers.items()]
    _outputs(model, calib)
    for h in handles:
        h.remove()
    return layers, {n: xs for n, xs in seen.items() if xs}


def _output_error(mod, weight, xs):
    """Σ ||layer_W(x) − layer_Q(x)||² over the captured inputs (bias cancels)."""
    err = 0.0
    for x in xs:
        weight = weight.detach()
        if isinstance(mod, nn.Conv2d):
            ref, out = mod._conv_forward(x, mod.weight, None), mod._conv_forward(x, weight, None)
        else:
            ref, out = F.linear(x, mod.weight), F.linear(x, weight)
        err += float((ref - out).detach().pow(2).sum())
    return err


# ---------------------------------------------------------------------------------------------- GPTQ
@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_reconstruction_error_is_at_most_rtn_per_layer(zoo, bits):
    layers, inputs = _layer_inputs(zoo.model, zoo.calib)
    opts = dict(weight_bits=bits, act_bits=None, backend="simulated", simulation="layer_input")
    rtn = effective_weights(quantize(zoo.model, PTQConfig(**opts), zoo.calib))
    # one-pass Hessians: every layer's error is measured on the same float inputs GPTQ saw
    result = compress(zoo.model, GPTQConfig(weight_bits=bits, sequential=False), MethodInputs(calibration=zoo.calib))
    gptq = effective_weights(result.model)
    assert set(inputs) <= set(gptq)
    better = 0
    for name, xs in inputs.items():
        e_gptq, e_rtn = _output_error(layers[name], gptq[name], xs), _output_error(layers[name], rtn[name], xs)
        assert e_gptq <= e_rtn * (1 + 1e-5), f"{name}: gptq {e_gptq:.4g} > rtn {e_rtn:.4g}"
        better += e_gptq < e_rtn * 0.999
    assert better >= len(inputs) // 2, "GPTQ should beat RTN clearly on most layers"
    # and its own record agrees with the measurement in direction
    assert 0 < result.record["gptq_error_ratio"] < 1


def test_gptq_options_act_order_groups_and_sequential_stay_on_the_grid_and_beat_rtn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.GELU(), nn.Linear(16, 4)).eval()
    calib = [torch.randn(64, 32) * torch.linspace(0.1, 3, 32) for _ in range(2)]  # uneven input channels
    layers, inputs = _layer_inputs(model, calib)
    for opts in (dict(act_order=True), dict(group_size=8), dict(group_size=8, act_order=True), dict(block_size=5),
                 dict(sequential=True), dict(symmetric=False)):
        cfg = GPTQConfig(weight_bits=3, **opts)
        q = compress(model, cfg, MethodInputs(calibration=calib)).model
        rtn = compress(model, RTNConfig(weight_bits=3, symmetric=cfg.symmetric), MethodInputs(calibration=calib)).model
        w, w_rtn = effective_weights(q)["0"], effective_weights(rtn)["0"]
        assert _output_error(layers["0"], w, inputs["0"]) < _output_error(layers["0"], w_rtn, inputs["0"]), opts
        rows = w.reshape(16, -1, opts.get("group_size", 32))  # ≤ 2**k values per output channel (per group)
        assert max(torch.unique(g).numel() for g in rows.reshape(-1, rows.shape[-1])) <= 8, opts
        if "group_size" in opts:
            assert q[0].weight_scale.shape == (16, 4)
            assert max(torch.unique(r).numel() for r in w) > 8  # several grids per channel: the audit is per group


def test_gptq_codes_equal_rtn_when_the_hessian_is_diagonal():
    """With uncorrelated inputs (diagonal H) there is nothing to compensate on other columns: codes = RTN's."""
    torch.manual_seed(0)
    lin = nn.Linear(6, 3)
    _, _, s, z = grid(lin, 4, per_channel=True, symmetric=True, group_size=None)
    w = lin.weight.detach()[None]
    h = torch.diag(torch.rand(6) + 0.5)[None]
    codes = gptq_codes(w, h, s, z, 4, damp=0.01)
    assert torch.equal(codes, torch.clamp(torch.round(w / s), -8, 7))


# ---------------------------------------------------------------------------------------------- AWQ / SmoothQuant
@pytest.mark.parametrize("config", [AWQConfig(weight_bits=4), SmoothQuantConfig(weight_bits=4, alpha=0.8)],
                         ids=["awq", "smoothquant"])
def test_rescaling_leaves_the_fp32_function_unchanged(zoo, config):
    model = copy.deepcopy(zoo.model)
    smoothed, records = smooth(model, config, zoo.calib)
    assert records and any(isinstance(m, ScaledInput) for m in smoothed.modules())
    diff = (_outputs(smoothed, zoo.calib) - _outputs(zoo.model, zoo.calib)).abs().max().item()
    assert diff <= 1e-4, diff
    changed = [n for n, p in smoothed.named_parameters() if n.endswith("layer.weight")
               and not torch.allclose(p, zoo.model.get_parameter(n[:-len("layer.weight")] + "weight"))]
    assert changed, "no weight was rescaled: the equality above would be vacuous"


class _PreLN(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.norm, self.fc, self.out = nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 16), nn.Linear(16, 2)

    def forward(self, x):
        h = self.inp(x)
        return self.out(h + self.fc(self.norm(h)))  # the norm's output feeds fc only; h also feeds the residual


def test_scales_fold_into_a_layernorm_read_only_by_the_layer_and_stay_explicit_elsewhere():
    torch.manual_seed(0)
    model = _PreLN().eval()
    calib = [torch.randn(32, 8) for _ in range(2)]
    smoothed, records = smooth(copy.deepcopy(model), SmoothQuantConfig(alpha=0.5), calib)
    assert records["fc"]["folded"] and not records["out"]["folded"] and not records["inp"]["folded"]
    assert isinstance(smoothed.fc, nn.Linear) and isinstance(smoothed.out, ScaledInput)
    assert not torch.allclose(smoothed.norm.weight, model.norm.weight)
    assert (_outputs(smoothed, calib) - _outputs(model, calib)).abs().max() <= 1e-4


def test_awq_chooses_scales_that_lower_the_quantized_output_error_on_outlier_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16)).eval()
    gain = torch.ones(32)
    gain[:3] = 20.0  # a few salient input channels, as AWQ's paper observes in activations
    calib = [torch.randn(128, 32) * gain for _ in range(2)]
    res = compress(model, AWQConfig(weight_bits=3), MethodInputs(calibration=calib))
    rec = res.info["scales"]["0"]
    assert rec["alpha"] > 0 and rec["awq_mse"] < rec["rtn_mse"]
    layers, inputs = _layer_inputs(model, calib)
    rtn = compress(model, RTNConfig(weight_bits=3), MethodInputs(calibration=calib)).model
    awq_out, rtn_out, fp = (_outputs(m, calib) for m in (res.model, rtn, model))
    assert (awq_out - fp).pow(2).mean() < (rtn_out - fp).pow(2).mean()


def test_smoothquant_lowers_w8a8_error_with_activation_outliers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    gain = torch.ones(32)
    gain[0] = 50.0  # one outlier activation channel dominates the per-tensor range
    calib = [torch.randn(128, 32) * gain for _ in range(2)]
    fp = _outputs(model, calib)
    errs = {}
    for alpha in (0.0, 0.5):  # α = 0: s_j = 1/max|W_j|^1 … still a rescale; compare with plain W8A4 RTN
        q = compress(model, SmoothQuantConfig(weight_bits=8, act_bits=4, alpha=alpha, backend="simulated"),
                     MethodInputs(calibration=calib)).model
        errs[alpha] = float((_outputs(q, calib) - fp).pow(2).mean())
    rtn = compress(model, RTNConfig(weight_bits=8, act_bits=4, backend="simulated"), MethodInputs(calibration=calib))
    errs["rtn"] = float((_outputs(rtn.model, calib) - fp).pow(2).mean())
    assert errs[0.5] < errs["rtn"], errs


def test_smoothquant_w8a8_runs_on_real_int8_kernels_with_an_explicit_scale(zoo):
    if zoo.kind == "bert":
        pytest.skip("the text default runs W8A8 cells simulated (the deployed graph bakes in a sequence length)")
    res = compress(zoo.model, SmoothQuantConfig(weight_bits=8), MethodInputs(calibration=zoo.calib))
    assert res.backend == "int8" and (res.weight_bits, res.act_bits) == (8, 8)
    fp, out = _outputs(zoo.model, zoo.calib), _outputs(res.model, zoo.calib)
    assert torch.isfinite(out).all() and (out - fp).abs().max() < 0.5 * fp.abs().max()
    assert all(b == 8 for b in layer_bits(res.model).values())


# ---------------------------------------------------------------------------------------------- balanced draws
def _pool(n_major=56, n_minor=8, seed=0):
    """Image batches of two groups whose inputs differ (the minority's channel 0 is much brighter)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_major + n_minor, 3, 32, 32, generator=g)
    s = torch.cat([torch.zeros(n_major), torch.ones(n_minor)]).long()[:, None]
    x[s[:, 0] == 1, 0] += 4.0
    return x, s


def _as_batches(x, s, idx, bs=16):
    idx = torch.as_tensor(idx)
    return [{"image": x[idx[i:i + bs]], "target": torch.zeros(len(idx[i:i + bs]), dtype=torch.long),
             "sensitive": s[idx[i:i + bs]], "sample_id": idx[i:i + bs]} for i in range(0, len(idx), bs)]


def test_the_balanced_draw_changes_the_statistics_and_the_handler_uses_it():
    from fairq.mitigation import balanced_draw
    from fairq.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny_cnn", num_classes=2).eval()
    x, s = _pool()
    rng = np.random.default_rng(0)
    natural = _as_batches(x, s, rng.choice(len(x), 32, replace=False))
    balanced = _as_batches(x, s, balanced_draw(s.numpy(), 32, seed=0))
    assert int(torch.cat([b["sensitive"] for b in balanced]).sum()) == 16  # half minority
    layers = quantizable_layers(model)
    first = next(iter(layers))
    st = {k: collect_input_stats(model, layers, d, hessian=True) for k, d in (("n", natural), ("b", balanced))}
    # the minority's brighter channel 0 weighs more in every statistic the algorithms read
    assert st["b"][first].abs_mean[0] > 1.2 * st["n"][first].abs_mean[0]
    assert not torch.allclose(st["b"][first].hessian, st["n"][first].hessian, rtol=0.05)
    for cfg in (GPTQConfig(weight_bits=3), AWQConfig(weight_bits=3), SmoothQuantConfig(weight_bits=4),
                RTNConfig(weight_bits=4, act_bits=8)):
        bal = dataclasses.replace(cfg, calibration="balanced")
        runs = {"bal": compress(model, bal, MethodInputs(calibration=natural, balanced_calibration=balanced)),
                "nat_on_bal": compress(model, cfg, MethodInputs(calibration=balanced)),
                "nat": compress(model, cfg, MethodInputs(calibration=natural, balanced_calibration=balanced))}
        outs = {k: _outputs(r.model, natural) for k, r in runs.items()}
        name = type(cfg).__name__
        assert torch.equal(outs["bal"], outs["nat_on_bal"]), f"{name}: balanced option did not use the balanced draw"
        assert not torch.equal(outs["bal"], outs["nat"]), f"{name}: the draw changed nothing"
        assert runs["bal"].record["calibration_draw"] == "balanced"


def test_a_balanced_setting_names_its_natural_control_and_needs_a_balanced_draw():
    for cls in (RTNConfig, GPTQConfig, AWQConfig, SmoothQuantConfig):
        extra = {"act_bits": 8} if cls is RTNConfig else {}
        nat, bal = cls(weight_bits=4, **extra), cls(weight_bits=4, calibration="balanced", **extra)
        assert nat.reference_method == "" and nat.controls() == []
        assert bal.controls() == [nat] and bal.reference_method in {"rtn", "gptq", "awq", "smoothquant"}
        assert bal.variant().endswith("calibration=balanced") and nat.variant() == bal.variant().replace(
            "calibration=balanced", "").strip("_")
        with pytest.raises(UserError, match="balanced"):
            compress(nn.Sequential(nn.Linear(4, 2)), bal, MethodInputs(calibration=[torch.randn(4, 4)]))


# ---------------------------------------------------------------------------------------------- audit, config
@pytest.mark.parametrize("k", range(2, 9))
def test_gptq_levels_per_channel_for_every_k(zoo, k):
    q = compress(zoo.model, GPTQConfig(weight_bits=k), MethodInputs(calibration=zoo.calib)).model
    weights, bits = effective_weights(q), layer_bits(q)
    quantized = [n for n, b in bits.items() if b == k]
    assert quantized
    for name in quantized:
        w = weights[name]
        assert max(torch.unique(r).numel() for r in w.reshape(w.shape[0], -1)) <= 2**k, name


@pytest.mark.parametrize("cls, bad, match", [
    (GPTQConfig, dict(backend="int8", weight_bits=8, act_bits=8), "simulated backend only"),
    (GPTQConfig, dict(simulation="graph"), "layer_input"),
    (GPTQConfig, dict(group_size=0), "group_size"),
    (GPTQConfig, dict(group_size=8, per_channel=False), "per_channel"),
    (GPTQConfig, dict(damp=-1.0), "damp"),
    (GPTQConfig, dict(weight_bits=1), "weight_bits"),
    (AWQConfig, dict(grid=0), "grid"),
    (AWQConfig, dict(calibration="fair"), "calibration"),
    (SmoothQuantConfig, dict(alpha=1.5), "alpha"),
    (SmoothQuantConfig, dict(act_bits=None), "act_bits"),
    (RTNConfig, dict(calibration="balanced"), "act_bits"),
])
def test_config_errors(cls, bad, match):
    with pytest.raises(ValueError, match=match):
        cls(**bad)


def test_config_entries_fail_at_startup_with_the_entry_named():
    from fairq.errors import ConfigError
    from fairq.sections import QuantizationSection, plan_section, section_of

    section = section_of({"methods": [{"method": "gptq", "bits": 4}, {"method": "gptq", "bits": 4,
                                                                       "group_sze": 8}]}, QuantizationSection)
    with pytest.raises(ConfigError, match=r"quantization.methods\[1\].*group_size"):
        plan_section("quantization", section)
    ok = plan_section("quantization", section_of({"methods": [
        {"method": m, "bits": [4, 3], "calibration": "balanced"} for m in ("gptq", "awq", "smoothquant")]},
        QuantizationSection))
    assert [c.config.bits for c in ok] == [4, 3] * 3
    assert json.loads(json.dumps(ok[0].config.to_dict()))["calibration"] == "balanced"
    # a balanced entry in the mitigation section runs at the widths its own method runs at in the quantization one
    from fairq.sections import plan_run

    plan = plan_run({"quantization": {"methods": [{"method": "gptq", "bits": [3, 5]}]},
                     "mitigation": {"methods": [{"method": "gptq", "calibration": "balanced"}]}})
    assert [c.config.bits for c in plan["mitigation"]] == [3, 5]


# ---------------------------------------------------------------------------------------------- through the phases
def test_a_balanced_cell_is_stored_with_its_natural_control_and_judged_against_it(tmp_path, monkeypatch):
    import pandas as pd

    from fairq.cli import main
    from test_engine_seams import TINY

    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "cache"))
    args = ["--output_dir", str(tmp_path / "run"), *TINY, "--quantization.methods",
            json.dumps([{"method": "gptq", "bits": 4, "calibration": "balanced"}, {"method": "awq", "bits": 4}]),
            "--mitigation.methods", "[]"]
    assert main(["--phase", "all", *args]) == 0
    m = pd.read_csv(tmp_path / "run" / "metrics.csv", keep_default_na=False)
    gptq = m[m["method"] == "gptq"].set_index("variant")
    assert sorted(gptq.index) == ["", "calibration=balanced"]  # the natural control was stored too
    assert gptq.loc["calibration=balanced", "reference_method"] == "gptq" and gptq.loc["", "reference_method"] == ""
    assert gptq.loc["calibration=balanced", "reference_config"] == gptq.loc["", "config"]
    assert set(gptq["calibration_draw"]) == {"natural", "balanced"}
    assert m.loc[m["method"] == "awq", "reference_method"].tolist() == [""]
    findings = pd.read_csv(tmp_path / "run" / "tables" / "findings.csv")
    judged = findings[(findings["finding"] == "mitigation_vs_ptq") & findings["claim"].str.startswith("gptq")]
    # judged against the natural twin, never against itself (same method, so the variant alone must not decide)
    assert len(judged) == 3 and set(judged["reference"]) == {"gptq w4"}
    assert set(judged["config"]) == {"gptq w4 calibration=balanced"}


def test_a_tied_mlm_decoder_stays_fp32_and_tied():
    """The decoder *is* the word-embedding table: no method quantizes it (a quantized second copy would make the
    model larger than FP32, see fairq.compression.core.modules.tied_output_layers); every other Linear is quantized."""
    import transformers

    from fairq.compression.core.modules import tied_output_layers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    model = transformers.BertForMaskedLM(cfg).eval()
    emb = model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.weight is emb  # tied, as in every BERT MLM
    assert tied_output_layers(model) == ["cls.predictions.decoder"]
    before = emb.detach().clone()
    calib = [dict(input_ids=torch.randint(0, 64, (4, 10)), attention_mask=torch.ones(4, 10, dtype=torch.long))]
    smoothed, _ = smooth(copy.deepcopy(model), AWQConfig(weight_bits=4), calib)
    assert (_outputs(smoothed, calib) - _outputs(model, calib)).abs().max() <= 1e-4
    for cfg_ in (GPTQConfig(weight_bits=3), AWQConfig(weight_bits=3), SmoothQuantConfig(weight_bits=4),
                 RTNConfig(weight_bits=4)):
        q = compress(model, cfg_, MethodInputs(calibration=calib)).model
        emb_q = q.bert.embeddings.word_embeddings.weight
        assert torch.equal(emb_q, before), type(cfg_).__name__
        assert q.cls.predictions.decoder.weight is emb_q, type(cfg_).__name__  # still one tensor
        bits = layer_bits(q)
        assert not any(b for n, b in bits.items() if n.startswith("cls.predictions.decoder")), type(cfg_).__name__
        assert sum(b == cfg_.weight_bits for b in bits.values()) >= 7, type(cfg_).__name__  # the rest is quantized


def _obq_reference(w, h, s, z, bits, order, damp=0.01):
    """GPTQ's column loop written the OBQ way (Frantar et al. 2022, eq. 2–3), in float64, independently of fairq's
    Cholesky form: quantize column ``j`` (the next in ``order``), spread its error over the columns not yet
    quantized through the inverse of the damped Hessian restricted to them, drop ``j``; both give the same codes."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    w, h = w.double().clone(), h.double()
    h = h + damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    codes = torch.zeros_like(w)
    remaining = list(order)
    while remaining:
        j = remaining[0]
        hinv = torch.linalg.inv(h[remaining][:, remaining])
        c = torch.clamp(torch.round(w[:, j] / s[:, j]) + z[:, j], qmin, qmax)
        codes[:, j] = c
        err = (w[:, j] - (c - z[:, j]) * s[:, j]) / hinv[0, 0]
        w[:, remaining] -= err[:, None] * hinv[0][None, :]
        remaining = remaining[1:]
    return codes


def test_gptq_codes_follow_the_obq_reference_in_the_documented_column_order():
    """``act_order`` quantizes columns by *decreasing* Hessian diagonal (GPTQ's "act-order" heuristic): fairq's
    codes equal the OBQ reference taken in that order, and — on these data — differ from the increasing order,
    so a reversed permutation cannot pass. Without ``act_order`` the order is the natural one."""
    g = torch.Generator().manual_seed(3)
    d, out, bits = 10, 6, 3
    x = torch.randn(200, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    x = x * torch.linspace(0.2, 3.0, d, dtype=torch.float64)[torch.randperm(d, generator=g)]  # uneven columns
    h = (2 / len(x)) * x.T @ x
    w = torch.randn(out, d, generator=g, dtype=torch.float64)
    s = (w.abs().amax(1, keepdim=True) / (2 ** (bits - 1) - 1)).expand(out, d).contiguous()
    z = torch.zeros(out, d, dtype=torch.float64)
    decreasing = torch.argsort(torch.diagonal(h), descending=True).tolist()
    ours = gptq_codes(w[None].float(), h[None].float(), s[None].float(), z[None].float(), bits, act_order=True,
                      block_size=4)[0]
    assert torch.equal(ours.double(), _obq_reference(w, h, s, z, bits, decreasing))
    assert not torch.equal(ours.double(), _obq_reference(w, h, s, z, bits, decreasing[::-1]))
    natural = gptq_codes(w[None].float(), h[None].float(), s[None].float(), z[None].float(), bits, block_size=4)[0]
    assert torch.equal(natural.double(), _obq_reference(w, h, s, z, bits, list(range(d))))
    assert not torch.equal(natural, ours)
