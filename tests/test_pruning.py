"""Pruning methods: every registered ``family="pruning"`` method × {tiny CNN, tiny ViT, tiny BERT} (shapes, forward,
serialization round trip, records), the sparsity audit, tied weights, sparse sizes and pruning + quantization.

The method × model tests are generated from the registry: registering a pruning method adds its tests.
"""
import copy
import io

import pytest
import torch
from torch import nn

from fairq.compression import (
    METHODS, MethodInputs, compress, effective_weights, layer_bits, load_sparse, make_config, model_size,
    save_sparse, sparsity_audit,
)
from fairq.compression.core.measure import serialized_bytes
from fairq.compression.core.registry import get_method
from fairq.errors import ConfigError
from fairq.sections import QuantizationSection, plan_section
from test_compression import _build, _outputs, _tiny_bert

PRUNING_METHODS = sorted(m for m in METHODS if get_method(m).family == "pruning")
#: options each pruning method is tested with, and the tiny models it does not apply to (a clear error there).
OPTIONS = {"magnitude_prune": {"sparsity": 0.5}, "channel_prune": {"ratio": 0.5}, "head_prune": {"ratio": 0.5}}
UNSUPPORTED = {"head_prune": ("cnn",)}


@pytest.fixture(scope="module", params=["cnn", "vit", "bert"])
def zoo(request):
    return _build(request.param)


def _inputs(zoo):
    return MethodInputs(calibration=zoo.calib, validation=zoo.val, train_loader=zoo.train)


def _audit(model, target: float, layers=None, scope: str = "layer") -> dict:
    """Assert the measured zeros match ``target``: per layer (``layer``) or over all audited weights (``global``),
    to one weight (``torch.nn.utils.prune`` rounds the count)."""
    audit = sparsity_audit(model, None if layers is None else {n: model.get_submodule(n).weight for n in layers})
    assert audit, "nothing audited"
    if scope == "layer":
        for name, a in audit.items():
            assert abs(a["sparsity"] - target) <= 1.0 / a["numel"] + 1e-12, f"{name}: {a['sparsity']:.4f} ≠ {target}"
    else:
        n = sum(a["numel"] for a in audit.values())
        got = sum(a["zeros"] for a in audit.values()) / n
        assert abs(got - target) <= 1.0 / n + 1e-12, f"global sparsity {got:.4f} ≠ {target}"
    return audit


# ---------------------------------------------------------------- registry-generated: method × model
def test_pruning_methods_are_registered():
    assert {"magnitude_prune", "channel_prune", "head_prune"} <= set(PRUNING_METHODS)
    assert set(OPTIONS) == set(PRUNING_METHODS), "give every pruning method its test options"


@pytest.mark.parametrize("method", PRUNING_METHODS)
def test_every_pruning_method_on_every_tiny_model(zoo, method):
    cfg = make_config(method, **OPTIONS[method])
    if zoo.kind in UNSUPPORTED.get(method, ()):
        with pytest.raises(ValueError):
            compress(zoo.model, cfg, _inputs(zoo))
        return
    before = {k: v.clone() for k, v in zoo.model.state_dict().items()}
    result = compress(zoo.model, cfg, _inputs(zoo))
    q = result.model
    assert all(torch.equal(v, zoo.model.state_dict()[k]) for k, v in before.items()), "input model mutated"
    fp, out = _outputs(zoo.model, zoo.calib), _outputs(q, zoo.calib)
    assert out.shape == fp.shape and torch.isfinite(out).all()
    assert (out - fp).abs().max() > 0, "pruned outputs identical to the dense model's"
    rec = result.record
    assert 0 < rec["sparsity"] < 1 and rec["params"] > 0 and rec["flops"] > 0
    assert rec["nonzero_params"] < sum(p.numel() for p in zoo.model.parameters())
    assert result.artifacts and result.artifacts[0].folder == "pruning"
    # really smaller on disk, and the serialization round trip in the format the size was measured from
    size_mb, kind = model_size(q, result.size_format)
    assert size_mb < model_size(zoo.model)[0]
    buf = io.BytesIO()
    if kind == "sparse_serialized":
        save_sparse(q, buf)
        buf.seek(0)
        state = load_sparse(buf)
    else:
        torch.save(q.state_dict(), buf)
        buf.seek(0)
        state = torch.load(buf, weights_only=True)
    assert size_mb == pytest.approx(buf.getbuffer().nbytes / 2**20)
    fresh = copy.deepcopy(q)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict(state)
    assert torch.equal(_outputs(fresh, zoo.calib), out)


# ---------------------------------------------------------------- the sparsity audit
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_prune_audit_every_sparsity(zoo, scope):
    for target in (0.3, 0.5, 0.7, 0.9):
        result = compress(zoo.model, make_config("magnitude_prune", sparsity=target, scope=scope), _inputs(zoo))
        layers = list(result.artifacts[0].content["layers"])
        _audit(result.model, target, layers, scope)
        assert result.record["sparsity"] == pytest.approx(target, abs=1e-3)
        # the smallest magnitudes went: every kept weight of a layer is ≥ every pruned weight of it
        for name in layers:
            w, orig = result.model.get_submodule(name).weight, zoo.model.get_submodule(name).weight
            kept, gone = orig[w != 0].abs(), orig[w == 0].abs()
            if scope == "layer" and gone.numel() and kept.numel():
                assert kept.min() >= gone.max()


def test_the_audit_catches_a_model_that_is_not_as_sparse_as_claimed(monkeypatch):
    zoo = _build("cnn")
    from torch.nn.utils import prune

    real = prune.l1_unstructured
    # a "50 %" model whose first layer was silently left dense
    calls = []
    monkeypatch.setattr(prune, "l1_unstructured", lambda m, n, amount: calls.append(m) or (
        real(m, n, amount=0.0) if len(calls) == 1 else real(m, n, amount=amount)))
    result = compress(zoo.model, make_config("magnitude_prune", sparsity=0.5), _inputs(zoo))
    with pytest.raises(AssertionError, match="≠ 0.5"):
        _audit(result.model, 0.5, list(result.artifacts[0].content["layers"]))
    assert result.record["sparsity"] < 0.5  # and the record says what was measured, not what was asked


def test_layer_scope_prunes_each_layer_global_ranks_them_together():
    zoo = _build("cnn")
    lay = compress(zoo.model, make_config("magnitude_prune", sparsity=0.7), _inputs(zoo)).artifacts[0].content
    glo = compress(zoo.model, make_config("magnitude_prune", sparsity=0.7, scope="global"),
                   _inputs(zoo)).artifacts[0].content
    per_layer = [a["sparsity"] for a in glo["layers"].values()]
    assert max(per_layer) - min(per_layer) > 0.1, "global scope gave every layer the same sparsity"
    assert all(abs(a["sparsity"] - 0.7) < 0.01 for a in lay["layers"].values())


def test_tied_weights_are_pruned_once_and_stay_tied():
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=32)
    mlm = transformers.BertForMaskedLM(cfg).eval()
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight
    batch = [dict(input_ids=torch.randint(0, 64, (4, 12)), attention_mask=torch.ones(4, 12, dtype=torch.long))]
    for scope in ("layer", "global"):
        res = compress(mlm, make_config("magnitude_prune", sparsity=0.6, scope=scope), MethodInputs(calibration=batch))
        q = res.model
        assert q.cls.predictions.decoder.weight is q.bert.embeddings.word_embeddings.weight
        assert res.record["tied_weights"] == 1
        assert res.artifacts[0].content["tied"] == {
            "cls.predictions.decoder.weight": ["bert.embeddings.word_embeddings.weight"]}
        layers = res.artifacts[0].content["layers"]
        assert sum("word_embeddings" in n or "decoder" in n for n in layers) == 1, "tied tensor audited twice"
        _audit(q, 0.6, list(layers), scope)
        # the sparse file keeps the tie: one tensor stored, both names read back sharing it
        buf = io.BytesIO()
        save_sparse(q, buf)
        buf.seek(0)
        state = load_sparse(buf)
        assert state["cls.predictions.decoder.weight"] is state["bert.embeddings.word_embeddings.weight"]


# ---------------------------------------------------------------- sizes
def test_sparse_size_is_a_real_file_smaller_than_dense(zoo):
    dense = serialized_bytes(zoo.model)
    sizes = {}
    for target in (0.3, 0.7, 0.9):
        res = compress(zoo.model, make_config("magnitude_prune", sparsity=target), _inputs(zoo))
        mb, kind = model_size(res.model, res.size_format)
        assert kind == "sparse_serialized"
        sizes[target] = mb * 2**20
        # bitmask format: a pruned FP32 weight of n entries takes n/8 bytes of mask + 4 per kept entry instead of
        # 4n; the file must save all of that but the framing of a second stored array per layer (≤ 512 bytes)
        layers = res.artifacts[0].content["layers"]
        saved = sum(4 * w.numel() - ((w.numel() + 7) // 8 + 4 * int((w != 0).sum()))
                    for w in (res.model.get_submodule(n).weight for n in layers))
        assert dense - sizes[target] >= saved - 512 * len(layers) > 0
    assert sizes[0.9] < sizes[0.7] < sizes[0.3] < dense


# ---------------------------------------------------------------- pruning then quantization, one cell
def test_prune_then_ptq_is_one_cell_with_both_recorded(zoo):
    cfg = make_config("magnitude_prune", sparsity=0.5, then={"method": "ptq_static", "bits": 4})
    assert (cfg.bits, cfg.act_bits) == (4, 8) and cfg.variant() == "sparsity=0.5_then=ptq_static"
    res = compress(zoo.model, cfg, _inputs(zoo))
    q = res.model
    assert (res.weight_bits, res.act_bits, res.backend) == (4, 8, "simulated")
    assert res.record["then_method"] == "ptq_static"
    bits = layer_bits(q)
    eff = effective_weights(q)
    layers = list(res.artifacts[0].content["layers"])
    assert all(bits[n] == 4 for n in layers if n in bits)
    for n in layers:  # zeros survive quantization (symmetric codes: 0 ↦ 0), ≤ 16 levels per channel
        w = eff[n]
        assert abs(float((w == 0).float().mean()) - 0.5) <= 1.0 / w.numel() + 1e-12, n
        assert max(int(torch.unique(r).numel()) for r in w.reshape(w.shape[0], -1)) <= 16
    # the graph simulation keeps its codes in the traced program: its size is the dense packed estimate, honestly
    # labelled so; on the per-layer-input simulation the bit mask + nonzero codes are measured and smaller
    mb, kind = model_size(q, res.size_format)
    plain4 = compress(zoo.model, make_config("ptq_static", 4, backend="simulated"), _inputs(zoo)).model
    assert kind == "packed_estimate" and mb == pytest.approx(model_size(plain4)[0], rel=0.05)
    cfg_li = make_config("magnitude_prune", sparsity=0.5,
                         then={"method": "ptq_static", "bits": 4, "simulation": "layer_input"})
    res_li = compress(zoo.model, cfg_li, _inputs(zoo))
    q_li = res_li.model
    plain_li = compress(zoo.model, make_config("ptq_static", 4, backend="simulated", simulation="layer_input"),
                        _inputs(zoo)).model
    mb_li, kind_li = model_size(q_li, res_li.size_format)
    assert kind_li == "sparse_packed_estimate" and mb_li < model_size(plain_li)[0]


def test_prune_config_validates_and_sweeps():
    with pytest.raises(ValueError, match="sparsity"):
        make_config("magnitude_prune", sparsity=1.0)
    with pytest.raises(ValueError, match="scope"):
        make_config("magnitude_prune", scope="row")
    with pytest.raises(ValueError, match="no bits"):
        make_config("magnitude_prune", 4)
    with pytest.raises(ValueError, match="needs"):
        make_config("magnitude_prune", then={"method": "qat", "bits": 4})
    section = QuantizationSection(methods=[
        {"method": "magnitude_prune", "sparsity": [0.3, 0.5, 0.7], "then": {"method": "ptq_static", "bits": 4}}])
    cells = plan_section("quantization", section)
    assert [c.config.sparsity for c in cells] == [0.3, 0.5, 0.7] and {c.family for c in cells} == {"pruning"}
    assert len({c.config.variant() for c in cells}) == 3
    with pytest.raises(ConfigError, match="obsever"):
        plan_section("quantization", QuantizationSection(methods=[
            {"method": "magnitude_prune", "then": {"method": "ptq_static", "obsever": "mse"}}]))


# ---------------------------------------------------------------- structured pruning
def test_channel_prune_handles_residual_coupling_and_shrinks_a_resnet():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=2).eval()
    x = [torch.randn(4, 3, 32, 32)]
    val = [(torch.randn(8, 3, 32, 32), torch.randint(0, 2, (8,)))]
    res = compress(model, make_config("channel_prune", ratio=0.5), MethodInputs(calibration=x, validation=val))
    q = res.model
    with torch.no_grad():
        assert q(x[0]).shape == (4, 2)
    # residual adds need equal widths on both branches: DepGraph pruned them together
    for block in (q.layer1[0], q.layer2[1], q.layer4[1]):
        assert block.conv2.out_channels == block.bn2.num_features
    assert q.layer1[0].conv2.out_channels == q.conv1.out_channels == 32  # 64 → 32, coupled through the adds
    assert q.fc.out_features == 2 and q.fc.in_features == 256
    dense, small = serialized_bytes(model), serialized_bytes(q)
    assert small < 0.35 * dense  # both in and out channels halve: ≈ a quarter of the conv weights
    assert res.record["params"] == sum(p.numel() for p in q.parameters())
    dense_params = sum(p.numel() for p in model.parameters())
    assert res.record["sparsity"] == pytest.approx(1 - res.record["params"] / dense_params)
    from fairq.compression import count_flops

    assert res.record["flops"] < 0.35 * count_flops(model, x)


def test_channel_prune_measured_importance_uses_the_validation_split():
    zoo = _build("cnn")
    plans = {}
    for imp in ("magnitude", "taylor"):
        res = compress(zoo.model, make_config("channel_prune", ratio=0.5, importance=imp), _inputs(zoo))
        plans[imp] = res.model
    with pytest.raises(ValueError, match="validation"):
        compress(zoo.model, make_config("channel_prune", importance="taylor"), MethodInputs(calibration=zoo.calib))
    w_mag, w_tay = plans["magnitude"].features[0][0].weight, plans["taylor"].features[0][0].weight
    assert w_mag.shape == w_tay.shape and not torch.equal(w_mag, w_tay), "taylor picked the magnitude channels"


@pytest.mark.parametrize("kind", ["vit", "bert"])
def test_channel_prune_on_transformers_removes_mlp_hidden_units_only(kind):
    zoo = _build(kind)
    res = compress(zoo.model, make_config("channel_prune", ratio=0.5), _inputs(zoo))
    changed = res.artifacts[0].content["channels"]
    # BERT's pooler (dense → tanh → classifier) has hidden units of its own
    mlp = {"vit": ("mlp.fc1",), "bert": ("intermediate.dense", "pooler.dense")}[kind]
    assert changed and all(n.endswith(mlp) and after == before // 2 for n, (before, after) in changed.items())
    assert sum(n.endswith(mlp[0]) for n in changed) == 2  # both blocks' MLPs
    assert _blocks_shapes(res.model) == _blocks_shapes(zoo.model)  # attention untouched


def _blocks_shapes(model):
    from fairq.compression.prune.structured import attention_blocks

    # q/k/v rows over the distinct projections (timm: one fused qkv Linear; BERT: three)
    return [(b.num_heads, b.head_dim, sum({id(lin): lin.out_features for _, lin, _ in b.producers()}.values()),
             b.out.in_features) for b in attention_blocks(model)]


@pytest.mark.parametrize("kind", ["vit", "bert"])
def test_head_prune_removes_heads_physically_and_exactly(kind):
    """A head that contributes nothing (zero output columns, tiny q/k/v) is the one removed, and removing it
    leaves the model's function unchanged: the cut rows/columns are the right ones."""
    from fairq.compression.prune.structured import attention_blocks

    zoo = _build(kind)
    model = copy.deepcopy(zoo.model)
    dead = {}
    with torch.no_grad():
        for i, b in enumerate(attention_blocks(model)):
            h, d = i % b.num_heads, b.head_dim
            dead[b.name] = h
            b.out.weight[:, h * d:(h + 1) * d] = 0
            for _, lin, off in b.producers():
                lin.weight[off + h * d: off + (h + 1) * d] *= 1e-3
    before = _blocks_shapes(model)
    res = compress(model, make_config("head_prune", ratio=0.5), _inputs(zoo))
    plan = res.artifacts[0].content["heads"]
    assert {name: p["removed"] for name, p in plan.items()} == {name: [h] for name, h in dead.items()}
    after = _blocks_shapes(res.model)
    for (h0, d0, prod0, out0), (h1, d1, prod1, out1) in zip(before, after):
        assert (h1, d1) == (h0 - 1, d0) and out1 == out0 - d0
        assert prod1 == prod0 - 3 * d0  # q, k and v each lost one head's rows
    assert torch.allclose(_outputs(res.model, zoo.calib), _outputs(model, zoo.calib), atol=1e-5)
    assert serialized_bytes(res.model) < serialized_bytes(model)
    assert (res.record["heads_before"], res.record["heads_after"]) == (2 * len(dead), len(dead))


def test_head_prune_ablation_importance_is_measured_on_validation():
    from fairq.compression.prune.structured import attention_blocks, head_importance

    zoo = _build("vit")
    model = copy.deepcopy(zoo.model)
    blocks = attention_blocks(model)
    with torch.no_grad():
        blocks[0].out.weight[:, :blocks[0].head_dim] = 0  # head 0 of block 0 contributes nothing
    scores = head_importance(model, blocks, "ablation", zoo.val)
    assert scores[blocks[0].name][0] == 0.0  # silencing a silent head changes no loss
    assert any(float(s.abs().max()) > 0 for s in scores.values())
    with pytest.raises(ValueError, match="validation"):
        head_importance(model, blocks, "ablation", None)


# ---------------------------------------------------------------- fine-tuning after pruning
def test_finetuning_a_magnitude_pruned_model_keeps_its_zeros(zoo):
    plain = compress(zoo.model, make_config("magnitude_prune", sparsity=0.7), _inputs(zoo))
    tuned = compress(zoo.model, make_config("magnitude_prune", sparsity=0.7, finetune_epochs=2, finetune_lr=1e-2),
                     _inputs(zoo))
    assert tuned.record["finetune_steps"] == 2 * len(zoo.train) and "finetune_steps" not in plain.record
    layers = list(tuned.artifacts[0].content["layers"])
    _audit(tuned.model, 0.7, layers)  # the masks held through training
    for n in layers:
        a, b = plain.model.get_submodule(n).weight, tuned.model.get_submodule(n).weight
        assert torch.equal(a == 0, b == 0), f"{n}: fine-tuning moved the mask"
    assert any(not torch.equal(plain.model.get_submodule(n).weight, tuned.model.get_submodule(n).weight)
               for n in layers), "fine-tuning changed no weight"


@pytest.mark.parametrize("method", ["channel_prune", "head_prune"])
def test_structured_pruning_can_fine_tune_the_smaller_model(method):
    zoo = _build("cnn" if method == "channel_prune" else "vit")
    plain = compress(zoo.model, make_config(method, ratio=0.5), _inputs(zoo)).model
    res = compress(zoo.model, make_config(method, ratio=0.5, finetune_epochs=1, finetune_lr=1e-2), _inputs(zoo))
    assert res.record["finetune_steps"] == len(zoo.train)
    assert [p.shape for p in res.model.parameters()] == [p.shape for p in plain.parameters()]
    assert not torch.equal(_outputs(res.model, zoo.calib), _outputs(plain, zoo.calib))
    with pytest.raises(ValueError, match="training data"):
        compress(zoo.model, make_config(method, ratio=0.5, finetune_epochs=1),
                 MethodInputs(calibration=zoo.calib, validation=zoo.val))


def test_prune_then_real_int8_keeps_the_zeros():
    zoo = _build("cnn")
    res = compress(zoo.model, make_config("magnitude_prune", sparsity=0.5, then={"method": "ptq_static", "bits": 8}),
                   _inputs(zoo))
    assert res.backend == "int8" and res.record["then_method"] == "ptq_static"
    layers = res.artifacts[0].content["layers"]
    assert all(abs(a["after_then"] - 0.5) <= 1.0 / a["numel"] for a in layers.values())  # read from int8 weights
    assert res.size_format == "dense" and model_size(res.model, res.size_format)[1] == "serialized"  # packed int8
    # kernels: no sparse format claimed


def test_param_and_flop_counts_from_first_principles():
    from fairq.compression import count_flops, count_params

    lin = nn.Sequential(nn.Linear(16, 4, bias=False))
    with torch.no_grad():
        lin[0].weight[:2] = 0
    assert count_params(lin) == {"params": 64, "nonzero_params": 32}
    assert count_flops(lin, torch.randn(3, 16)) == 2 * 16 * 4  # per sample: one multiply-add per weight
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    assert count_flops(conv, torch.randn(2, 3, 10, 10)) == 2 * 3 * 8 * 9 * 10 * 10
    emb = nn.Embedding(10, 4)
    tied = nn.ModuleDict({"a": emb, "b": nn.Linear(4, 10, bias=False)})
    tied["b"].weight = emb.weight
    assert count_params(tied)["params"] == 40  # one tensor under two names counts once
