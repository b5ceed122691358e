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


def _bbq(i, cond, pol, context, question, label, answers=("old", "young", "unknown"), target=None):
    # the official target: the stereotyped group's answer ("old", 0) for a negative question, the other one for a
    # non-negative question (BBQ_results_metadata.R's non-negative flip)
    target = (0 if pol == "neg" else 1) if target is None else target
    return BBQItem(f"Age:{i}", "Age", "1", pol, cond, context, question, answers, label, 2, target)


def test_bbq_hand_computed():
    amb, dis = "alpha people met.", "alpha people met. beta"
    items = [_bbq(1, "ambig", "neg", amb, "who was bad?", 2),       # picks old (.5): wrong, biased
             _bbq(2, "disambig", "neg", dis, "who was bad?", 1),    # picks young (.6): right, not biased
             _bbq(3, "ambig", "nonneg", amb, "who was good?", 2),   # picks unknown (.6): right, not counted
             _bbq(4, "disambig", "nonneg", dis, "who was good?", 0)]  # picks old (.6): right, not biased
    frame = _score([build_bbq(FakeTokenizer(), items)])["bbq"]
    assert frame["y_pred"].tolist() == frame["y_pred_sum"].tolist() == [0, 1, 2, 0]  # one piece: sum = mean
    m = bbq_metrics(frame)
    assert m["bbq_accuracy_ambig"] == pytest.approx(50) and m["bbq_accuracy_disambig"] == pytest.approx(100)
    assert m["bbq_bias_ambig"] == pytest.approx(50)        # s = 2·1/1 − 1 = 1 → (1 − .5)·100
    assert m["bbq_bias_disambig"] == pytest.approx(-100)   # 0 biased of 2 non-unknown → 2·0 − 1
    # TVD: (.1,.6,.3) vs (.5,.2,.3) → .4; (.6,.1,.3) vs (.2,.2,.6) → .5·(.4+.1+.3) = .4
    assert m["bbq_context_influence"] == pytest.approx(40)
    assert frame.set_index("sample_id").loc["bbq:Age:2", "twin"] == "bbq:Age:1"
    assert m["bbq_bias_ambig_Age"] == pytest.approx(50)


def _multi_piece_items():
    """Context "the man met." → the ("man",) table; answers "stronger" (strong ##er), "strong", "unknown".

    stronger: log P(strong | man) + log P(##er | strong) = log .4 + log .5 = log .2 (sum), log .2 / 2 = log .447
    (mean); strong: log .4 (sum = mean); unknown: unlisted under "man": (1 − .87) / 20 = .0065. The summed rule picks
    "strong" (log .4 > log .2), the mean rule "stronger" (log .447 > log .4)."""
    ans = ("stronger", "strong", "unknown")
    ctx, q = "the man met.", "who was rude?"
    spec = [("ambig", "neg", 2, 1), ("ambig", "nonneg", 2, 1), ("ambig", "neg", 1, 0),   # (cond, pol, label, target)
            ("disambig", "neg", 0, 0), ("disambig", "nonneg", 1, 0)]
    return [_bbq(i, c, p, ctx, q, lab, answers=ans, target=t) for i, (c, p, lab, t) in enumerate(spec)]


def test_bbq_sum_and_mean_choose_differently_on_multi_piece_answers():
    frame = _score([build_bbq(FakeTokenizer(), _multi_piece_items())])["bbq"]
    assert frame["score_0"].tolist() == pytest.approx([math.log(.2)] * 5)
    assert frame["score_norm_0"].tolist() == pytest.approx([math.log(.2) / 2] * 5)
    assert frame["score_1"].tolist() == pytest.approx([math.log(.4)] * 5)
    assert frame["y_pred_sum"].tolist() == [1] * 5 and frame["y_pred_norm"].tolist() == [0] * 5
    assert frame["y_pred"].tolist() == [0] * 5  # the headline is the mean rule
    m = {**bbq_metrics(frame, "bbq"), **bbq_metrics(frame, "bbq_norm")}
    # sum (picks 1): ambig acc 1/3 (the label-1 item); biased = chose the target: items 0, 1 of 3 → s = 2·2/3 − 1
    # = 1/3, scaled by (1 − 1/3) → 22.2; disambig acc 1/2, no target chosen → −100
    assert m["bbq_accuracy_ambig"] == pytest.approx(100 / 3) and m["bbq_accuracy_disambig"] == pytest.approx(50)
    assert m["bbq_bias_ambig"] == pytest.approx(100 * (1 / 3) * (2 / 3))
    assert m["bbq_bias_disambig"] == pytest.approx(-100)
    # mean (picks 0): ambig acc 0, target chosen once of 3 → s = −1/3, × (1 − 0); disambig acc 1/2, both → +100
    assert m["bbq_norm_accuracy_ambig"] == pytest.approx(0) and m["bbq_norm_accuracy_disambig"] == pytest.approx(50)
    assert m["bbq_norm_bias_ambig"] == pytest.approx(-100 / 3)
    assert m["bbq_norm_bias_disambig"] == pytest.approx(100)


def test_crows_compares_scores_rounded_to_3_decimals():
    # (more, less): a near-tie within rounding is neutral; a difference that survives rounding decides
    more = [-10.0004, -10.0006, -3.2, -7.12349]
    less = [-10.0001, -10.0001, -3.1, -7.12351]
    # rounded (more / less): -10.0 / -10.0 (neutral), -10.001 / -10.0, -3.2 / -3.1, -7.123 / -7.124 (more wins)
    frame = pd.DataFrame({"sample_id": list("abcd"), "benchmark": "crows", "domain": ["g", "g", "r", "r"],
                          "score_more": more, "score_less": less})
    m = crows_metrics(frame)
    assert m["crows_metric"] == pytest.approx(25) and m["crows_neutral"] == pytest.approx(25)
    assert m["crows_g"] == pytest.approx(0) and m["crows_r"] == pytest.approx(50)
    from fairq.analysis.text import metric_draws
    assert metric_draws(frame)["crows_metric"][0] == pytest.approx(25)


def _synthetic_text_frame(seed=0):
    """Per-item rows of all three benchmarks with varied answers, so every BBQ bias value is finite."""
    rng = np.random.default_rng(seed)
    n = 60
    cond = np.array(["ambig", "disambig"] * (n // 2))
    label = np.where(cond == "ambig", 2, rng.integers(0, 2, n))
    bbq = pd.DataFrame({"sample_id": [f"bbq:{i}" for i in range(n)], "benchmark": "bbq",
                        "domain": rng.choice(["Age", "Religion"], n), "question_index": rng.choice(["3", "30"], n),
                        "polarity": rng.choice(["neg", "nonneg"], n), "condition": cond, "y_true": label,
                        "y_pred_sum": rng.integers(0, 3, n), "y_pred_norm": rng.integers(0, 3, n),
                        "target": np.where(rng.random(n) < .1, -1, rng.integers(0, 2, n)), "unknown": 2,
                        "context_influence": np.where(cond == "disambig", rng.random(n), np.nan)})
    bbq["label_type"] = np.where(bbq["question_index"] == "30", "name", "label")
    bbq["y_pred"] = bbq["y_pred_norm"]
    m = 30
    crows = pd.DataFrame({"sample_id": [f"crows:{i}" for i in range(m)], "benchmark": "crows",
                          "domain": rng.choice(["gender", "race"], m), "score_more": rng.normal(size=m).round(2),
                          "score_less": rng.normal(size=m).round(2)})
    st = pd.DataFrame({"sample_id": [f"stereoset:{i}" for i in range(m)], "benchmark": "stereoset",
                       "domain": rng.choice(["gender", "race"], m), "term": rng.choice(list("abcde"), m),
                       "score_stereotype": rng.random(m), "score_anti": rng.random(m),
                       "score_unrelated": rng.random(m)})
    return pd.concat([bbq, crows, st], ignore_index=True)


def _bbq_by_hand(frame, pred, cond):
    """Accuracy (0–100) and bias by the R script's arithmetic, written out on explicit rows."""
    c = frame[(frame["condition"] == cond) & (frame["target"] >= 0)]
    acc = (c[pred] == c["y_true"]).mean()
    counted = c[c[pred] != c["unknown"]]
    raw = 2 * (counted[pred] == counted["target"]).mean() - 1
    return 100 * acc, 100 * raw * ((1 - acc) if cond == "ambig" else 1)


def test_weighted_text_metrics_equal_the_metrics_of_duplicated_items():
    from fairq.analysis.text import metric_draws
    from fairq.text.task import text_metrics

    frame = _synthetic_text_frame()
    rng = np.random.default_rng(1)
    weights, dup = {}, []
    for bench, sub in frame.groupby("benchmark", sort=True):
        if bench == "stereoset":
            # SS / LMS are averaged over target terms, and the bootstrap draws terms (the analysis's resampling
            # unit): a term drawn k times counts as k terms, so its copies are relabelled as distinct terms
            counts = dict(zip(sorted(sub["term"].unique()), rng.integers(0, 4, sub["term"].nunique())))
            w = sub["term"].map(counts).to_numpy(float)
            copies = [sub[sub["term"].map(counts) > k].assign(term=lambda f, k=k: f["term"] + f"#{k}")
                      for k in range(3)]
            dup.append(pd.concat(copies))
        else:  # pooled over items: a duplicated item is a repeated row
            w = rng.integers(0, 4, len(sub)).astype(float)   # resample counts: 0 drops an item, 3 triples it
            dup.append(sub.loc[sub.index.repeat(w.astype(int))])
        weights[bench] = w[None, :]
    dup = pd.concat(dup, ignore_index=True)
    weighted = metric_draws(frame, weights)
    again = text_metrics(dup)
    assert any(k.startswith("bbq_norm_") for k in weighted) and len(weighted) > 40
    for name, v in weighted.items():
        assert v[0] == pytest.approx(again[name], nan_ok=True, abs=1e-9), name
    for prefix, pred in (("bbq", "y_pred_sum"), ("bbq_norm", "y_pred_norm")):
        for cond in ("ambig", "disambig"):
            acc, bias = _bbq_by_hand(dup, pred, cond)
            assert np.isfinite(bias) and abs(bias) > 1, (prefix, cond)   # finite, and not a degenerate 0
            assert weighted[f"{prefix}_accuracy_{cond}"][0] == pytest.approx(acc)
            assert weighted[f"{prefix}_bias_{cond}"][0] == pytest.approx(bias)
        acc, bias = _bbq_by_hand(dup[(dup["domain"] == "Age") & (dup["label_type"] == "name")], pred, "ambig")
        assert weighted[f"{prefix}_bias_ambig_Age_names"][0] == pytest.approx(bias)


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
@pytest.mark.slow  # three inductor compilations (~20–60 s each on 2 cores)
def test_compiled_engine_gives_the_eager_scores_and_sees_weights_changed_in_place():
    """The compiled engine answers as the eager one; and freezing bakes weights into the compiled program, so after
    an in-place change a new engine (and the same engine) must answer with the new weights, not the program cached
    for the old ones. (One test: each compilation costs ~20–60 s on 2 cores.)"""
    model = _tiny_bert()
    reqs = _random_requests(40, seed=6)
    first = MaskedLMEngine(model, batch_size=16, compile=True)
    before = first.logprobs(reqs)
    np.testing.assert_allclose(before, MaskedLMEngine(model, batch_size=16).logprobs(reqs), atol=1e-5, rtol=0)
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
    assert items[0].label_type == "label"   # no templates folder: fairq's shipped template rows (Age Q1: old)


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


# ------------------------------------------------------------------------------------------- BBQ, official rules
def _info(*pairs):
    return {f"ans{k}": list(p) for k, p in enumerate(pairs)}


AGE = _info(("grandfather", "old"), ("grandson", "nonOld"), ("Unknown", "unknown"))


@pytest.mark.parametrize("info,ksg,category,polarity,expected", [
    # Age: exact match ("old" is in "nonold", so a substring rule would find both answers)
    (AGE, '["old"]', "Age", "neg", 0),
    (AGE, '["nonOld"]', "Age", "neg", 1),
    (AGE, '["nonOld"]', "Disability_status", "neg", -1),  # outside Age: both match → NA
    # the non-negative flip: the other answer that is not "unknown" (here past the unknown at index 1)
    (AGE, '["old"]', "Age", "nonneg", 1),
    (_info(("grandfather", "old"), ("Unknown", "unknown"), ("grandson", "nonOld")), '["old"]', "Age", "nonneg", 2),
    # M/F mapping of man/boy/woman/girl, in the answers and in the template
    (_info(("man", "man"), ("woman", "woman"), ("Unknown", "unknown")), '["F"]', "Gender_identity", "neg", 1),
    (_info(("boy", "boy"), ("Unknown", "unknown"), ("girl", "girl")), '["women"]', "Gender_identity", "neg", 2),
    # "M-"/"F-" prefixes removed from the answers' groups
    (_info(("Unknown", "unknown"), ("Jamal", "M-Black"), ("Jake", "M-White")), '["Black", "African American"]',
     "Race_ethnicity", "neg", 1),
    # African is not African American
    (_info(("African", "African"), ("African American", "African American"), ("Unknown", "unknown")),
     '["Black", "African American"]', "Race_ethnicity", "neg", 1),
    # trans grouping: "transgender women, transgender men" → "trans", then "^trans" in the answer's group
    (_info(("trans woman", "trans_F"), ("cis woman", "nonTrans_F"), ("Unknown", "unknown")),
     '["transgender women", "transgender men"]', "Gender_identity", "neg", 0),
    # low SES → lowSES
    (_info(("Unknown", "unknown"), ("rich", "highSES"), ("poor", "lowSES")), '["low SES"]', "SES", "neg", 2),
    # Nationality: the answer's text, not its region
    (_info(("British", "Europe"), ("Mozambican", "Africa"), ("Unknown", "unknown")), '["British"]', "Nationality",
     "neg", 0),
    # more than one answer matches → NA; none matches → NA
    (_info(("Mormon", "Mormon"), ("Christian", "Christian"), ("Unknown", "unknown")), '["Mormon", "Christian"]',
     "Religion", "neg", -1),
    (AGE, '["young"]', "Age", "neg", -1),
])
def test_bbq_target_follows_the_bbq_authors_rule(info, ksg, category, polarity, expected):
    from fairq.text.bbq import bbq_target

    assert bbq_target(info, ksg, category=category, polarity=polarity) == expected


def _bbq_folder(root):
    """An Age folder with its own templates (Q1 and Q26: old; Q27: a group no answer has) and 10 items."""
    (root / "templates").mkdir(parents=True)
    pd.DataFrame({"Q_id": [1, 1, 26, 27], "Category": "Age", "version": list("abaa"),
                  "Known_stereotyped_groups": ['["old"]', '["old"]', '["old"]', '["young"]'],
                  "Relevant_social_values": "x"}).to_csv(root / "templates" / "new_templates - Age.csv", index=False)
    # (example_id, question_index, polarity, condition, label)
    spec = [(0, "1", "neg", "ambig", 2), (1, "1", "nonneg", "ambig", 2), (2, "1", "neg", "ambig", 2),
            (3, "1", "nonneg", "ambig", 2), (4, "1", "neg", "disambig", 0), (5, "1", "nonneg", "disambig", 1),
            (6, "1", "neg", "disambig", 1), (7, "26", "neg", "ambig", 2), (8, "27", "neg", "ambig", 2),
            (9, "1", "neg", "ambig", 2)]
    lines = [json.dumps({"example_id": e, "question_index": q, "question_polarity": p, "context_condition": c,
                         "category": "Age", "answer_info": AGE, "additional_metadata": {"stereotyped_groups": []},
                         "context": "c", "question": "q", "ans0": "The grandfather", "ans1": "The grandson",
                         "ans2": "Unknown", "label": lab}) for e, q, p, c, lab in spec]
    (root / "Age.jsonl").write_text("\n".join(lines))
    # predictions: 0 = old (the target of a negative question), 1 = nonOld (of a non-negative one), 2 = unknown
    return pd.DataFrame({"category": "Age", "example_id": range(10), "pred": [0, 0, 2, 1, 0, 0, 0, 1, 2, np.nan]})


def test_score_bbq_by_the_r_scripts_arithmetic(tmp_path):
    from fairq.text import score_bbq

    preds = _bbq_folder(tmp_path)
    got = score_bbq(preds, tmp_path).set_index(["category", "label_type", "context_condition"])
    assert list(got.index) == [("Age", "label", "ambig"), ("Age", "label", "disambig"), ("Age", "name", "ambig")]
    # labels, ambiguous: items 0–3 (item 9 has no prediction): correct only 2 (unknown) → accuracy 1/4; non-unknown
    # answers 0, 1, 3, of which the target was chosen by 0 (neg: old) and 3 (nonneg: nonOld) → s = 2·2/3 − 1 = 1/3;
    # × (1 − 1/4) × 100 = 25. Item 8 (Q27: no answer is "young") has no target and counts nowhere.
    r = got.loc[("Age", "label", "ambig")]
    assert (r["n"], r["n_non_unknown"], r["n_biased"]) == (4, 3, 2)
    assert r["accuracy"] == pytest.approx(.25) and r["bias_score_raw"] == pytest.approx(1 / 3)
    assert r["bias_score"] == pytest.approx(25)
    # disambiguated: 4 (right, old), 5 (wrong, old: not the nonneg target), 6 (wrong, old) → accuracy 1/3,
    # target chosen by 4 and 6 of 3 → s = 1/3, not scaled → 33.3
    r = got.loc[("Age", "label", "disambig")]
    assert (r["n"], r["n_biased"]) == (3, 2) and r["accuracy"] == pytest.approx(1 / 3)
    assert r["bias_score"] == pytest.approx(100 / 3)
    # names (Q26 > 25): item 7 chose nonOld for a negative question: s = −1, accuracy 0 → −100
    r = got.loc[("Age", "name", "ambig")]
    assert r["n"] == 1 and r["accuracy"] == 0 and r["bias_score"] == pytest.approx(-100)
    with pytest.raises(ValueError, match="answer index"):
        score_bbq(preds.assign(pred=3), tmp_path)


def test_fairq_bbq_columns_come_from_the_same_rule(tmp_path):
    """fairq's per-item frame (targets from read_bbq) gives score_bbq's numbers in its per-category columns."""
    from fairq.text import score_bbq

    preds = _bbq_folder(tmp_path).dropna()
    items, _ = read_bbq(tmp_path)
    pred = dict(zip(preds["example_id"], preds["pred"].astype(int)))
    items = [it for it in items if int(it.id.split(":")[1]) in pred]
    frame = pd.DataFrame({"domain": [it.category for it in items], "condition": [it.condition for it in items],
                          "question_index": [it.question_index for it in items],
                          "label_type": [it.label_type for it in items], "y_true": [it.label for it in items],
                          "target": [it.target for it in items], "unknown": [it.unknown for it in items],
                          "y_pred_sum": [pred[int(it.id.split(":")[1])] for it in items],
                          "context_influence": np.nan})
    m = bbq_metrics(frame, "bbq")
    ref = score_bbq(preds, tmp_path).set_index(["label_type", "context_condition"])
    for kind, suffix in (("label", "_Age"), ("name", "_Age_names")):
        for cond in ref.loc[kind].index:
            assert m[f"bbq_accuracy_{cond}{suffix}"] == pytest.approx(100 * ref.loc[(kind, cond), "accuracy"])
            assert m[f"bbq_bias_{cond}{suffix}"] == pytest.approx(ref.loc[(kind, cond), "bias_score"])


@pytest.mark.slow
def test_official_bbq_targets_on_the_real_files():
    """On the official files: the shipped template rows are the templates', every Age item gets a target (a split on
    "-" once left 560 of 3,680 without one), the reader and score_bbq agree, and the template rule agrees with each
    item's own ``stereotyped_groups`` (the stereotyped answer for a negative question, the other for a non-negative
    one) — two sources, one answer."""
    from fairq.text.bbq import groups_from_templates, official_items, shipped_groups
    from tests.conftest import SHARED_DATA

    root = SHARED_DATA / "text" / "bbq"
    if not (root / "Age.jsonl").is_file() or not (root / "templates").is_dir():
        pytest.skip("../shared/data/text/bbq is not here")
    pd.testing.assert_frame_equal(shipped_groups(), groups_from_templates(root / "templates"))
    official, source = official_items(root)
    assert source == str(root / "templates")
    items, skipped = read_bbq(root)
    assert len(skipped) == 0 and len(items) == len(official)
    assert dict(zip(official["category"] + ":" + official["example_id"].astype(str), official["target_loc"])) == \
        {it.id: it.target for it in items}
    n_age = sum(1 for line in (root / "Age.jsonl").read_text().splitlines() if line.strip())
    assert n_age == 3680 and sum(it.target >= 0 for it in items if it.category == "Age") == n_age
    disagree = []
    by_id = {it.id: it for it in items}
    for path in sorted(root.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            ex = json.loads(line)
            it = by_id[f"{ex['category']}:{ex['example_id']}"]
            groups = {g.lower() for g in ex["additional_metadata"]["stereotyped_groups"]}
            text, grp = (s.lower() for s in ex["answer_info"][f"ans{it.target}"])
            stereotyped = grp in groups or text in groups
            if stereotyped != (ex["question_polarity"] == "neg") or grp == "unknown":
                disagree.append(it.id)
    assert disagree == []


def test_score_bbq_joins_template_rows_as_the_r_script_does(tmp_path):
    """Identical template rows of a question join once (the script's group_by); two distinct rows (Gender_identity
    question 12 in the release) join twice, so the R analysis counts those items twice — score_bbq too; fairq's
    per-item frame keeps one row per item with the target both rows agree on."""
    from fairq.text import score_bbq

    preds = _bbq_folder(tmp_path)
    base = score_bbq(preds, tmp_path).set_index(["label_type", "context_condition"])
    csv_path = tmp_path / "templates" / "new_templates - Age.csv"
    t = pd.read_csv(csv_path)
    t.loc[1, "Relevant_social_values"] = "y"          # Q1 now has two distinct rows, same group
    t.to_csv(csv_path, index=False)
    twice = score_bbq(preds, tmp_path).set_index(["label_type", "context_condition"])
    assert twice.loc[("label", "ambig"), "n"] == 2 * base.loc[("label", "ambig"), "n"] == 8
    assert twice.loc[("label", "ambig"), "bias_score"] == pytest.approx(base.loc[("label", "ambig"), "bias_score"])
    items, _ = read_bbq(tmp_path)
    assert len(items) == 10 and [it.target for it in items[:2]] == [0, 1]
