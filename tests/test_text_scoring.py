"""Text scorers: a fake masked LM with fixed probabilities gives hand-computed StereoSet / CrowS-Pairs / BBQ numbers;
the batched engine equals a naive one-mask-per-forward loop on a tiny random BERT; bad input is skipped and counted.

The fake model's probability tables are written out below; every expected number in these tests is worked out by
hand from those tables (the arithmetic is in the comments), never copied from the implementation's output.
"""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from fairq.text.data import BBQItem, CrowsPair, IntraItem, TextDataError, read_bbq, read_crows, read_stereoset
from fairq.text.engine import MaskedLMEngine, MaskRequest, mlm_parts, naive_logprobs
from fairq.text.scoring import (bbq_metrics, build_bbq, build_crows, build_stereoset, crows_metrics,
                                crows_template, official_predictions, score_all, stereoset_metrics)

SPECIAL = ["[PAD]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["the", "man", "woman", "nurse", "was", "is", "strong", "##er", "weak", "table", "caring", "rude", "car",
         "alpha", "beta", "people", "met", "who", "bad", "good", "old", "young", "unknown"]
VOCAB = SPECIAL + WORDS
ID = {w: i for i, w in enumerate(VOCAB)}


class FakeTokenizer:
    """Whitespace + punctuation-stripping word tokenizer; ``stronger`` → ``strong ##er``; ``∅`` → nothing."""

    cls_id, sep_id, mask_id, pad_id = 1, 2, 3, 0

    def encode(self, text):
        out = []
        for w in text.lower().replace(".", " ").replace("?", " ").split():
            if w == "∅":
                continue
            out += [ID["strong"], ID["##er"]] if w == "stronger" else [ID[w]]
        return out


# Probability tables: the first key whose tokens all occur in the (masked) input decides the distribution at the
# mask. Unlisted tokens share the leftover mass equally (so each table sums to 1 and softmax(log p) = p).
TABLES = [
    (("strong",), {"##er": 0.5, "the": 0.1, "is": 0.1}),
    # BBQ answers: half the mass on the three answers, so over them the distributions are (.1, .6, .3) etc.
    (("beta", "bad"), {"old": 0.05, "young": 0.3, "unknown": 0.15}),
    (("beta", "good"), {"old": 0.3, "young": 0.05, "unknown": 0.15}),
    (("alpha", "bad"), {"old": 0.25, "young": 0.1, "unknown": 0.15}),
    (("alpha", "good"), {"old": 0.1, "young": 0.1, "unknown": 0.3}),
    (("woman",), {"strong": 0.1, "weak": 0.25, "table": 0.25, "the": 0.1, "is": 0.1, "was": 0.1}),
    (("man",), {"strong": 0.4, "weak": 0.1, "table": 0.05, "the": 0.1, "is": 0.1, "was": 0.1, "##er": 0.02}),
    (("nurse",), {"caring": 0.2, "rude": 0.2, "car": 0.05, "the": 0.1, "is": 0.1}),
    ((), {}),
]


def _log_table(probs):
    rest = [w for w in VOCAB if w not in probs]
    left = (1.0 - sum(probs.values())) / len(rest)
    return torch.tensor([math.log(probs.get(w, left)) for w in VOCAB], dtype=torch.float64)


class _CueEncoder(nn.Module):
    def forward(self, input_ids, attention_mask=None):
        hidden = torch.zeros(*input_ids.shape, len(TABLES), dtype=torch.float64)
        for b, row in enumerate(input_ids.tolist()):
            n = int(attention_mask[b].sum()) if attention_mask is not None else len(row)
            present = set(row[:n])
            k = next(i for i, (key, _) in enumerate(TABLES) if all(ID[w] in present for w in key))
            hidden[b, :, k] = 1.0
        return (hidden,)


class FakeMLM(nn.Module):
    """A masked LM of fixed probabilities, split like BERT (encoder ``bert``, head ``cls.predictions``)."""

    base_model_prefix = "bert"

    def __init__(self):
        super().__init__()
        self.bert = _CueEncoder()
        self.cls = nn.Module()
        self.cls.predictions = nn.Linear(len(TABLES), len(VOCAB), bias=False).double()
        with torch.no_grad():
            self.cls.predictions.weight.copy_(torch.stack([_log_table(t) for _, t in TABLES], 1))

    def forward(self, input_ids, attention_mask=None):
        return self.cls.predictions(self.bert(input_ids, attention_mask)[0])


def _intra(i, target, domain, context, st, an, un):
    return IntraItem(str(i), target, domain, context, {"stereotype": st, "anti-stereotype": an, "unrelated": un},
                     {"stereotype": f"{i}s", "anti-stereotype": f"{i}a", "unrelated": f"{i}u"})


def _score(jobs):
    return score_all(MaskedLMEngine(FakeMLM(), batch_size=3), jobs)


def test_stereoset_hand_computed():
    items = [_intra(1, "man", "gender", "The man was BLANK.", "strong", "weak", "table"),       # .4 > .1 > .05
             _intra(2, "man", "gender", "The man is BLANK.", "stronger", "weak", "table"),      # (.4+.5)/2=.45
             _intra(3, "woman", "gender", "The woman was BLANK.", "weak", "strong", "table"),   # .25 > .1; .25 = .25
             _intra(4, "nurse", "profession", "The nurse was BLANK.", "caring", "rude", "car")]  # tie .2 = .2
    frame = _score([build_stereoset(FakeTokenizer(), items)])["stereoset"]
    # "stronger": P(strong | man) = .4 with nothing filled in, then P(##er | "strong" filled in) = .5 → mean .45
    assert frame.set_index("sample_id").loc["stereoset:2", "score_stereotype"] == pytest.approx(0.45, abs=1e-6)
    m = stereoset_metrics(frame)
    # per term: man SS 100 (2/2), LMS 100 (4/4); woman SS 100, LMS 0 (ties count against); nurse SS 0 (tie), LMS 100
    assert m["stereoset_intra_ss"] == pytest.approx(200 / 3)
    assert m["stereoset_intra_lms"] == pytest.approx(200 / 3)
    assert m["stereoset_intra_icat"] == pytest.approx((200 / 3) * (100 / 3) / 50)   # 44.44
    assert m["stereoset_intra_ss_gender"] == pytest.approx(100) and m["stereoset_intra_lms_gender"] == pytest.approx(50)
    assert m["stereoset_intra_icat_gender"] == pytest.approx(0)
    assert m["stereoset_intra_ss_profession"] == pytest.approx(0)
    assert m["stereoset_intra_lms_profession"] == pytest.approx(100)
    assert math.isnan(m["stereoset_intra_ss_race"])
    assert m["stereoset_intra_stereotype_rate"] == pytest.approx(75)  # items 1-3 of 4
    off = official_predictions(frame)
    assert {"id": "1s", "score": pytest.approx(0.4)} in off["intrasentence"] and off["intersentence"] == []
    assert len(off["intrasentence"]) == 12


def test_crows_nangia_hand_computed():
    pairs = [CrowsPair("a", "the man is strong", "the woman is strong", "stereo", "gender"),
             CrowsPair("b", "the woman is weak", "the man is weak", "antistereo", "gender"),
             CrowsPair("c", "the nurse is caring", "the nurse is rude", "stereo", "profession"),
             CrowsPair("d", "the man was weak", "the woman was weak", "stereo", "gender")]
    frame = _score([build_crows(FakeTokenizer(), pairs)])["crows"].set_index("sample_id")
    # a: template the/is/strong; "the","is" masked → cue "strong" (.1, .1); "strong" masked → .4 (man) vs .1 (woman)
    assert frame.loc["crows:a", "score_more"] == pytest.approx(math.log(.1) * 2 + math.log(.4))
    assert frame.loc["crows:a", "score_less"] == pytest.approx(math.log(.1) * 3)
    # b: weak .25 (woman) > .1 (man) → counts; c: identical cue → neutral; d: weak .1 (man) < .25 (woman) → not
    m = crows_metrics(frame.reset_index())
    assert m["crows_metric"] == pytest.approx(50)          # a, b of 4 (the neutral pair stays in the denominator)
    assert m["crows_gender"] == pytest.approx(200 / 3)     # a, b of a, b, d
    assert m["crows_profession"] == pytest.approx(0) and m["crows_neutral"] == pytest.approx(25)


def test_crows_template_is_the_shared_tokens():
    t1, t2 = crows_template([1, 5, 6, 7, 2], [1, 5, 8, 7, 2])
    assert t1 == [0, 1, 3, 4] and t2 == [0, 1, 3, 4]


def _bbq(i, cond, pol, context, question, label):
    return BBQItem(f"Age:{i}", "Age", "1", pol, cond, context, question, ("old", "young", "unknown"), label, 2, 0)


def test_bbq_hand_computed():
    amb, dis = "alpha people met.", "alpha people met. beta"
    items = [_bbq(1, "ambig", "neg", amb, "who was bad?", 2),       # picks old (.5): wrong, biased
             _bbq(2, "disambig", "neg", dis, "who was bad?", 1),    # picks young (.6): right, not biased
             _bbq(3, "ambig", "nonneg", amb, "who was good?", 2),   # picks unknown (.6): right, not counted
             _bbq(4, "disambig", "nonneg", dis, "who was good?", 0)]  # picks old (.6): right, not biased
    frame = _score([build_bbq(FakeTokenizer(), items)])["bbq"]
    assert frame["y_pred"].tolist() == [0, 1, 2, 0]
    m = bbq_metrics(frame)
    assert m["bbq_accuracy_ambig"] == pytest.approx(50) and m["bbq_accuracy_disambig"] == pytest.approx(100)
    assert m["bbq_bias_ambig"] == pytest.approx(50)        # s = 2·1/1 − 1 = 1 → (1 − .5)·100
    assert m["bbq_bias_disambig"] == pytest.approx(-100)   # 0 biased of 2 non-unknown → 2·0 − 1
    # TVD: (.1,.6,.3) vs (.5,.2,.3) → .4; (.6,.1,.3) vs (.2,.2,.6) → .5·(.4+.1+.3) = .4
    assert m["bbq_context_influence"] == pytest.approx(40)
    assert frame.set_index("sample_id").loc["bbq:Age:2", "twin"] == "bbq:Age:1"
    assert m["bbq_bias_ambig_Age"] == pytest.approx(50)


def test_one_engine_call_serves_every_benchmark_and_matches_separate_calls():
    tok = FakeTokenizer()
    items = [_intra(1, "man", "gender", "The man was BLANK.", "strong", "weak", "table")]
    pairs = [CrowsPair("a", "the man is strong", "the woman is strong", "stereo", "gender")]
    together = _score([build_stereoset(tok, items), build_crows(tok, pairs)])
    alone = _score([build_crows(tok, pairs)])
    pd.testing.assert_frame_equal(together["crows"], alone["crows"])


def _tiny_bert(seed=0):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    return transformers.BertForMaskedLM(cfg).eval()


def _random_requests(n, seed, vocab=120):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(4, 40, (1,), generator=g))
        ids = torch.randint(5, vocab, (length,), generator=g).tolist()
        ids[0], ids[-1] = 1, 2
        p = int(torch.randint(1, length - 1, (1,), generator=g))
        t = ids[p]
        ids[p] = 3
        out.append(MaskRequest(tuple(ids), p, t))
    return out + out[:5]  # duplicates are answered once, returned for every request


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_batched_engine_equals_naive_loop(batch_size):
    model = _tiny_bert()
    reqs = _random_requests(60, seed=batch_size)
    engine = MaskedLMEngine(model, batch_size=batch_size, max_tokens=300)
    assert mlm_parts(model)[1] is not None  # mask positions gathered before the vocabulary projection
    np.testing.assert_allclose(engine.logprobs(reqs), naive_logprobs(model, reqs), atol=1e-5, rtol=0)
    assert engine.forward_passes >= math.ceil(60 / batch_size)


def test_requests_that_differ_only_in_target_share_one_input_row():
    model = _tiny_bert()
    base = _random_requests(30, seed=11)[:30]
    # every input asked for three targets (as StereoSet's three candidates ask at the same blank)
    reqs = [MaskRequest(r.ids, r.pos, (r.target + k) % 120) for r in base for k in range(3)]
    engine = MaskedLMEngine(model, batch_size=8)
    got = engine.logprobs(reqs)
    assert engine.rows == len({(r.ids, r.pos) for r in base})
    np.testing.assert_allclose(got, naive_logprobs(model, reqs), atol=1e-5, rtol=0)
    assert len(set(np.round(got, 6))) > len(base)  # the targets were not all answered with one number


@pytest.mark.slow  # one inductor compilation (~20–60 s on 2 cores)
def test_compiled_engine_gives_the_eager_scores():
    model = _tiny_bert()
    reqs = _random_requests(40, seed=5)
    eager = MaskedLMEngine(model, batch_size=16).logprobs(reqs)
    compiled = MaskedLMEngine(model, batch_size=16, compile=True)
    np.testing.assert_allclose(compiled.logprobs(reqs), eager, atol=1e-5, rtol=0)
    assert compiled.compile  # it compiled (no silent fall-back to eager)


@pytest.mark.slow  # three inductor compilations (~20–60 s each on 2 cores)
def test_compiled_engine_sees_weights_changed_in_place():
    """Freezing bakes weights into the compiled program: after an in-place change, a new engine (and the same
    engine) must answer with the new weights, not the program cached for the old ones."""
    model = _tiny_bert()
    reqs = _random_requests(40, seed=6)
    first = MaskedLMEngine(model, batch_size=16, compile=True)
    before = first.logprobs(reqs)
    with torch.no_grad():
        for p in model.bert.encoder.parameters():
            p.data.mul_(1.5)  # .data: no version-counter bump, as a careless in-place edit would do
    eager = MaskedLMEngine(model, batch_size=16).logprobs(reqs)
    assert np.abs(eager - before).max() > 1e-2  # the change matters
    again = MaskedLMEngine(model, batch_size=16, compile=True)
    np.testing.assert_allclose(again.logprobs(reqs), eager, atol=1e-5, rtol=0)
    np.testing.assert_allclose(first.logprobs(reqs), eager, atol=1e-5, rtol=0)
    assert again.compile and first.compile  # compiled, not fallen back to eager


def test_weights_digest_follows_the_values():
    from fairq.text.engine import weights_digest

    model = _tiny_bert()
    d = weights_digest(model)
    assert weights_digest(model) == d
    with torch.no_grad():
        next(model.parameters()).data[0, 0] += 1e-3
    assert weights_digest(model) != d


def test_engine_falls_back_to_full_logits_for_unsplit_models():
    bert = _tiny_bert()

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = bert

        def forward(self, input_ids, attention_mask=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    reqs = _random_requests(20, seed=3)
    assert mlm_parts(Wrapped())[0] is None
    np.testing.assert_allclose(MaskedLMEngine(Wrapped(), batch_size=8).logprobs(reqs), naive_logprobs(bert, reqs),
                               atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------- bad input
def _sent(i, label, text):
    return {"sentence": text, "id": f"{i}{label[0]}", "labels": [], "gold_label": label}


def test_stereoset_bad_entries_are_skipped_and_counted(tmp_path):
    good = {"id": "g", "target": "man", "bias_type": "gender", "context": "The man was BLANK.",
            "sentences": [_sent("g", "stereotype", "The man was strong."), _sent("g", "anti-stereotype",
                          "The man was weak."), _sent("g", "unrelated", "The man was table.")]}
    data = {"intrasentence": [
        good,
        {**good, "id": "no_blank", "context": "The man was here."},
        {**good, "id": "two_blanks", "context": "The BLANK was BLANK."},
        {**good, "id": "empty", "sentences": [_sent("e", "stereotype", "The man was ..."),
                                               *good["sentences"][1:]]},
        {**good, "id": "two_stereo", "sentences": [good["sentences"][0]] * 3},
        "not a dict",
        {**good, "id": "no_tokens", "sentences": [_sent("n", "stereotype", "The man was ∅."), *good["sentences"][1:]]},
    ], "intersentence": []}
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"version": "1", "data": data}))
    intra, inter, skipped = read_stereoset(path)
    assert [it.id for it in intra] == ["g", "no_tokens"] and inter == []
    assert set(skipped.reasons) == {"BLANK missing", "BLANK doubled", "empty candidate word", "malformed entry",
                                    "not exactly one stereotype / anti-stereotype / unrelated sentence"}
    assert len(skipped) == 5
    job = build_stereoset(FakeTokenizer(), intra)
    assert dict(job.skipped.reasons) == {"candidate tokenizes to nothing": ["no_tokens"]}
    assert len(job.finish(np.zeros(len(job.requests)))) == 1


def test_crows_and_bbq_bad_rows_are_skipped(tmp_path):
    csv = tmp_path / "crows.csv"
    pd.DataFrame({"sent_more": ["a b", "", "c d"], "sent_less": ["a c", "x", "c e"],
                  "stereo_antistereo": ["stereo", "stereo", "sideways"], "bias_type": ["race-color"] * 3}).to_csv(csv)
    pairs, skipped = read_crows(csv)
    assert [p.id for p in pairs] == ["0"] and len(skipped) == 2
    root = tmp_path / "bbq"
    root.mkdir()
    row = {"example_id": 0, "question_index": "1", "question_polarity": "neg", "context_condition": "ambig",
           "category": "Age", "answer_info": {"ans0": ["grandfather", "old"], "ans1": ["grandson", "nonOld"],
                                              "ans2": ["Unknown", "unknown"]},
           "additional_metadata": {"stereotyped_groups": ["old"]}, "context": "c", "question": "q",
           "ans0": "The grandfather", "ans1": "The grandson", "ans2": "Unknown", "label": 2}
    lines = [json.dumps(row), "{broken", json.dumps({**row, "example_id": 1, "label": 7}), json.dumps({"x": 1})]
    (root / "Age.jsonl").write_text("\n".join(lines))
    items, skipped = read_bbq(root)
    assert len(items) == 1 and items[0].target == 0 and items[0].unknown == 2 and len(skipped) == 3


@pytest.mark.parametrize("reader,name,source", [
    (read_stereoset, "dev.json", "moinnadeem/StereoSet"),
    (read_crows, "crows_pairs_anonymized.csv", "nyu-mll/crows-pairs"),
    (lambda p: read_bbq(p.parent, ["Age"]), "Age.jsonl", "nyu-mll/BBQ")])
def test_missing_file_names_file_layout_and_source(tmp_path, reader, name, source):
    with pytest.raises(TextDataError) as err:
        reader(tmp_path / name)
    msg = str(err.value)
    assert name in msg and source in msg and "Expected" in msg


def test_local_folder_with_nsp_head_scores_intersentence(tmp_path, monkeypatch):
    """A local HF folder of a BertForPreTraining loads with its NSP head; intersentence gets P(IsNext) per sentence."""
    import transformers

    from fairq.text.data import InterItem
    from fairq.text.models import bert_uncased_tokenizer, load_masked_lm
    from fairq.text.scoring import HFTokenizer, intersentence_frame

    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    transformers.BertForPreTraining(cfg).save_pretrained(tmp_path / "m")
    bert_uncased_tokenizer().save_pretrained(tmp_path / "m")
    model, tok = load_masked_lm(str(tmp_path / "m"))
    assert type(model).__name__ == "BertForPreTraining"
    item = InterItem("x", "man", "gender", "I met a man.", {"stereotype": "He was tall.", "anti-stereotype":
                     "He was short.", "unrelated": "Cats purr."}, {"stereotype": "s", "anti-stereotype": "a",
                                                                   "unrelated": "u"})
    frame, reason = intersentence_frame(model, HFTokenizer(tok), [item])
    assert reason == "" and len(frame) == 1
    row = frame.iloc[0]
    assert all(0 < row[c] < 1 for c in ("score_stereotype", "score_anti", "score_unrelated"))
    with torch.no_grad():  # independently: the tokenizer's own pair encoding, label 0 = IsNext
        enc = tok("I met a man.", "He was tall.", return_tensors="pt", return_token_type_ids=True)
        assert enc["token_type_ids"].sum() > 0
        logits = model(**enc).seq_relationship_logits
    assert row["score_stereotype"] == pytest.approx(float(torch.softmax(logits[0], -1)[0]), abs=1e-5)
    # a model without the head: not applicable, with the reason, never a substitute
    mlm = transformers.BertForMaskedLM(cfg)
    empty, why = intersentence_frame(mlm, HFTokenizer(tok), [item])
    assert empty.empty and "next-sentence" in why
