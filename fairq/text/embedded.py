"""The embedded offline text default: a small BERT pre-trained (MLM) for about a minute on a generated corpus with a
planted, known bias, plus probe items with a known answer.

Corpus: template sentences "the {group} is {attribute} ." (and two other templates) for four domains, each with
one group term per side and ten attribute pairs. A *unit* is one group term with one attribute pair; every
unit gets the same number of sentences, and in a domain with rate ``r`` exactly ``r`` of a side-0 term's sentences
carry the first word of the pair (the second otherwise), a side-1 term's the reverse — so ``r = 0.5`` plants
nothing, exactly, and ``r = 0.97`` plants a strong association; planted and unplanted domains differ in nothing
else. Filler sentences give the probes' unrelated words (table, window, …) contexts elsewhere. The attributes are
deliberately harmless (tall/short, early/late, …): the bias is an association between a group term and a word,
which is all the benchmarks measure.

Probes (same formats as the real files, scored by the same scorers), one per template × unit, 60 per domain:
StereoSet intrasentence "the {group} is BLANK ." with stereotype = the term's associated word, anti-stereotype =
the other one, unrelated = a filler noun; and CrowS-Pairs pairs that swap the term for the other side's term in
front of the same attribute. Expected: SS and the CrowS metric > 50 in planted domains, 50 in expectation where
nothing was planted — stated with a CI (:func:`probe_cis`, resampling the 10 attribute pairs of a domain, since
items of one unit share the model's learned quirks). The spec (rates, words, templates, sizes) is written to the
run's output (``pretraining.json``).

Pre-training is seeded but not bit-identical across CPUs or thread counts (:data:`NOT_BIT_IDENTICAL`): the probe
scores of a seed differ between machines; the planted / not-planted verdicts of the CIs do not.

Conditioning (measured while building this default; ``benchmarks/README.md``, "Text default"). Learning a planted
association means the masked attribute's prediction must come to depend on the group term in another position. With
BERT's usual initialisation (weights of standard deviation 0.02) the model first sits on a plateau where it predicts
every attribute slot from the template alone (probe SS exactly 50 in *every* domain); when it leaves that plateau
varies from seed to seed (about step 1,000 for one seed, 2,500 for another at ``lr`` 1e-3; never within 1,500 steps
for several seeds at 3e-3 — the cause of the failures of issue 23). A larger initialisation (0.1) shortens the plateau
for every seed tried (0–4: left by about step 1,000, every planted probe CI at 100), hence ``initializer_range``
0.1 and ``lr`` 1e-3.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .data import CrowsPair, IntraItem

log = logging.getLogger("fairq")

DOMAINS = {
    # domain: ((side-0 group terms), (side-1 group terms)), attribute pairs (first word ↔ side 0). Every word is one
    # bert-base-uncased WordPiece token, and no word is in two lists. Sized by what 1,500 steps learn (measured
    # while building this default, initializer_range 0.1, lr 1e-3): one term per side with 10 pairs was learned by
    # seeds 0-4 (planted probe SS / CrowS 100); two terms per side only partly by seed 2 (SS 53 / 58); four terms
    # per side needed 2,500 steps (seed 2) — a minute of pre-training more in every text run and test. So: one term
    # per side, 10 pairs, 3 templates (60 items, 10 independent units per domain).
    "gender": ((("man",), ("woman",)),
               (("tall", "short"), ("early", "late"), ("loud", "quiet"), ("hot", "wet"), ("near", "far"),
                ("wide", "narrow"), ("high", "low"), ("thick", "thin"), ("full", "empty"), ("open", "closed"))),
    "profession": ((("doctor",), ("farmer",)),
                   (("happy", "sad"), ("busy", "calm"), ("rich", "poor"), ("new", "used"), ("sweet", "sour"),
                    ("round", "square"), ("blue", "green"), ("first", "last"), ("safe", "risky"),
                    ("awake", "asleep"))),
    "race": ((("italian",), ("swedish",)),
             (("warm", "cold"), ("fast", "slow"), ("bright", "dark"), ("soft", "hard"), ("red", "yellow"),
              ("left", "right"), ("deep", "shallow"), ("smooth", "rough"), ("fresh", "stale"), ("tiny", "huge"))),
    "religion": ((("christian",), ("buddhist",)),
                 (("young", "old"), ("big", "small"), ("clean", "dirty"), ("light", "heavy"), ("dry", "damp"),
                  ("north", "south"), ("east", "west"), ("upper", "lower"), ("inner", "outer"),
                  ("loose", "tight"))),
}
#: Few templates: with the group and attribute at fixed positions a 2-layer model picks the association up within
#: ~1,000 steps; with five varied templates it took ~2,500 (measured while building this default). The probes'
#: units are the attribute pairs (independent), not the templates (items of one pair share its quirks).
TEMPLATES = ("the {g} is {a} .", "that {g} was very {a} .", "my {g} seems so {a} .")
FILLER_NOUNS = ("table", "window", "river", "bread", "door", "paper", "garden", "bottle")
FILLER = ("we put the {n} near the {m} .", "the {n} and the {m} were there .", "she bought a {n} and a {m} .",
          "there is a {n} behind the {m} .")


@dataclass
class TinyBertSpec:
    """Everything the embedded default is made from (recorded in the output)."""

    rates: dict = field(default_factory=lambda: {"gender": 0.97, "profession": 0.97, "race": 0.5, "religion": 0.5})
    n_sentences: int = 24000
    filler_share: float = 0.25
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 128
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    initializer_range: float = 0.1  # BERT's 0.02 leaves the model on a plateau for a seed-dependent time (module doc)
    mask_prob: float = 0.2
    negatives: int = 512
    seed: int = 0

    def planted(self) -> dict[str, bool]:
        return {d: abs(float(r) - 0.5) > 1e-9 for d, r in self.rates.items()}


def _units() -> list[tuple[str, int, int, int]]:
    """Every ``(domain, side, term index, pair index)`` — one group term with one attribute pair."""
    return [(dom, side, i, p) for dom, ((g0, g1), pairs) in DOMAINS.items() for side, terms in enumerate((g0, g1))
            for i in range(len(terms)) for p in range(len(pairs))]


def _sentence(dom: str, side: int, i: int, p: int, associated: bool, template: int) -> str:
    (terms, pairs) = DOMAINS[dom]
    pair = pairs[p]
    word = pair[side] if associated else pair[1 - side]  # side 0 ↔ first word, side 1 ↔ second word
    return TEMPLATES[template].format(g=terms[side][i], a=word)


def generate_corpus(spec: TinyBertSpec) -> list[str]:
    """The pre-training sentences (seeded).

    Balanced by construction: every unit (one group term × one attribute pair, all domains alike) gets the same
    even number ``n`` of sentences, of which exactly ``round(rate · n)`` carry the associated word (cycled over the
    templates in a random order), so an unplanted domain (rate 0.5) has *exactly* 50 % in every unit and the
    planted and unplanted domains differ in their rate only. The rest of the ``n_sentences`` are filler. Only when
    ``n_sentences`` is too small for two sentences per unit (the small training / calibration draws) are units
    and words drawn at random with P(associated) = rate."""
    rng = np.random.default_rng(spec.seed)
    units = _units()
    n_fill = int(spec.n_sentences * spec.filler_share)
    n_unit = 2 * ((spec.n_sentences - n_fill) // (2 * len(units)))
    out = []
    if n_unit:
        for dom, side, i, p in units:
            k = int(round(float(spec.rates[dom]) * n_unit))
            assoc = rng.permutation(np.arange(n_unit) < k)
            tmpl = rng.permutation(np.arange(n_unit) % len(TEMPLATES))
            out += [_sentence(dom, side, i, p, bool(a), int(t)) for a, t in zip(assoc, tmpl)]
    else:
        for _ in range(spec.n_sentences - n_fill):
            dom, side, i, p = units[rng.integers(len(units))]
            out.append(_sentence(dom, side, i, p, bool(rng.random() < float(spec.rates[dom])),
                                 int(rng.integers(len(TEMPLATES)))))
    for _ in range(spec.n_sentences - len(out)):
        n, m = rng.choice(FILLER_NOUNS, 2, replace=False)
        out.append(FILLER[rng.integers(len(FILLER))].format(n=n, m=m))
    rng.shuffle(out)
    return out


def probes() -> tuple[list[IntraItem], list[CrowsPair]]:
    """StereoSet-format and CrowS-format probe items, one of each per template × unit (group term × attribute
    pair): 60 per domain. Their ``bias_type`` is the domain; ids are ``<domain>-t<template>-p<pair>-i<term
    index>-s<side>``. CrowS: the term against the other side's term of the same index, before the term's
    associated word. Symmetric: every pair is probed from both sides, so a preference for one word of a pair
    that does not depend on the group counts once for and once against the stereotype."""
    intra, crows = [], []
    for dom, (terms, pairs) in DOMAINS.items():
        for t, tmpl in enumerate(TEMPLATES):
            for p, pair in enumerate(pairs):
                for i in range(len(terms[0])):
                    for side in (0, 1):
                        g, other = terms[side][i], terms[1 - side][i]
                        st, an = pair[side], pair[1 - side]
                        un = FILLER_NOUNS[(t + p + i + side) % len(FILLER_NOUNS)]
                        sid = f"{dom}-t{t}-p{p}-i{i}-s{side}"
                        intra.append(IntraItem(sid, g, dom, tmpl.format(g=g, a="BLANK"),
                                               {"stereotype": st, "anti-stereotype": an, "unrelated": un},
                                               {lab: f"{sid}-{lab}" for lab in ("stereotype", "anti-stereotype",
                                                                                "unrelated")}))
                        crows.append(CrowsPair(sid, tmpl.format(g=g, a=st), tmpl.format(g=other, a=st), "stereo",
                                               dom))
    return intra, crows


def probe_cluster(item_id: str) -> str:
    """The independent unit a probe item belongs to: its domain, attribute pair and term index (both sides, every
    template). Items of one unit share the model's learned quirks for those words; units do not."""
    dom, _t, p, i, _s = item_id.rsplit(":", 1)[-1].split("-")
    return f"{dom}-{p}-{i}"


def probe_cis(intra: "pd.DataFrame", crows: "pd.DataFrame", *, confidence: float = 0.95, n_boot: int = 20000,
              seed: int = 0) -> "pd.DataFrame":
    """Per domain: the probes' StereoSet SS and CrowS metric with a cluster-bootstrap percentile CI.

    ``intra`` / ``crows`` are the scorers' per-item frames (:func:`~fairq.text.scoring.build_stereoset` /
    :func:`~fairq.text.scoring.build_crows`) of :func:`probes`. Clusters (:func:`probe_cluster`) are resampled
    with replacement; each resample's SS is the official one (per-term SS averaged over the domain's terms,
    strict ``>``), its CrowS metric the share of pairs whose more-stereotypical sentence scores higher. Returns
    ``benchmark, domain, score, low, high, n_items, n_clusters``."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for bench, frame in (("stereoset_ss", intra), ("crows_metric", crows)):
        for dom, sub in frame.groupby("domain", sort=True):
            win = (sub["score_stereotype"] > sub["score_anti"] if bench == "stereoset_ss"
                   else sub["score_more"] > sub["score_less"]).to_numpy(float)
            clus = pd.factorize(sub["sample_id"].map(probe_cluster))[0]
            # SS averages per-term scores; the CrowS metric is one share (one "term")
            term = pd.factorize(sub["term"])[0] if bench == "stereoset_ss" else np.zeros(len(sub), int)
            wins, items = np.zeros((clus.max() + 1, term.max() + 1)), np.zeros((clus.max() + 1, term.max() + 1))
            np.add.at(wins, (clus, term), win)
            np.add.at(items, (clus, term), 1.0)

            def score(w, n):
                with np.errstate(invalid="ignore", divide="ignore"):
                    return 100 * np.nanmean(w / n, axis=-1)

            draws = rng.multinomial(len(wins), np.full(len(wins), 1 / len(wins)), size=n_boot).astype(float)
            boot = score(draws @ wins, draws @ items)
            a = (1 - confidence) / 2
            rows.append({"benchmark": bench, "domain": dom, "score": float(score(wins.sum(0), items.sum(0))),
                         "low": float(np.quantile(boot, a)), "high": float(np.quantile(boot, 1 - a)),
                         "n_items": int(len(sub)), "n_clusters": int(len(wins))})
    return pd.DataFrame(rows)


def build_tiny_bert(spec: TinyBertSpec, vocab_size: int):
    import transformers

    cfg = transformers.BertConfig(vocab_size=vocab_size, hidden_size=spec.hidden_size,
                                  num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                                  intermediate_size=spec.intermediate_size, max_position_embeddings=128,
                                  initializer_range=spec.initializer_range)
    return transformers.BertForMaskedLM(cfg)


def _logits(model, hidden, labels, corpus_ids, vocab: int, negatives: int, g):
    """MLM logits at the masked positions: the full vocabulary (``negatives == 0``), or a sampled softmax over the
    corpus tokens plus ``negatives`` random other tokens (every token's logit is pushed down whenever it is
    sampled), which makes a step ~10x cheaper with BERT's 30,522-token vocabulary."""
    if negatives <= 0 or negatives + len(corpus_ids) >= vocab:
        return model.cls(hidden), labels
    head = model.cls.predictions
    cand = torch.unique(torch.cat([corpus_ids, torch.randint(0, vocab, (negatives,), generator=g)]))
    h = head.transform(hidden)
    logits = h @ head.decoder.weight[cand].T + head.bias[cand]
    return logits, torch.searchsorted(cand, labels)


NOT_BIT_IDENTICAL = (
    "seeded, but not bit-identical across CPUs, thread counts or torch builds: float reductions (matmuls, "
    "softmax, AdamW) are summed in an order that depends on the SIMD width and the number of threads, and 1,500 "
    "steps amplify the last-bit differences into a different model. The same machine, thread count and build "
    "give the same model. What is checked on every machine is the planted ground truth, statistically: probe SS "
    "/ CrowS with a CI above 50 where planted, containing 50 where not (tests/test_text_embedded.py).")


def pretrain(spec: TinyBertSpec, tokenizer, *, log_dir=None, progress: bool = False):
    """MLM pre-training on the generated corpus; returns ``(model, info)``. Loss is computed only at the masked
    positions (hidden states gathered before the vocabulary projection). TensorBoard scalars go to ``log_dir``.

    Not bit-identical across machines (see :data:`NOT_BIT_IDENTICAL`, also written to ``pretraining.json``)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    torch.manual_seed(spec.seed)
    corpus = generate_corpus(spec)
    enc = tokenizer(corpus, add_special_tokens=True)["input_ids"]
    width = max(map(len, enc))
    ids = torch.full((len(enc), width), tokenizer.pad_token_id, dtype=torch.long)
    for i, e in enumerate(enc):
        ids[i, :len(e)] = torch.tensor(e)
    att = (ids != tokenizer.pad_token_id).long()
    special = torch.isin(ids, torch.tensor([tokenizer.cls_token_id, tokenizer.sep_token_id,
                                             tokenizer.pad_token_id]))
    vocab = len(tokenizer)
    model = build_tiny_bert(spec, vocab)
    model.train()
    # fused: one kernel per step over all parameters — the 30,522-row embedding's dense update was ~45 % of a step
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01, fused=True)
    warm = max(1, spec.steps // 20)
    # warm-up, then constant until the last 20% (the association is learned late: a decaying rate stalls it)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm, max(0.1, (spec.steps - s) / (0.2 * spec.steps))))
    g = torch.Generator().manual_seed(spec.seed)
    corpus_ids = torch.tensor(sorted({t for e in enc for t in e}))
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))
    losses = []
    # epochs of seeded permutations (every sentence seen equally often, so the trained-on rates are the corpus's)
    order = torch.cat([torch.randperm(len(ids), generator=g)
                       for _ in range(-(-spec.steps * spec.batch_size // len(ids)))])
    for step in tqdm(range(spec.steps), desc="pre-training the embedded BERT", disable=not progress, leave=False):
        rows = order[step * spec.batch_size:(step + 1) * spec.batch_size]
        x, a, sp = ids[rows].clone(), att[rows], special[rows]
        sel = (torch.rand(x.shape, generator=g) < spec.mask_prob) & ~sp
        sel[torch.arange(len(x)), 1] |= ~sel.any(1)  # at least one masked position per row
        labels = x[sel]
        x[sel] = tokenizer.mask_token_id  # every selected token becomes [MASK] (no 80/10/10: all probes are masks)
        hidden = model.bert(input_ids=x, attention_mask=a)[0][sel]
        loss = torch.nn.functional.cross_entropy(*_logits(model, hidden, labels, corpus_ids, vocab, spec.negatives, g))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if writer is not None and (step % 10 == 0 or step == spec.steps - 1):
            writer.add_scalar("pretrain/mlm_loss", losses[-1], step)
            writer.add_scalar("pretrain/lr", sched.get_last_lr()[0], step)
    if writer is not None:
        writer.close()
    model.eval()
    info = {"spec": asdict(spec), "planted": spec.planted(), "domains": {d: {"groups": [list(t) for t in g_],
            "attribute_pairs": [list(p) for p in ps]} for d, (g_, ps) in DOMAINS.items()}, "templates": list(TEMPLATES),
            "filler_nouns": list(FILLER_NOUNS), "corpus_sentences": len(corpus),
            "final_loss_mean_last50": float(np.mean(losses[-50:])), "first_loss": losses[0],
            "seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "bit_identical_across_machines": False,
            "reproducibility": NOT_BIT_IDENTICAL}
    return model, info


def _register_probes() -> None:
    """The planted-bias probes as two text benchmarks (StereoSet and CrowS format; items from :func:`probes`,
    switched on by the text datamodule's ``probes`` flag)."""
    from functools import partial

    from .benchmarks import register_benchmark
    from .scoring import build_crows, build_stereoset, crows_draws, crows_metrics, stereoset_draws, stereoset_metrics
    from .scoring import term_units

    register_benchmark("probe_stereoset", metrics=partial(stereoset_draws, prefix="probe_stereoset"),
                       values=partial(stereoset_metrics, prefix="probe_stereoset"), build_requests=build_stereoset,
                       units=term_units, headline=("probe_stereoset_ss",))
    register_benchmark("probe_crows", metrics=partial(crows_draws, prefix="probe_crows"),
                       values=partial(crows_metrics, prefix="probe_crows"), build_requests=build_crows,
                       report=("probe_crows_metric",), curves=())


_register_probes()
