"""Mitigation methods: balanced calibration really moves the qparams, penalties match their formulas and are
differentiable, fine-tuning with λ > 0 narrows the gap, preservation keeps the top per-group-sensitive layers under
the budget, the fairness-aware quantizer stops early or says plainly that nothing met the constraint, and every
mitigation passes the compression contract on the tiny CNN and ViT (generated from the registry)."""
import dataclasses
import itertools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fairq.mitigation as mit
from fairq.batches import predict
from fairq.compression import (
    METHODS, MethodInputs, PTQConfig, compress, effective_weights, layer_bits, make_config, quantize,
)
from fairq.compression.quant.sensitivity import layer_sensitivity
from fairq.metrics import fairness_metrics
from fairq.mitigation import (
    BiasAwareCalibrationConfig, ConstraintNotMetWarning, FairnessAwareQuantizer, FairnessFinetuneConfig,
    SensitiveLayerPreservationConfig, balanced_draw, group_gap_penalty, group_layer_sensitivity,
)
from fairq.models import create_model



def _run(model, config, calib=None, **inputs):
    """The method's full result (model, record, artifacts, info) — what a run stores."""
    return compress(model, config, MethodInputs.from_kwargs(calib, **inputs))


def _batches(x, y, s, bs=32):
    return [{"image": x[i:i + bs], "target": y[i:i + bs], "sensitive": s[i:i + bs],
             "sample_id": [f"id{j}" for j in range(i, min(i + bs, len(x)))]} for i in range(0, len(x), bs)]


def _mlp(d_in=48, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d_in, 16), nn.ReLU(), nn.Linear(16, 2)).eval()


def _leaky(n=256, seed=0):
    """Images whose first pixel encodes group A and whose label depends on both a signal and the group."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (n,), generator=g)
    b = torch.randint(0, 2, (n,), generator=g)
    signal = torch.randn(n, generator=g)
    y = ((signal + 1.5 * a - 0.75) > 0).long()
    x = 0.3 * torch.randn(n, 3, 4, 4, generator=g)
    x[:, 0, 0, 0] += 3.0 * a
    x[:, 1, 0, 0] += signal
    return x, y, torch.stack([a, b], 1)


def _train(model, batches, steps=150, lr=0.02):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _, b in zip(range(steps), itertools.cycle(batches)):
        loss = nn.functional.cross_entropy(model(b["image"]), b["target"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def leaky():
    x, y, s = _leaky()
    batches = _batches(x, y, s)
    return dict(model=_train(_mlp(), batches), batches=batches, x=x, y=y, s=s)


def _score_gap(model, batches):
    """Max − min over groups of the mean positive-class probability (the DP quantity on scores)."""
    p = predict(model, batches)
    a = p.sensitive[:, 0]
    means = [p.prob[a == g, 1].mean().item() for g in (0, 1)]
    return max(means) - min(means)


# ---------------------------------------------------------------- bias-aware calibration
def test_balanced_draw_is_equal_per_group_and_keeps_a_balanced_pool():
    rng = np.random.default_rng(0)
    sens = torch.as_tensor(np.stack([rng.integers(0, 2, 500), rng.choice(3, 500, p=[0.8, 0.15, 0.05])], 1))
    idx = balanced_draw(sens, 120, seed=3)
    rows = [tuple(r) for r in sens[idx].tolist()]
    counts = {k: rows.count(k) for k in set(rows)}
    assert len(counts) == 6 and set(counts.values()) == {20}
    assert np.array_equal(idx, balanced_draw(sens, 120, seed=3))
    assert not np.array_equal(idx, balanced_draw(sens, 120, seed=4))
    pre = sens[idx]  # already balanced: used as is
    assert np.array_equal(balanced_draw(pre, len(pre)), np.arange(len(pre)))


def _skewed_pool(seed=0):
    """200 samples; the 16 of group (1, 1) have 5x larger inputs (a minority the natural draw may miss)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(200, 3, 4, 4, generator=g)
    s = torch.zeros(200, 2, dtype=torch.long)
    s[:16] = 1
    s[16:100, 0] = 1
    x[:16] *= 5.0
    y = torch.randint(0, 2, (200,), generator=g)
    return x, y, s


@pytest.mark.parametrize("bits", [4, 8])
def test_balanced_draw_with_missed_minority_moves_minmax_activation_qparams(bits):
    x, y, s = _skewed_pool()
    model = _mlp()
    natural = _batches(x[16:80], y[16:80], s[16:80])  # a natural draw of 64 that missed the minority
    pool = _batches(x, y, s)
    # the layer-input simulation exposes each layer's input qparams (q[i].act_scale); the draw is what is tested
    common = dict(weight_bits=bits, act_bits=8, observer="minmax", backend="simulated", simulation="layer_input")
    q_nat = quantize(model, PTQConfig(**common), natural)
    r_bal = _run(model, BiasAwareCalibrationConfig(**common, calibration_samples=64), pool)
    q_bal = r_bal.model
    assert set(r_bal.info["calibration"]["drawn_groups"].values()) == {21, 22}  # 64 over 3 groups present
    assert float(q_bal[1].act_scale) > 3 * float(q_nat[1].act_scale)  # the 5x minority inputs now count
    assert not torch.equal(q_bal[3].act_scale, q_nat[3].act_scale)
    out_nat, out_bal = q_nat(x[:16]), q_bal(x[:16])
    assert not torch.allclose(out_nat, out_bal)


@pytest.mark.parametrize("observer", ["percentile", "mse", "histogram"])
def test_reweighting_the_same_samples_moves_distribution_observers_but_not_minmax(observer):
    x, y, s = _skewed_pool()
    keep = torch.cat([torch.arange(4), torch.arange(16, 76)])  # 4 minority samples among 64
    natural = _batches(x[keep], y[keep], s[keep])
    model = _mlp()
    scales = {}
    for obs in ("minmax", observer):
        common = dict(weight_bits=4, act_bits=4, observer=obs, percentile=99.0, backend="simulated",
                      simulation="layer_input")
        q_nat = quantize(model, PTQConfig(**common), natural)
        r_bal = _run(model, BiasAwareCalibrationConfig(**common), natural)  # redrawn from the same 64
        q_bal = r_bal.model
        assert r_bal.record["calibration_unique"] == r_bal.info["calibration"]["unique_samples"] < 64  # the minority's 4 samples drawn repeatedly
        scales[obs] = (float(q_nat[1].act_scale), float(q_bal[1].act_scale),
                       int(q_nat[1].act_zero_point), int(q_bal[1].act_zero_point))
    assert scales["minmax"][0] == scales["minmax"][1]  # same samples, same range: the documented no-op
    nat, bal = scales[observer][:2]
    assert bal != pytest.approx(nat, rel=1e-3), scales


def test_bias_aware_needs_sensitive_codes():
    with pytest.raises(ValueError, match="sensitive"):
        quantize(_mlp(), BiasAwareCalibrationConfig(weight_bits=4, backend="simulated"),
                 [{"image": torch.rand(4, 3, 4, 4), "target": torch.zeros(4, dtype=torch.long)}])
    with pytest.raises(ValueError, match="no sensitive codes.*tuples"):
        quantize(_mlp(), BiasAwareCalibrationConfig(weight_bits=4, backend="simulated"), [torch.rand(4, 3, 4, 4)])
    with pytest.raises(ValueError, match="integer level codes"):
        quantize(_mlp(), BiasAwareCalibrationConfig(weight_bits=4, backend="simulated"),
                 [{"image": torch.rand(4, 3, 4, 4), "sensitive": torch.zeros(4)}])


# ---------------------------------------------------------------- penalties
def _pairwise(values):
    v = [float(t) for t in values]
    pairs = list(itertools.combinations(v, 2))
    return sum((a - b) ** 2 for a, b in pairs) / len(pairs) if pairs else 0.0


def test_dp_and_eo_penalties_follow_their_formulas():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 2, generator=g)
    target = torch.randint(0, 2, (40,), generator=g)
    sens = torch.stack([torch.arange(40) % 2, torch.arange(40) // 30], 1)  # 4 groups, sizes 15/15/5/5
    p = torch.softmax(logits, -1)[:, 1]
    gid = sens[:, 0] * 2 + sens[:, 1]
    dp = _pairwise([p[gid == k].mean() for k in range(4)])
    cells = {y: [(gid == k) & (target == y) for k in range(4)] for y in (0, 1)}
    eo = sum(_pairwise([p[m].mean() for m in cells[y] if m.any()]) for y in (0, 1))  # empty cells drop out
    assert float(group_gap_penalty(logits, target, sens, kind="dp")) == pytest.approx(dp, rel=1e-5)
    assert float(group_gap_penalty(logits, target, sens, kind="eo", min_count=1)) == pytest.approx(eo, rel=1e-5)
    # a group below min_count drops out of the term
    big = torch.tensor([(gid == k).sum() >= 6 for k in range(4)])
    dp_big = _pairwise([p[gid == k].mean() for k in range(4) if big[k]])
    assert float(group_gap_penalty(logits, target, sens, kind="dp", min_count=6)) == pytest.approx(dp_big, rel=1e-5)


def test_penalty_is_differentiable_and_zero_without_a_gap():
    logits = torch.randn(12, 2, requires_grad=True)
    sens = torch.tensor([[0], [1]] * 6)
    pen = group_gap_penalty(logits, torch.zeros(12, dtype=torch.long), sens)
    pen.backward()
    assert pen > 0 and logits.grad.abs().sum() > 0
    same = torch.randn(6, 2).repeat(2, 1)  # both groups see the same scores
    assert float(group_gap_penalty(same, torch.zeros(12, dtype=torch.long), torch.tensor([[0]] * 6 + [[1]] * 6))) == 0
    assert float(group_gap_penalty(logits, torch.zeros(12, dtype=torch.long), torch.zeros(12, 1))) == 0  # one group


def test_multiclass_penalty_sums_one_vs_rest_classes():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(30, 3, generator=g)
    sens = (torch.arange(30) % 3)[:, None]
    p = torch.softmax(logits, -1)
    want = sum(_pairwise([p[sens[:, 0] == k, c].mean() for k in range(3)]) for c in range(3))
    assert float(group_gap_penalty(logits, torch.zeros(30, dtype=torch.long), sens)) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="dp"):
        group_gap_penalty(logits, torch.zeros(30, dtype=torch.long), sens, kind="tpr")


# ---------------------------------------------------------------- fairness fine-tuning
def test_fairness_finetune_with_lambda_narrows_the_gap_and_trains_through_fake_quant(leaky):
    common = dict(weight_bits=4, act_bits=8, backend="simulated", epochs=5, max_steps=40, lr=1e-2)
    calib = leaky["batches"][:2]
    ptq = quantize(leaky["model"], PTQConfig(weight_bits=4, act_bits=8, backend="simulated"), calib)
    results = {lam: _run(leaky["model"], FairnessFinetuneConfig(**common, lam=lam), calib,
                         train_loader=leaky["batches"]) for lam in (0.0, 20.0)}
    out = {lam: r.model for lam, r in results.items()}
    gaps = {lam: _score_gap(q, leaky["batches"]) for lam, q in out.items()}
    assert _score_gap(ptq, leaky["batches"]) > 0.3  # the leaky model has a real gap to narrow
    assert gaps[20.0] < 0.5 * gaps[0.0], gaps
    for r in results.values():
        q = r.model
        assert r.record["finetune_steps"] == r.info["finetune"]["steps"] == 40 and r.backend == "simulated"
        assert all(b == 4 for b in layer_bits(q).values())
        w, w_ptq = effective_weights(q), effective_weights(ptq)
        assert any(not torch.equal(w[k], w_ptq[k]) for k in w)  # gradients reached the weights (STE)


def test_fairness_finetune_rejects_missing_training_and_bad_lambda(leaky):
    with pytest.raises(ValueError, match="train_loader"):
        quantize(leaky["model"], FairnessFinetuneConfig(weight_bits=4, backend="simulated"), leaky["batches"])
    with pytest.raises(ValueError, match="train_fn"):
        quantize(leaky["model"], FairnessFinetuneConfig(weight_bits=4, backend="simulated"), leaky["batches"],
                 train_fn=lambda m: m, train_loader=leaky["batches"])
    with pytest.raises(ValueError, match="lam"):
        FairnessFinetuneConfig(lam=-1.0)
    with pytest.raises(ValueError, match="fairness"):
        FairnessFinetuneConfig(fairness="tpr")


# ---------------------------------------------------------------- sensitive-layer preservation
def test_group_sensitivity_is_the_mixed_precision_sensitivity_per_group(leaky):
    model = leaky["model"]
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    sens = group_layer_sensitivity(model, layers, 2, leaky["batches"], limit=None, min_group_size=5)
    assert sorted(map(tuple, sens["groups"])) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    gid = leaky["s"][:, 0] * 2 + leaky["s"][:, 1]
    for i, (a, b) in enumerate(sens["groups"]):
        mask = gid == a * 2 + b
        direct = layer_sensitivity(model, layers, (2,), _batches(leaky["x"][mask], leaky["y"][mask], leaky["s"][mask]),
                                   limit=None)
        for n in layers:
            assert sens["per_group"][n][i] == pytest.approx(direct[n][2], rel=1e-4, abs=1e-6)
    overall = layer_sensitivity(model, layers, (2,), leaky["batches"], limit=None)
    for n in layers:  # loss is a sample mean: the size-weighted group mean is the overall change
        assert sens["overall"][n] == pytest.approx(overall[n][2], rel=1e-4, abs=1e-6)
        assert sens["worst"][n] == max(sens["per_group"][n])


@pytest.mark.parametrize("score", ["worst_group", "disparity"])
def test_preservation_keeps_the_top_layer_under_the_budget(leaky, score):
    cfg = dict(weight_bits=2, act_bits=8, min_group_size=5, val_batches=None, score=score)
    res = _run(leaky["model"], SensitiveLayerPreservationConfig(**cfg, budget_avg_bits=32.0, max_layers=1),
               leaky["batches"][:2], val_data=leaky["batches"])
    q, plan = res.model, res.info["plan"]
    scores = {r["layer"]: r["sensitivity"][2] for r in plan.rows}
    top = max(scores, key=scores.get)
    assert res.record["preserved_layers"] == top and plan.to_dict()["preserved"] == [top]
    assert res.weight_bits == 2 and res.record["avg_weight_bits"] == plan.avg_bits > 2
    assert layer_bits(q) == {n: (None if n == top else 2) for n in scores}
    for r in plan.rows:
        want = r["worst_group_change"] - (r["overall_change"] if score == "disparity" else 0.0)
        assert r["sensitivity"][2] == pytest.approx(want)
    # a budget of exactly the base width leaves no room: nothing preserved, every layer at 2 bits
    r0 = _run(leaky["model"], SensitiveLayerPreservationConfig(**cfg, budget_avg_bits=2.0), leaky["batches"][:2],
              val_data=leaky["batches"])
    assert r0.record["preserved_layers"] == "" and set(layer_bits(r0.model).values()) == {2}


def test_preservation_respects_an_intermediate_budget(leaky):
    params = {n: m.weight.numel() for n, m in leaky["model"].named_modules() if isinstance(m, nn.Linear)}
    small = min(params, key=params.get)  # 16*2 = 32 params: FP32 fits a budget the big layer does not
    budget = (sum(params.values()) * 4 + params[small] * 28 + 1) / sum(params.values())
    cfg = SensitiveLayerPreservationConfig(weight_bits=4, min_group_size=5, budget_avg_bits=budget)
    res = _run(leaky["model"], cfg, leaky["batches"][:2], val_data=leaky["batches"])
    assert res.info["plan"].avg_bits <= budget
    assert set(res.info["plan"].extra["preserved"]) <= {small}
    with pytest.raises(ValueError, match="keep_bits"):
        SensitiveLayerPreservationConfig(weight_bits=8, keep_bits=4)
    with pytest.raises(ValueError, match="val_data"):
        quantize(leaky["model"], SensitiveLayerPreservationConfig(weight_bits=4), leaky["batches"][:1])


# ---------------------------------------------------------------- fairness-aware quantizer
def _dp_of(model, batches):
    p = predict(model, batches)
    s = p.sensitive
    return fairness_metrics(p.target, p.pred, {"a": s[:, 0], "b": s[:, 1]})


def test_fairness_aware_quantizer_says_plainly_when_nothing_meets_the_constraint(leaky):
    faq = FairnessAwareQuantizer(bit_width=4, max_dp_gap=0.0, fairness_finetune={"max_steps": 3, "lr": 1e-3})
    with pytest.warns(ConstraintNotMetWarning, match="no option met"):
        q = faq.quantize(leaky["model"], leaky["batches"][:2], leaky["batches"], train_data=leaky["batches"])
    assert faq.constraint_met is False and faq.report()["constraint_met"] is False
    assert [r["method"] for r in faq.history] == [m for m, _ in mit.fairness_aware.DEFAULT_OPTIONS]
    assert not any(r["accepted"] for r in faq.history) and all(r["dp_gap"] > 0 for r in faq.history)
    again = _dp_of(q, leaky["batches"])  # the reported gap is the returned model's, recomputed independently
    assert faq.final_dp_gap == pytest.approx(again["demographic_parity_difference"])
    assert faq.final_eo_gap == pytest.approx(again["equalized_odds_difference"])
    assert faq.chosen["dp_gap"] == min(r["dp_gap"] for r in faq.history)


def test_fairness_aware_quantizer_stops_at_the_first_option_that_meets_it(leaky):
    faq = FairnessAwareQuantizer(bit_width=4, max_eo_gap=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConstraintNotMetWarning)
        q = faq.quantize(leaky["model"], leaky["batches"][:2], leaky["batches"])
    assert faq.constraint_met is True and len(faq.history) == 1 and faq.history[0]["accepted"]
    assert faq.chosen["method"] == "ptq_static" and faq.final_eo_gap <= 1.0
    assert faq.chosen_result.model is q and faq.chosen_result.backend == "simulated"
    assert set(layer_bits(q).values()) == {4}


def test_fairness_aware_quantizer_records_skipped_options_and_validates(leaky):
    faq = FairnessAwareQuantizer(4, max_dp_gap=0.0, options=[("fairness_finetune", {"lam": 1.0}), ("ptq_static", {})])
    with pytest.warns(ConstraintNotMetWarning):
        faq.quantize(leaky["model"], leaky["batches"][:2], leaky["batches"])
    assert faq.history[0]["skipped"] == "no train_data given" and faq.chosen["method"] == "ptq_static"
    with pytest.raises(ValueError, match="constraint"):
        FairnessAwareQuantizer(4)
    # names resolve against the data's own names; plain batches name nothing, so that is an error at quantize time
    with pytest.raises(ValueError, match="attribute_names"):
        FairnessAwareQuantizer(4, max_dp_gap=0.1, sensitive_attributes=["race"]).quantize(
            leaky["model"], leaky["batches"][:2], leaky["batches"])
    with pytest.raises(ValueError, match="unknown quantization method"):
        FairnessAwareQuantizer(4, max_dp_gap=0.1, options=[("magic", {})])
    named = FairnessAwareQuantizer(4, max_dp_gap=0.1, sensitive_attributes=["b"], attribute_names=["a", "b"])
    assert named.columns == [1]


def test_fairness_aware_quantizer_accuracy_floor_rejects_a_damaged_model(leaky):
    ref = _dp_of(leaky["model"], leaky["batches"])["accuracy"]
    faq = FairnessAwareQuantizer(2, max_eo_gap=1.0, max_accuracy_drop=0.0, act_bits=2, options=[("ptq_static", {})])
    with pytest.warns(ConstraintNotMetWarning, match="accuracy"):
        q = faq.quantize(leaky["model"], leaky["batches"][:2], leaky["batches"])
    rec = faq.history[0]
    assert faq.reference_accuracy == pytest.approx(ref) and rec["accuracy"] < ref  # W2A2 does hurt
    assert rec["eo_gap"] <= 1.0 and not rec["accepted"] and faq.constraint_met is False
    assert _dp_of(q, leaky["batches"])["accuracy"] == pytest.approx(rec["accuracy"])
    loose = FairnessAwareQuantizer(2, max_eo_gap=1.0, max_accuracy_drop=1.0, act_bits=2, options=[("ptq_static", {})])
    loose.quantize(leaky["model"], leaky["batches"][:2], leaky["batches"])
    assert loose.constraint_met is True


# ---------------------------------------------------------------- registry-generated contract
OPTIONS = {
    "bias_aware_calibration": {},
    "fairness_finetune": {"max_steps": 2, "lr": 1e-3},
    "sensitive_layer_preservation": {"min_group_size": 2},
    "fairness_aware_quantizer": {"max_eo_gap": 1.0, "min_group_size": 2},
}


def _image_batches(seed, n=16, size=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * n, 3, size, size, generator=g)
    y = torch.randint(0, 2, (2 * n,), generator=g)
    s = torch.stack([torch.arange(2 * n) % 2, (torch.arange(2 * n) // 2) % 2], 1)
    return _batches(x, y, s, bs=n)


@pytest.fixture(scope="module", params=["tiny_cnn", "tiny_vit"])
def tiny(request):
    torch.manual_seed(0)
    return request.param, create_model(request.param, num_classes=2).eval(), _image_batches(1)


def test_every_mitigation_is_registered_with_a_config_dataclass():
    assert set(mit.MITIGATION_METHODS) <= set(METHODS) and set(OPTIONS) == set(mit.MITIGATION_METHODS)
    for name in mit.MITIGATION_METHODS:
        assert dataclasses.is_dataclass(METHODS[name])
        cfg = METHODS[name].from_bit_width(4, **OPTIONS[name])
        assert type(cfg).from_bit_width(4, **cfg.to_dict()) == cfg  # YAML round trip


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_every_mitigation_on_every_tiny_model(tiny, method, bits):
    name, model, data = tiny
    fp_before = {k: v.clone() for k, v in model.state_dict().items()}
    options = dict(OPTIONS[method])
    if "backend" in {f.name for f in dataclasses.fields(METHODS[method])}:
        options["backend"] = "simulated"
    res = _run(model, make_config(method, bits, **options), data, train_loader=data, val_data=data)
    q = res.model
    assert q is not model and all(torch.equal(v, model.state_dict()[k]) for k, v in fp_before.items())
    assert (res.weight_bits, res.act_bits) == (bits, 8)
    with torch.no_grad():
        fp, out = model(data[0]["image"]), q(data[0]["image"])
    assert out.shape == fp.shape and torch.isfinite(out).all() and (out - fp).abs().max() > 0
    levels = {n: int(max(torch.unique(r).numel() for r in w.reshape(w.shape[0], -1)))
              for n, w in effective_weights(q).items() if layer_bits(q)[n] is not None}
    assert levels and all(v <= 2 ** bits for v in levels.values())
    if method == "fairness_aware_quantizer":  # a constraint any option meets: the cheapest is taken
        report = res.info["report"]
        assert report["constraint_met"] and len(report["history"]) == 1 and res.record["constraint_met"]
        assert res.artifacts[0].column == "mitigation_record" and res.artifacts[0].content == report
