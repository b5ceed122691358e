"""Head attribution and ``soft_head_pruning``: every registered ``family="soft_pruning"`` method × {tiny CNN (a clear
error), tiny ViT, tiny BERT}; q/k/v of the selected heads exactly scaled by 1 − α and nothing else touched; α = 0
is the unchanged function; attribution finds a planted biased head; the text validation items never overlap the
scored ones."""
import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from fairq.compression import METHODS, MethodInputs, compress, make_config
from fairq.compression.localize.heads import (GroupGapProbe, NoAttentionHeadsError, attribute_heads, cached_attribution,
                                     head_blocks, heads_scaled, scale_heads, select_heads)
from fairq.compression.core.registry import get_method
from fairq.errors import ConfigError
from fairq.sections import QuantizationSection, plan_section
from test_compression import _build, _outputs

SOFT_METHODS = sorted(m for m in METHODS if get_method(m).family == "soft_pruning")


def _with_groups(batches, seed=0):
    """The zoo's validation batches with a binary sensitive attribute (dict batches, image or keyword inputs)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in batches:
        b = dict(b)
        n = len(b.get("target", b.get("labels")))
        b["sensitive"] = torch.randint(0, 2, (n,), generator=g)
        out.append(b)
    return out


def _planted_labels(model, kind: str, n: int = 256):
    """A validation set on which silencing one head provably shrinks a group gap: keep the samples whose prediction
    that ablation makes less confident; label half of them with their predicted class (group 0)
    and half with the other class (group 1). Group 0's P(true label) is > 1/2 and falls, group 1's is < 1/2 and
    rises: the gap between them shrinks."""
    from fairq.batches import predict, split_batch

    g = torch.Generator().manual_seed(3)
    if kind == "bert":
        batches = [{"input_ids": torch.randint(0, 64, (n, 12), generator=g),
                    "attention_mask": torch.ones(n, 12, dtype=torch.long)}]
    else:
        batches = [torch.randn(n, 3, 32, 32, generator=g)]
    model = copy.deepcopy(model)
    blocks = head_blocks(model)
    base = predict(model, batches, need_target=False).prob
    top = base.argmax(1)
    keep = []
    for b in blocks:  # the head whose silencing makes the most predictions less confident
        for h in range(b.num_heads):
            with heads_scaled(blocks, {b.name: [h]}, 0.0):
                abl = predict(model, batches, need_target=False).prob
            k = np.flatnonzero(abl[np.arange(len(top)), top] < base[np.arange(len(top)), top])
            keep = k if len(k) > len(keep) else keep
    assert len(keep) >= 10, "the ablation changes too few predictions to build the check"
    group = (np.arange(len(keep)) % 2).astype(np.int64)
    target = np.where(group == 0, top[keep], 1 - top[keep])
    parts = [split_batch(b) for b in batches]
    args = [torch.cat([p.args[j] for p in parts])[keep] for j in range(len(parts[0].args))]
    kwargs = {k: torch.cat([p.kwargs[k] for p in parts])[keep] for k in parts[0].kwargs}
    key = "image" if args else None
    out = {key: args[0]} if key else dict(kwargs)
    out.update(target=torch.as_tensor(target), sensitive=torch.as_tensor(group))
    return [out]


def _qkv_rows(model):
    """{(block, projection index, head): (weight rows, bias rows)} of every head's q, k and v."""
    out = {}
    for b in head_blocks(model):
        for i, (_, lin, off) in enumerate(b.producers()):
            for h in range(b.num_heads):
                r = b.rows([h], off)
                out[(b.name, i, h)] = (lin.weight.detach()[r].clone(),
                                       None if lin.bias is None else lin.bias.detach()[r].clone())
    return out


def _assert_scaled(before, after, selection, factor):
    """Selected heads' rows are exactly ``factor`` × the original; every other row is bit-identical."""
    assert before.keys() == after.keys()
    for (block, i, h), (w0, b0) in before.items():
        w1, b1 = after[(block, i, h)]
        if h in selection.get(block, []):
            assert torch.equal(w1, w0 * factor), (block, i, h)
            assert b0 is None or torch.equal(b1, b0 * factor), (block, i, h)
        else:
            assert torch.equal(w1, w0) and (b0 is None or torch.equal(b1, b0)), (block, i, h)


# ---------------------------------------------------------------- registry-generated: method × model
def test_soft_head_pruning_is_registered():
    assert SOFT_METHODS == ["soft_head_pruning"]
    assert get_method("soft_head_pruning").needs == {"validation", "training"}


@pytest.mark.parametrize("kind", ["cnn", "vit", "bert"])
@pytest.mark.parametrize("method", SOFT_METHODS)
def test_every_soft_pruning_method_on_every_tiny_model(kind, method):
    zoo = _build(kind)
    val = _planted_labels(zoo.model, kind) if kind != "cnn" else _with_groups(zoo.val)
    cfg = make_config(method, alpha=0.5, n_heads=1)
    if kind == "cnn":
        with pytest.raises(NoAttentionHeadsError, match="tiny_cnn.*no attention heads"):
            compress(zoo.model, cfg, MethodInputs(calibration=zoo.calib, validation=val, model_name="tiny_cnn"))
        return
    state = {k: v.clone() for k, v in zoo.model.state_dict().items()}
    rows = _qkv_rows(zoo.model)
    res = compress(zoo.model, cfg, MethodInputs(calibration=zoo.calib, validation=val))
    assert all(torch.equal(v, zoo.model.state_dict()[k]) for k, v in state.items()), "input model mutated"
    art = res.artifacts[0]
    assert (art.folder, art.column) == ("heads", "head_attribution")
    content = json.loads(json.dumps(art.content))  # plain JSON
    blocks = head_blocks(zoo.model)
    n_heads = sum(b.num_heads for b in blocks)
    assert len(content["heads"]) == n_heads == res.record["heads_total"]
    assert len(content["rows"]) == n_heads * len(content["bias"]) and content["split"] == "validation"
    selection = {b: hs for b, hs in content["selected"].items()}
    assert res.record["heads_selected"] == sum(map(len, selection.values())) == 1  # the gap is planted: found
    _assert_scaled(rows, _qkv_rows(res.model), selection, 0.5)
    # the cell's own record follows from the artifact: the selected heads are those with a negative effect
    for s in content["heads"]:
        if s["head"] in selection.get(s["block"], []):
            assert s["effect"] < 0
    assert (res.weight_bits, res.backend) == (32, "fp32")


@pytest.mark.parametrize("kind", ["vit", "bert"])
def test_scaling_touches_exactly_the_selected_heads(kind):
    zoo = _build(kind)
    model = copy.deepcopy(zoo.model)
    blocks = head_blocks(model)
    selection = {blocks[0].name: [1], blocks[-1].name: [0]}
    before = _qkv_rows(model)
    others = {k: v.clone() for k, v in model.state_dict().items()
              if not any(k.startswith(b.name) for b in blocks)}
    scale_heads(blocks, selection, 0.25)
    _assert_scaled(before, _qkv_rows(model), selection, 0.25)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in others.items())
    out_scaled = _outputs(model, zoo.calib)
    # the context manager restores the exact rows
    with heads_scaled(blocks, selection, 0.0):
        silenced = _outputs(model, zoo.calib)
    assert torch.equal(_outputs(model, zoo.calib), out_scaled) and not torch.equal(silenced, out_scaled)
    with pytest.raises(ValueError, match="heads"):
        scale_heads(blocks, {blocks[0].name: [99]}, 0.5)


@pytest.mark.parametrize("kind", ["vit", "bert"])
def test_ablation_silences_the_head_output(kind):
    """q/k/v scaled to 0 → the head's slice of the output projection's input is exactly 0 (= zeroing its columns)."""
    from fairq.compression.core.data import iter_model_inputs
    from fairq.compression.localize.heads import head_activations

    zoo = _build(kind)
    model = copy.deepcopy(zoo.model)
    blocks = head_blocks(model)
    batches = [(a, k, None) for a, k in iter_model_inputs(zoo.calib)]
    with heads_scaled(blocks, {blocks[0].name: [0]}, 0.0):
        acts = head_activations(model, blocks, batches)
    assert np.all(acts[blocks[0].name][:, 0] == 0) and np.all(acts[blocks[0].name][:, 1] > 0)


# ---------------------------------------------------------------- a planted biased head
class _Planted(nn.Module):
    """One timm attention block over 4 tokens of 8 features, mean-pooled into a linear classifier.

    Feature 0 carries the label; feature 1 is the group (0 / 1), which the classifier never reads directly.
    Head 1 copies the group into its output and the projection writes −3·group onto feature 0: group 1 is pushed
    towards class 0 (a group gap). Head 0 copies noise (feature 2) onto feature 3, which nothing reads.
    """

    def __init__(self):
        super().__init__()
        from timm.layers import Attention

        self.attn = Attention(dim=8, num_heads=2, qkv_bias=True)
        self.head = nn.Linear(8, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.zero_()
            v = self.attn.qkv.weight[16:24]     # value rows: head 0 → rows 16..19, head 1 → rows 20..23
            v[0, 2] = 1.0                       # head 0, dim 0 ← noise feature 2
            v[4, 1] = 1.0                       # head 1, dim 0 ← group feature 1
            self.attn.proj.weight[3, 0] = 1.0   # head 0's dim 0 → feature 3 (unread)
            self.attn.proj.weight[0, 4] = -3.0  # head 1's dim 0 → −3 · group onto the label feature
            self.head.weight[1, 0], self.head.weight[0, 0] = 1.0, -1.0

    def forward(self, x):
        return self.head((x + self.attn(x)).mean(1))


def _planted_data(n=400, seed=0, batch=100):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    grp = torch.randint(0, 2, (n,), generator=g)
    other = torch.randint(0, 2, (n,), generator=g)  # an attribute the model ignores
    x = torch.zeros(n, 4, 8)
    x[..., 0] = (2 * y - 1).float()[:, None] * 2.0 + torch.randn(n, 1, generator=g)
    x[..., 1] = grp.float()[:, None]
    x[..., 2] = torch.randn(n, 4, generator=g)
    sens = torch.stack([grp, other], 1)
    return [{"image": x[i:i + batch], "target": y[i:i + batch], "sensitive": sens[i:i + batch]}
            for i in range(0, n, batch)]


def test_attribution_finds_the_planted_biased_head():
    model = _Planted().eval()
    val = _planted_data()
    probe = GroupGapProbe(val, ["group", "other"])
    att = attribute_heads(model, probe)
    assert att.bias["group"] > 0.2  # the planted gap is there
    heads = {s["head"]: s for s in att.summary()}
    assert heads[1]["effect"] < -0.1 and heads[1]["consistency"] >= 0.5
    assert heads[0]["effect"] == 0.0  # head 0's output is never read: ablating it changes nothing
    group = {r["head"]: r for r in att.rows if r["category"] == "group"}
    # head 1's activation is larger on the disadvantaged group: negative r with the gap contributions
    assert group[1]["correlation"] < -0.5 and abs(group[1]["correlation"]) > abs(group[0]["correlation"])
    for rank_by in ("ablation", "correlation"):
        assert select_heads(att, 1, rank_by=rank_by) == {"attn": [1]}
    # the per-sample contributions sum to the gap they are defined on
    res = probe.measure(model)
    assert np.nansum(res.scores["group"]) == pytest.approx(res.bias["group"], abs=1e-6)


def test_soft_pruning_attenuates_the_planted_head_and_alpha_zero_changes_nothing():
    model = _Planted().eval()
    val, test = _planted_data(seed=0), _planted_data(seed=1)
    before = _qkv_rows(model)
    outs = {}
    for alpha in (0.0, 0.5, 1.0):
        res = compress(model, make_config("soft_head_pruning", alpha=alpha), MethodInputs(validation=val))
        assert res.record["selected_heads"] == "attn:1"
        _assert_scaled(before, _qkv_rows(res.model), {"attn": [1]}, 1.0 - alpha)
        outs[alpha] = res
    assert torch.equal(_outputs(outs[0.0].model, test), _outputs(model, test))  # α = 0: the same function
    gap = {a: GroupGapProbe(test, ["group", "other"]).measure(r.model).bias["group"] for a, r in outs.items()}
    assert gap[1.0] < gap[0.5] < gap[0.0]  # measured on other samples than the selection's
    assert outs[1.0].record["val_bias_after"] < outs[1.0].record["val_bias_before"]


def test_a_utility_budget_leaves_out_heads_the_model_cannot_do_without():
    from fairq.compression.localize.heads import HeadAttribution

    def row(block, head, d_bias, d_util):
        return {"layer": int(block[-1]), "block": block, "head": head, "category": "c", "bias_before": 1.0,
                "bias_ablated": 1.0 + d_bias, "delta_bias": d_bias, "delta_utility": d_util, "correlation": 0.0}

    att = HeadAttribution([row("b0", 0, -0.5, -0.4), row("b0", 1, -0.1, -0.01), row("b1", 0, 0.2, 0.0)],
                          {"c": 1.0}, 0.9, "gap", "accuracy", [])
    assert select_heads(att, 1) == {"b0": [0]}  # the largest effect, whatever it costs
    assert select_heads(att, 1, max_utility_drop=0.05) == {"b0": [1]}
    assert select_heads(att, 2, max_utility_drop=0.001) == {}
    with pytest.raises(ValueError, match="max_utility_drop"):
        make_config("soft_head_pruning", max_utility_drop=-1)


def test_no_qualifying_head_leaves_the_model_unchanged():
    model = _Planted().eval()
    with torch.no_grad():
        model.attn.proj.weight[0, 4] = 0.0  # nothing planted any more
    val = _planted_data()
    res = compress(model, make_config("soft_head_pruning", alpha=1.0), MethodInputs(validation=val))
    assert res.record["heads_selected"] == 0 and res.artifacts[0].content["selected"] == {}
    assert torch.equal(_outputs(res.model, val), _outputs(model, val))


def test_an_alpha_sweep_attributes_once(monkeypatch):
    import fairq.compression.localize.heads as heads

    calls = []
    real = heads.attribute_heads
    monkeypatch.setattr(heads, "attribute_heads", lambda *a, **k: calls.append(1) or real(*a, **k))
    heads._CACHE.clear()
    model, val = _Planted().eval(), _planted_data()
    for alpha in (0.25, 0.75):
        compress(model, make_config("soft_head_pruning", alpha=alpha), MethodInputs(validation=val))
    assert len(calls) == 1
    other = _planted_data(seed=5)  # other validation data: attributed again
    compress(model, make_config("soft_head_pruning", alpha=0.25), MethodInputs(validation=other))
    assert len(calls) == 2
    heads._CACHE.clear()


def test_recovery_finetune_keeps_the_selected_heads_scaled():
    zoo = _build("vit")
    val = _with_groups(zoo.val)
    cfg = make_config("soft_head_pruning", alpha=0.5, min_consistency=0.0, n_heads=4, finetune_epochs=1,
                      finetune_lr=1e-2)
    plain = compress(zoo.model, make_config("soft_head_pruning", alpha=0.5, min_consistency=0.0, n_heads=4),
                     MethodInputs(validation=val))
    tuned = compress(zoo.model, cfg, MethodInputs(validation=val, train_loader=zoo.train))
    assert tuned.record["finetune_steps"] == len(zoo.train)
    selection = plain.artifacts[0].content["selected"]
    assert selection == tuned.artifacts[0].content["selected"]
    a, b = _qkv_rows(plain.model), _qkv_rows(tuned.model)
    for (block, i, h), (w, bias) in a.items():
        if h in selection.get(block, []):
            assert torch.equal(b[(block, i, h)][0], w), (block, i, h)
    assert not torch.equal(_outputs(tuned.model, zoo.calib), _outputs(plain.model, zoo.calib))


# ---------------------------------------------------------------- config, sweep, phase needs
def test_config_validates_sweeps_alpha_and_uses_training_only_to_finetune():
    with pytest.raises(ValueError, match="alpha"):
        make_config("soft_head_pruning", alpha=1.5)
    with pytest.raises(ValueError, match="rank_by"):
        make_config("soft_head_pruning", rank_by="magnitude")
    with pytest.raises(ValueError, match="takes no bits"):
        make_config("soft_head_pruning", 4)
    cells = plan_section("quantization", QuantizationSection(methods=[
        {"method": "soft_head_pruning", "alpha": [0.0, 0.5, 1.0], "models": ["tiny_vit"]}]))
    assert [c.config.variant() for c in cells] == ["alpha=0", "alpha=0.5", "alpha=1"]
    assert all(c.runs_on("tiny_vit") and not c.runs_on("tiny_cnn") for c in cells)
    needs = get_method("soft_head_pruning").needs
    assert cells[0].config.uses(needs) == {"validation"}
    assert make_config("soft_head_pruning", finetune_epochs=1).uses(needs) == {"validation", "training"}
    with pytest.raises(ConfigError, match="models"):
        plan_section("quantization", QuantizationSection(methods=[{"method": "soft_head_pruning", "models": [3]}]))


# ---------------------------------------------------------------- text: held-out items and the probe
def _write_items(root, n_intra=60, n_crows=30):
    from test_text_pipeline import _sent

    intra = []
    doms = ("gender", "profession", "race", "religion")
    for i in range(n_intra):
        eid = f"i{i}"
        t = ("man", "doctor", "italian", "christian")[i % 4]
        intra.append({"id": eid, "target": t, "bias_type": doms[i % 4], "context": f"The {t} number {i} is BLANK.",
                      "sentences": [_sent(eid, "stereotype", f"The {t} number {i} is tall."),
                                    _sent(eid, "anti-stereotype", f"The {t} number {i} is short."),
                                    _sent(eid, "unrelated", f"The {t} number {i} is table.")]})
    (root / "stereoset_dev.json").write_text(json.dumps({"version": "t", "data": {"intrasentence": intra,
                                                                                  "intersentence": []}}))
    import pandas as pd

    pd.DataFrame({"sent_more": [f"The man {i} is tall." for i in range(n_crows)],
                  "sent_less": [f"The woman {i} is tall." for i in range(n_crows)],
                  "stereo_antistereo": ["stereo"] * n_crows,
                  "bias_type": [("gender", "age")[i % 2] for i in range(n_crows)]}).to_csv(
        root / "crows_pairs_anonymized.csv")


def _dm(root, **kw):
    from datamodules.text import TextDataModule

    args = dict(root=str(root), intersentence=False, bbq=False, probes=False, stereoset_items=12, crows_items=10)
    args.update(kw)
    return TextDataModule(**args)


def test_text_validation_items_never_overlap_the_scored_items(tmp_path):
    _write_items(tmp_path)
    dm = _dm(tmp_path)
    dm.setup()
    for bench in ("stereoset", "crows"):
        scored = {it.id for it in dm.items[bench]}
        held = {it.id for it in dm.heldout[bench]}
        assert held and not scored & held, bench
        assert len(scored | held) == (60 if bench == "stereoset" else 30)  # the rest of the pool
    # the scored subset is the same with or without validation items
    plain = _dm(tmp_path, validation_items=0)
    plain.setup()
    assert [it.id for it in plain.items["stereoset"]] == [it.id for it in dm.items["stereoset"]]
    assert plain.heldout == {"stereoset": [], "crows": []}
    assert dm.describe()["validation_items"] == {"stereoset": 48, "crows": 20}
    # everything scored: no validation, a clear error when a method asks for it
    full = _dm(tmp_path, stereoset_items=None, crows_items=None)
    full.setup()
    from fairq.text.models import bert_uncased_tokenizer
    from fairq.text.probe import NoValidationItemsError

    full.set_tokenizer(bert_uncased_tokenizer())
    with pytest.raises(NoValidationItemsError, match="scored as test"):
        full.val_dataloader().bias_probe()


def test_text_probe_scores_held_out_items_per_category(tmp_path):
    from fairq.text.embedded import TinyBertSpec, build_tiny_bert
    from fairq.text.models import bert_uncased_tokenizer

    _write_items(tmp_path)
    tok = bert_uncased_tokenizer()
    dm = _dm(tmp_path)
    dm.set_tokenizer(tok)
    val = dm.val_dataloader()
    assert len(val) and "input_ids" in val[0]  # still the sentence batches other methods read
    probe = val.bias_probe()
    torch.manual_seed(0)
    model = build_tiny_bert(TinyBertSpec(hidden_size=16, intermediate_size=32, num_heads=2), len(tok)).eval()
    res = probe.measure(model)
    assert set(res.bias) == {"stereoset:gender", "stereoset:profession", "stereoset:race", "stereoset:religion",
                             "crows:age", "crows:gender"} - {c for c in res.bias if False}
    assert all(0 <= v <= 50 for v in res.bias.values()) and res.utility_name == "stereoset_lms"
    n = len(probe.ids)
    for cat, s in res.scores.items():
        assert len(s) == n and np.isfinite(s).sum() >= 5
    # every item in exactly one category
    assert (np.isfinite(np.vstack(list(res.scores.values()))).sum(0) <= 1).all()
    att = cached_attribution(model, probe)
    assert len(att.rows) == 4 * len(res.bias) and all(np.isfinite(r["delta_bias"]) for r in att.rows)


# ---------------------------------------------------------------- through the phases and analysis
@pytest.fixture(scope="module")
def soft_run(tmp_path_factory):
    import os

    from fairq.cli import main
    from test_engine_seams import TINY

    root = tmp_path_factory.mktemp("soft")
    os.environ.setdefault("FAIRQ_CACHE", str(root / "cache"))
    out = root / "run"
    methods = [{"method": "soft_head_pruning", "alpha": [0.5, 1.0], "models": ["tiny_vit"]}]
    args = ["--output_dir", str(out), *TINY, "--models", "[tiny_cnn, tiny_vit]",
            "--quantization.methods", json.dumps(methods)]
    for phase in ("baseline", "quantization"):
        assert main(["--phase", phase, *args]) == 0
    assert main(["--phase", "analysis", *args, "--analysis.figures", "true"]) == 0
    return out


def test_soft_pruning_cells_run_on_attention_models_only_and_store_the_attribution(soft_run):
    import pandas as pd

    m = pd.read_csv(soft_run / "metrics.csv", keep_default_na=False)
    soft = m[m["method"] == "soft_head_pruning"]
    assert set(soft["model"]) == {"tiny_vit"} and sorted(soft["variant"]) == ["alpha=0.5", "alpha=1"]
    assert set(soft["family"]) == {"soft_pruning"} and (soft["alpha"].astype(float).isin([0.5, 1.0])).all()
    for _, r in soft.iterrows():
        art = json.loads((soft_run / r["head_attribution"]).read_text())
        assert art["split"] == "validation" and art["alpha"] == float(r["alpha"])
        assert {c for c in art["bias"]} == {"Male", "Young", "intersectional"}
    # one attribution for the sweep: both cells hold the same table
    a, b = (json.loads((soft_run / p).read_text())["rows"] for p in soft["head_attribution"])
    assert a == b
    # selected on validation, measured on test: no sample in both
    for _, r in soft.iterrows():
        val_ids = set(json.loads((soft_run / r["head_attribution"]).read_text())["item_ids"])
        test_ids = set(pd.read_parquet(soft_run / r["predictions"])["sample_id"])
        assert len(val_ids) >= 30 and len(test_ids) >= 100 and not val_ids & test_ids


def test_analysis_draws_the_heatmap_and_the_alpha_tradeoff_from_the_deltas(soft_run):
    import pandas as pd

    att = pd.read_csv(soft_run / "tables" / "head_attribution.csv")
    assert len(att) == 2 * 4 * 3 and set(att["head"]) == {0, 1} and set(att["layer"]) == {0, 1}  # 2 cells × 4 heads
    trade = pd.read_csv(soft_run / "tables" / "soft_pruning_tradeoff.csv")
    deltas = pd.read_csv(soft_run / "tables" / "deltas.csv")
    assert sorted(trade["alpha"].unique()) == [0.0, 0.5, 1.0]
    assert set(trade["metric"]) == {"accuracy", "worst_group_accuracy", "demographic_parity_difference",
                                    "equalized_odds_difference"}
    assert set(trade["group"]) == {"all"} and trade["attributes"].nunique() == 1
    pts = trade[trade["alpha"] > 0].merge(deltas, on=["cell", "attributes", "group", "metric"], suffixes=("", "_d"))
    assert len(pts) == 2 * 4 and np.allclose(pts["value"], pts["value_d"]) and np.allclose(
        pts["p_adjusted"].astype(float), pts["p_adjusted_d"].astype(float), equal_nan=True)
    assert (soft_run / "figures" / "heads_synthetic_tiny_vit.png").is_file()
    assert (soft_run / "figures" / "soft_pruning_synthetic_tiny_vit.png").is_file()
    report = (soft_run / "report.html").read_text()
    assert "Soft head pruning: attribution and trade-off" in report and "data:image/png;base64," in report


def test_text_soft_pruning_selects_on_held_out_items_and_is_scored_on_the_others(tmp_path, monkeypatch):
    import pandas as pd

    from fairq.cli import main
    from test_text_pipeline import CONFIG

    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "cache"))
    _write_items(tmp_path)
    out = tmp_path / "run"
    data = {"root": str(tmp_path), "intersentence": False, "bbq": False, "probes": False, "stereoset_items": 12,
            "crows_items": 10, "validation_items": 100}
    args = ["--config", str(CONFIG), "--output_dir", str(out), "--data.init_args", json.dumps(data),
            '--text={"model": "fairq-tiny-bert", "pretrain": {"steps": 10, "batch_size": 16, "n_sentences": 200, '
            '"hidden_size": 16, "intermediate_size": 32, "negatives": 64}}',
            "--evaluation.progress", "false", "--evaluation.latency_repeats", "1",
            "--quantization.methods", json.dumps([{"method": "soft_head_pruning", "alpha": [0.5, 1.0]}]),
            '--analysis={"n_bootstrap": 30}']
    assert main(["--phase", "all", *args]) == 0
    m = pd.read_csv(out / "metrics.csv", keep_default_na=False)
    soft = m[m["method"] == "soft_head_pruning"]
    assert sorted(soft["variant"]) == ["alpha=0.5", "alpha=1"]
    for _, r in soft.iterrows():
        art = json.loads((out / r["head_attribution"]).read_text())
        assert set(art["bias"]) == {"stereoset:gender", "stereoset:profession", "stereoset:race",
                                    "stereoset:religion", "crows:age", "crows:gender"}
        scored = set(pd.read_parquet(out / r["predictions"])["sample_id"])
        assert len(art["item_ids"]) == 48 + 20 and len(scored) == 12 + 10 and not scored & set(art["item_ids"])
    trade = pd.read_csv(out / "tables" / "soft_pruning_tradeoff.csv")
    assert sorted(trade["alpha"].unique()) == [0.0, 0.5, 1.0]
    assert {"stereoset_intra_ss", "crows_metric", "stereoset_intra_lms"} <= set(trade["metric"])
    scores = pd.read_csv(out / "tables" / "text_scores.csv")
    pts = trade[trade["alpha"] > 0].merge(scores, on=["cell", "metric"], suffixes=("", "_s"))
    assert len(pts) and np.allclose(pts["value"], pts["value_s"]) and pts["p_adjusted"].notna().all()
    assert list((out / "figures").glob("heads_*.png")) and list((out / "figures").glob("soft_pruning_*.png"))
    assert "Soft head pruning" in (out / "report.html").read_text()
