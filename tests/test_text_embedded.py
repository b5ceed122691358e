"""The embedded text default: the generated corpus carries exactly the planted rates, built alike in planted and
unplanted domains; the probes are symmetric; and the scorers find the planted bias in the pre-trained model — a
probe CI above 50 where planted, containing 50 where not — for several pre-training seeds and thread counts
(pre-training is not bit-identical across CPUs, so the check is statistical, not a number). Measured, not forced."""
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from fairq.text.embedded import (DOMAINS, NOT_BIT_IDENTICAL, TEMPLATES, TinyBertSpec, generate_corpus, probe_cis,
                                 probe_cluster, probes)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "stereoset.yaml"
#: (pre-training seed, intra-op threads): three seeds, both thread counts (another thread count changes the float
#: reduction order as another CPU does)
RUNS = ((0, 1), (1, 2), (2, 1))
#: the planted-bias check's CI level: Bonferroni over the unplanted checks of all runs (2 domains × 2 benchmarks ×
#: 3 runs = 12), so that the whole test fails by chance on at most 1 % of machines when nothing is wrong
GATE_CONFIDENCE = 1 - 0.01 / 12


def _config_spec(**over):
    pre = yaml.safe_load(CONFIG.read_text())["text"]["pretrain"]
    return TinyBertSpec(**{**pre, **over})


def _word_index():
    terms, words = {}, {}
    for dom, (sides, pairs) in DOMAINS.items():
        for side, ts in enumerate(sides):
            for i, t in enumerate(ts):
                terms[t] = (dom, side, i)
        for p, pair in enumerate(pairs):
            for k, w in enumerate(pair):
                words[w] = (dom, p, k)
    return terms, words


def test_every_word_is_one_token_and_in_one_list_only():
    from fairq.text.models import bert_uncased_tokenizer

    tok = bert_uncased_tokenizer()
    terms, words = _word_index()
    every = [t for _, (sides, _) in DOMAINS.items() for ts in sides for t in ts] + \
            [w for _, (_, pairs) in DOMAINS.items() for pair in pairs for w in pair]
    assert len(every) == len(set(every)) == len(terms) + len(words)
    assert [w for w in every if len(tok.tokenize(w)) != 1] == []


def test_corpus_carries_exactly_the_planted_rates_in_every_unit():
    spec = TinyBertSpec(rates={"gender": 0.9, "profession": 0.7, "race": 0.5, "religion": 0.5})
    corpus = generate_corpus(spec)
    assert len(corpus) == spec.n_sentences
    terms, words = _word_index()
    per_unit, tmpl = defaultdict(Counter), Counter()
    for s in corpus:
        toks = s.split()
        found = [terms[w] for w in toks if w in terms]
        if not found:
            continue
        (dom, side, i), = found
        (wdom, p, k), = [words[w] for w in toks if w in words]
        assert wdom == dom, s
        per_unit[(dom, side, i, p)][k == side] += 1  # True: the word associated with this side
        tmpl[s.replace(toks[1], "{g}").replace(toks[-2], "{a}")] += 1
    n = {sum(c.values()) for c in per_unit.values()}
    assert len(per_unit) == sum(2 * len(s[0]) * len(pairs) for s, pairs in DOMAINS.values())
    assert len(n) == 1 and n.pop() >= 40  # every unit alike, planted or not
    for (dom, *_), c in per_unit.items():
        assert c[True] == round(spec.rates[dom] * (c[True] + c[False])), (dom, c)
    assert set(tmpl) == set(TEMPLATES) and max(tmpl.values()) - min(tmpl.values()) <= len(per_unit)
    # the unrelated filler nouns never fill the attribute slot
    assert sum(s.split()[0] in ("we", "she", "there") or " and the " in s for s in corpus) == \
        len(corpus) - sum(sum(c.values()) for c in per_unit.values())


def test_small_draws_still_follow_the_rates():
    spec = TinyBertSpec(n_sentences=400, rates={"gender": 1.0, "profession": 0.0, "race": 0.5, "religion": 0.5})
    terms, words = _word_index()
    for s in generate_corpus(spec):
        toks = s.split()
        if toks[1] in terms:
            dom, side, _ = terms[toks[1]]
            _, _, k = words[toks[-2]]
            if dom == "gender":
                assert k == side, s
            if dom == "profession":
                assert k != side, s


def test_probes_are_hundreds_per_domain_and_symmetric():
    intra, crows = probes()
    per_dom = Counter(it.bias_type for it in intra)
    assert set(per_dom) == set(DOMAINS) and min(per_dom.values()) >= 60, per_dom
    assert len(crows) == len(intra) and len({it.id for it in intra}) == len(intra)
    by_id = {it.id: it for it in intra}
    for it, pr in zip(intra, crows):
        assert it.context.count("BLANK") == 1 and len(set(it.words.values())) == 3
        mirror = by_id[it.id[:-1] + str(1 - int(it.id[-1]))]  # the other side, same template / pair / term index
        assert (mirror.words["stereotype"], mirror.words["anti-stereotype"]) == \
            (it.words["anti-stereotype"], it.words["stereotype"])
        assert pr.sent_more == it.context.replace("BLANK", it.words["stereotype"])
        assert pr.sent_less == mirror.context.replace("BLANK", it.words["stereotype"])
        assert probe_cluster("probe:" + it.id) == probe_cluster(mirror.id)
    clusters = Counter(probe_cluster(it.id) for it in intra)
    assert len(clusters) == sum(len(s[0]) * len(p) for s, p in DOMAINS.values())
    assert set(clusters.values()) == {2 * len(TEMPLATES)}


def _frames(win_intra, win_crows):
    intra, crows = probes()
    si = pd.DataFrame({"sample_id": [f"p:{it.id}" for it in intra], "domain": [it.bias_type for it in intra],
                       "term": [it.target for it in intra], "score_stereotype": np.where(win_intra, 0.6, 0.4),
                       "score_anti": 0.5, "score_unrelated": 0.0})
    sc = pd.DataFrame({"sample_id": [f"c:{p.id}" for p in crows], "domain": [p.bias_type for p in crows],
                       "score_more": np.where(win_crows, -1.0, -3.0), "score_less": -2.0})
    return si, sc


def test_probe_cis_resample_units_not_items():
    intra, _ = probes()
    n = len(intra)
    part = [dict(x[:1] and (x[0], int(x[1:])) for x in it.id.split("-")[1:]) for it in intra]  # t, p, i, s
    by_unit = np.array([(d["p"] + d["i"]) % 2 == 0 for d in part])   # half the units stereotyped throughout
    by_item = np.array([(d["t"] + d["s"]) % 2 == 0 for d in part])   # half the items of every unit
    a = probe_cis(*_frames(by_unit, by_unit), n_boot=4000)
    b = probe_cis(*_frames(by_item, by_item), n_boot=4000)
    for ci in (a, b):
        assert np.allclose(ci["score"], 50) and (ci["low"] <= 50).all() and (ci["high"] >= 50).all()
        assert (ci["n_items"] >= 60).all() and (ci["n_clusters"] == 10).all()
    width_a, width_b = (a["high"] - a["low"]).to_numpy(), (b["high"] - b["low"]).to_numpy()
    # whole units agreeing: the CI is as wide as 10 coin flips (± ~31), not 60 (± ~12.6); items varying within
    # units: the unit means are all 50 and the CI is narrow
    assert (width_a > 45).all() and (width_a < 75).all(), width_a
    assert (width_b < width_a / 3).all(), (width_a, width_b)
    all_win = probe_cis(*_frames(np.ones(n, bool), np.ones(n, bool)), n_boot=500)
    assert (all_win[["score", "low", "high"]] == 100).all().all()


def test_probe_ss_is_averaged_over_terms_as_the_official_scorer_does():
    from fairq.text.scoring import crows_metrics, stereoset_metrics

    rng = np.random.default_rng(0)
    n = len(probes()[0])
    si, sc = _frames(rng.random(n) < 0.3, rng.random(n) < 0.6)
    ci = probe_cis(si, sc, n_boot=10).set_index(["benchmark", "domain"])
    ss, cr = stereoset_metrics(si, "p"), crows_metrics(sc, "c")
    for dom in DOMAINS:
        assert ci.loc[("stereoset_ss", dom), "score"] == pytest.approx(ss[f"p_ss_{dom}"])
        assert ci.loc[("crows_metric", dom), "score"] == pytest.approx(cr[f"c_{dom}"])


@pytest.mark.slow
@pytest.mark.parametrize("seed,threads", RUNS)
def test_planted_bias_is_found_where_planted_and_not_elsewhere(seed, threads, tmp_path, monkeypatch):
    import torch

    from fairq.text.embedded import pretrain
    from fairq.text.engine import MaskedLMEngine
    from fairq.text.models import bert_uncased_tokenizer
    from fairq.text.scoring import HFTokenizer, build_crows, build_stereoset, score_all, stereoset_metrics

    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        spec = _config_spec(seed=seed)  # what `python main.py --config configs/stereoset.yaml --seed <seed>` trains
        tok = bert_uncased_tokenizer()
        model, info = pretrain(spec, tok)
        intra, crows = probes()
        ht = HFTokenizer(tok)
        res = score_all(MaskedLMEngine(model), [build_stereoset(ht, intra, benchmark="p"),
                                                build_crows(ht, crows, benchmark="c")])
    finally:
        torch.set_num_threads(before)
    assert info["threads"] == threads and info["reproducibility"] == NOT_BIT_IDENTICAL
    cis = probe_cis(res["p"], res["c"], confidence=GATE_CONFIDENCE, n_boot=50000, seed=seed)
    planted = spec.planted()
    cis["planted"] = cis["domain"].map(planted)
    cis["ok"] = np.where(cis["planted"], cis["low"] > 50, (cis["low"] <= 50) & (cis["high"] >= 50))
    msg = (f"seed {seed}, {threads} thread(s), {GATE_CONFIDENCE:.2%} cluster-bootstrap CIs of the probes "
           f"(planted: CI above 50; not planted: CI contains 50):\n{cis.round(1).to_string(index=False)}")
    assert set(cis["domain"]) == set(planted) and len(cis) == 2 * len(planted), msg
    assert cis["ok"].all(), msg
    assert stereoset_metrics(res["p"], "p")["p_lms"] > 90, msg  # filler nouns never fill the attribute slot
