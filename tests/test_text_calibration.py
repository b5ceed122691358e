"""Text calibration: statistics leave ``[PAD]`` out (the same sentences batched with more padding give the same GPTQ
Hessians, AWQ / SmoothQuant magnitudes, activation ranges on the per-layer and the PT2E graph path, and mixed
precision's KL sensitivities), and the calibration sentences come from a general corpus that no benchmark scores."""
import copy

import pytest
import torch

from fairq.compression import PTQConfig, quantize
from fairq.compression.quant.layer_stats import collect_input_stats
from fairq.compression.core.modules import quantizable_layers
from fairq.compression.quant.simulate import simulated_layers

PAD = 0


def _tiny_bert(seed=0):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    return transformers.BertForMaskedLM(cfg).eval()


def _sentences(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 120, (int(torch.randint(3, 14, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def _batches(sents, batch_size, extra=0):
    """Right-padded batches; ``extra`` more [PAD] columns than the longest sentence of each batch needs."""
    out = []
    for s in range(0, len(sents), batch_size):
        part = sents[s:s + batch_size]
        width = max(map(len, part)) + extra
        ids = torch.full((len(part), width), PAD)
        att = torch.zeros((len(part), width), dtype=torch.long)
        for i, x in enumerate(part):
            ids[i, :len(x)], att[i, :len(x)] = torch.tensor(x), 1
        out.append({"input_ids": ids, "attention_mask": att})
    return out


@pytest.fixture(scope="module")
def setup():
    sents = _sentences()
    return _tiny_bert(), _batches(sents, 4), _batches(sents, 4, extra=9), _batches(sents, 12, extra=3)


def _stats(model, batches):
    return collect_input_stats(model, quantizable_layers(model), batches, hessian=True)


def test_layer_statistics_do_not_see_padding(setup):
    model, tight, padded, one_batch = setup
    ref = _stats(model, tight)
    for other in (_stats(model, padded), _stats(model, one_batch)):
        assert set(other) == set(ref)
        for name, st in ref.items():
            o = other[name]
            assert o.n == st.n and o.hessian_rows == st.hessian_rows, name  # the real tokens, counted once
            torch.testing.assert_close(o.hessian, st.hessian, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(o.abs_max, st.abs_max, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(o.abs_mean, st.abs_mean, atol=1e-5, rtol=1e-5)
    n_tokens = sum(int(b["attention_mask"].sum()) for b in tight)
    assert ref["bert.encoder.layer.0.attention.self.query"].n == n_tokens


def test_the_check_would_see_padding(setup, monkeypatch):
    """Counter-check: with the mask ignored, the extra [PAD] rows change the statistics (so the test above can fail)."""
    import fairq.compression.quant.layer_stats as ls

    model, tight, padded, _ = setup
    monkeypatch.setattr(ls, "real_tokens", lambda x: x)
    a, b = _stats(model, tight), _stats(model, padded)
    name = "bert.encoder.layer.0.attention.self.query"
    assert b[name].n > a[name].n and not torch.allclose(a[name].hessian, b[name].hessian, atol=1e-4)


def _act_qparams(model):
    return {n: (float(m.act_scale), int(m.act_zero_point)) for n, m in simulated_layers(model).items()
            if m.act_mode == "static"}


def test_activation_ranges_do_not_see_padding(setup):
    model, tight, padded, _ = setup
    cfg = PTQConfig(weight_bits=8, act_bits=8, backend="simulated", simulation="layer_input")
    a = _act_qparams(quantize(copy.deepcopy(model), cfg, calibration_data=tight))
    b = _act_qparams(quantize(copy.deepcopy(model), cfg, calibration_data=padded))
    assert len(a) >= 12 and a.keys() == b.keys()
    for n in a:
        assert a[n][1] == b[n][1] and a[n][0] == pytest.approx(b[n][0], rel=1e-5), n


@pytest.mark.parametrize("method", ["awq", "smoothquant", "gptq"])
def test_advanced_ptq_does_not_see_padding(setup, method):
    from fairq.compression import make_config

    model, tight, padded, _ = setup
    cfg = make_config(method, 4)
    x = _batches(_sentences(4, seed=9), 4)[0]
    outs = []
    for data in (tight, padded):
        q = quantize(copy.deepcopy(model), cfg, calibration_data=data)
        with torch.no_grad():
            outs.append(q(**x).logits)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)


def test_mixed_precision_kl_sensitivity_does_not_see_padding(setup):
    from fairq.compression.quant.sensitivity import layer_sensitivity

    model, tight, padded, _ = setup
    layers = dict(list(quantizable_layers(model).items())[:3])
    a = layer_sensitivity(model, layers, (4,), tight, metric="kl")
    b = layer_sensitivity(model, layers, (4,), padded, metric="kl")
    assert a.keys() == b.keys()
    for name in a:
        for bits in a[name]:
            assert a[name][bits] == pytest.approx(b[name][bits], rel=1e-4, abs=1e-7), (name, bits)
    assert any(v > 0 for r in a.values() for v in r.values())


def test_kl_sensitivity_of_a_masked_lm_gathers_real_tokens_before_the_head(setup):
    """The KL sensitivity of a masked LM runs the MLM head on the real tokens only (the vocabulary projection and the
    float64 softmax skip the [PAD] positions): the same sensitivities as the full forward over every position, which
    a wrapper that hides the encoder / head split still takes, and the head really sees only the real tokens."""
    from torch import nn

    from fairq.compression.quant.sensitivity import layer_sensitivity

    model, _, padded, _ = setup

    class Whole(nn.Module):  # the same model, not split into encoder and head: the full-logits path
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, **kw):
            return self.m(**kw)

    layers = dict(list(quantizable_layers(model).items())[:4])
    rows = []
    hook = model.cls.predictions.register_forward_pre_hook(lambda mod, args: rows.append(args[0].shape[0]))
    try:
        gathered = layer_sensitivity(model, layers, (4, 8), padded, metric="kl")
    finally:
        hook.remove()
    real = sum(int(b["attention_mask"].sum()) for b in padded)
    assert rows and set(rows[:len(padded)]) <= {int(b["attention_mask"].sum()) for b in padded} and \
        sum(rows[:len(padded)]) == real  # the reference outputs: one head row per real token
    wrapped = Whole(model)
    full = layer_sensitivity(wrapped, {f"m.{k}": v for k, v in layers.items()}, (4, 8), padded, metric="kl")
    for name in layers:
        for bits in (4, 8):
            assert gathered[name][bits] == pytest.approx(full[f"m.{name}"][bits], rel=1e-6, abs=1e-12), (name, bits)
    assert any(v > 0 for r in gathered.values() for v in r.values())


def test_graph_simulation_ranges_do_not_see_padding(setup):
    """The deployed-graph (PT2E) path: its observers skip [PAD] rows too — the same quantized outputs."""
    model, tight, padded, _ = setup
    cfg = PTQConfig(weight_bits=8, act_bits=8, backend="simulated", simulation="graph")
    x = _batches(_sentences(4, seed=9), 4)[0]
    outs = []
    for data in (tight, padded):
        q = quantize(copy.deepcopy(model), cfg, calibration_data=data)
        with torch.no_grad():
            out = q(**x)
        outs.append(out.logits if hasattr(out, "logits") else out[0])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_calibration_text_is_not_benchmark_text(tmp_path, monkeypatch):
    from datamodules.text import TextDataModule
    from fairq.text.corpus import general_sentences
    from fairq.text.models import bert_uncased_tokenizer
    from tests.test_text_pipeline import write_text_data

    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "cache"))
    write_text_data(tmp_path)
    dm = TextDataModule(root=str(tmp_path), validation_items=0)
    dm.setup()
    dm.set_tokenizer(bert_uncased_tokenizer())
    pool = general_sentences()
    assert len(pool) >= 1000 and not any(s.startswith("#") for s in pool)
    scored = set()
    for it in dm.items["stereoset"]:
        scored |= {it.context, *(it.context.replace("BLANK", w) for w in it.words.values())}
    for it in dm.items["stereoset_inter"]:
        scored |= {it.context, *it.sentences.values()}
    scored |= {s for p in dm.items["crows"] for s in (p.sent_more, p.sent_less)}
    scored |= {s for it in dm.items["bbq"] for s in (it.context, it.question)}
    assert not scored & set(pool)
    tok = dm.tokenizer_or_fail()
    batches = dm.calibration_dataloader(40, batch_size=16)
    texts = [tok.decode(row[row != tok.pad_token_id][1:-1]) for b in batches for row in b["input_ids"]]
    assert len(texts) == 40
    lowered = {s.lower() for s in pool}
    assert sum(t in lowered for t in texts) >= 30  # drawn from the pool (a few differ by tokenizer spacing)
    assert not {t for t in texts} & {s.lower() for s in scored}
