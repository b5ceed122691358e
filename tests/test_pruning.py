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
from fairq.compression.measure import serialized_bytes
from fairq.compression.registry import get_method
from fairq.errors import ConfigError
from fairq.sections import QuantizationSection, plan_section
from test_compression import _build, _outputs, _tiny_bert

PRUNING_METHODS = sorted(m for m in METHODS if get_method(m).family == "pruning")
#: options each pruning method is tested with, and the tiny models it does not apply to (a clear error there).
OPTIONS = {"magnitude_prune": {"sparsity": 0.5}}
UNSUPPORTED = {}


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
    assert {"magnitude_prune"} <= set(PRUNING_METHODS)
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
    assert result.artifacts and result.artifacts[0].column == "sparsity_audit"
    # serialization round trip in the format the size was measured from
    size_mb, kind = model_size(q)
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
        mb, kind = model_size(res.model)
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
    mb, kind = model_size(q)
    plain4 = compress(zoo.model, make_config("ptq_static", 4, backend="simulated"), _inputs(zoo)).model
    assert kind == "sparse_packed_estimate" and model_size(plain4)[1] == "packed_estimate"
    assert mb < model_size(plain4)[0]


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
