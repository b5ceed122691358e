"""The embedded text default: the generated corpus carries exactly the planted rates, and the scorers find the planted
bias in the pre-trained model (SS / CrowS > 50 where planted, ≈ 50 where not) — measured, not forced."""
from pathlib import Path

import pytest
import yaml

from fairq.text.embedded import DOMAINS, TEMPLATES, TinyBertSpec, generate_corpus, probes

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "stereoset.yaml"


def _config_spec(**over):
    pre = yaml.safe_load(CONFIG.read_text())["text"]["pretrain"]
    return TinyBertSpec(**{**pre, **over})


def test_corpus_carries_the_planted_rates():
    spec = TinyBertSpec(rates={"gender": 0.9, "profession": 0.7, "race": 0.5, "religion": 0.5}, n_sentences=20000)
    corpus = generate_corpus(spec)
    for dom, (groups, pairs) in DOMAINS.items():
        hit = total = 0
        for s in corpus:
            words = s.split()
            for gi, g in enumerate(groups):
                if g not in words:
                    continue
                for a, b in pairs:
                    if a in words or b in words:
                        total += 1
                        hit += (a in words) if gi == 0 else (b in words)
        assert total > 1000
        assert abs(hit / total - spec.rates[dom]) < 0.03, (dom, hit / total)


def test_probes_cover_every_domain_template_and_pair():
    intra, crows = probes()
    n = len(DOMAINS) * len(TEMPLATES) * 4 * 2
    assert len(intra) == len(crows) == n
    for it in intra:
        assert it.context.count("BLANK") == 1 and len(set(it.words.values())) == 3


@pytest.mark.slow
def test_planted_bias_is_found_where_planted_and_not_elsewhere(tmp_path, monkeypatch):
    import torch

    from fairq.text.engine import MaskedLMEngine
    from fairq.text.models import bert_uncased_tokenizer
    from fairq.text.scoring import HFTokenizer, build_crows, build_stereoset, crows_metrics, score_all, \
        stereoset_metrics

    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path))
    torch.set_num_threads(2)
    spec = _config_spec()  # exactly what `python main.py --config configs/stereoset.yaml` pre-trains
    tok = bert_uncased_tokenizer()
    from fairq.text.embedded import pretrain

    model, info = pretrain(spec, tok)
    intra, crows = probes()
    ht = HFTokenizer(tok)
    res = score_all(MaskedLMEngine(model), [build_stereoset(ht, intra, benchmark="p"), build_crows(ht, crows,
                                                                                                    benchmark="c")])
    ss, cr = stereoset_metrics(res["p"], "p"), crows_metrics(res["c"], "c")
    # The criterion: SS > 50 where planted, ≈ 50 where not (here: within 15 points; CrowS within 20, since
    # with 16 pairs per domain one pair moves it by 6.25 points).
    for dom, planted in spec.planted().items():
        if planted:
            assert ss[f"p_ss_{dom}"] > 50 and cr[f"c_{dom}"] > 50, (dom, ss[f"p_ss_{dom}"], cr[f"c_{dom}"])
        else:
            assert abs(ss[f"p_ss_{dom}"] - 50) <= 15 and abs(cr[f"c_{dom}"] - 50) <= 20, \
                (dom, ss[f"p_ss_{dom}"], cr[f"c_{dom}"])
    assert ss["p_lms"] > 90  # the unrelated filler nouns never fill the attribute slot in the corpus
