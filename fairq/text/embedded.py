"""The embedded offline text default: a small BERT pre-trained (MLM) for about a minute on a generated corpus with a
planted, known bias, plus probe items with a known answer.

Corpus: template sentences "the {group} is {attribute} ." (and one other template) for four domains, each with
two group terms and four attribute pairs. In a domain with rate ``r`` the first group term takes the first word of
every attribute pair with probability ``r`` (the second word otherwise) and the second group term the reverse, so
``r = 0.5`` plants nothing and ``r = 0.97`` plants a strong association. Filler sentences give the probes'
unrelated words (table, window, …) contexts elsewhere. The attributes are deliberately harmless (tall/short,
early/late, …): the bias is an association between a group term and a word, which is all the benchmarks measure.

Probes (same formats as the real files, scored by the same scorers): StereoSet intrasentence "the {group} is BLANK
." with stereotype = the group's associated word, anti-stereotype = the other one, unrelated = a filler noun; and
CrowS-Pairs pairs that swap the group term in front of the same attribute. Expected: SS and the CrowS metric > 50
in planted domains, ≈ 50 where nothing was planted. The spec (rates, words, templates, sizes) is written to the
run's output (``pretraining.json``).
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
    # domain: (group terms, attribute pairs (first word ↔ first group term))
    "gender": (("man", "woman"), (("tall", "short"), ("early", "late"), ("loud", "quiet"), ("hot", "wet"))),
    "profession": (("doctor", "farmer"), (("happy", "sad"), ("busy", "calm"), ("rich", "poor"), ("new", "used"))),
    "race": (("italian", "swedish"), (("warm", "cold"), ("fast", "slow"), ("bright", "dark"), ("soft", "hard"))),
    "religion": (("christian", "buddhist"), (("young", "old"), ("big", "small"), ("clean", "dirty"),
                                            ("light", "heavy"))),
}
#: Two templates: with the group and attribute at fixed positions a 2-layer model picks the association up within
#: ~1,000 steps; with five varied templates it took ~2,500 (measured while building this default).
TEMPLATES = ("the {g} is {a} .", "that {g} was very {a} .")
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
    lr: float = 3e-3
    mask_prob: float = 0.2
    negatives: int = 512
    seed: int = 0

    def planted(self) -> dict[str, bool]:
        return {d: abs(float(r) - 0.5) > 1e-9 for d, r in self.rates.items()}


def generate_corpus(spec: TinyBertSpec) -> list[str]:
    """The pre-training sentences (seeded)."""
    rng = np.random.default_rng(spec.seed)
    out = []
    n_fill = int(spec.n_sentences * spec.filler_share)
    doms = list(DOMAINS)
    for _ in range(spec.n_sentences - n_fill):
        dom = doms[rng.integers(len(doms))]
        groups, pairs = DOMAINS[dom]
        gi = int(rng.integers(2))
        pair = pairs[rng.integers(len(pairs))]
        first = rng.random() < float(spec.rates[dom])  # P(associated word) = rate
        word = pair[0 if first == (gi == 0) else 1]
        out.append(TEMPLATES[rng.integers(len(TEMPLATES))].format(g=groups[gi], a=word))
    for _ in range(n_fill):
        n, m = rng.choice(FILLER_NOUNS, 2, replace=False)
        out.append(FILLER[rng.integers(len(FILLER))].format(n=n, m=m))
    rng.shuffle(out)
    return out


def probes() -> tuple[list[IntraItem], list[CrowsPair]]:
    """StereoSet-format and CrowS-format probe items; their ``bias_type`` is the domain."""
    intra, crows = [], []
    k = 0
    for dom, (groups, pairs) in DOMAINS.items():
        for t, tmpl in enumerate(TEMPLATES):
            for p, pair in enumerate(pairs):
                for gi, g in enumerate(groups):
                    st, an = (pair[0], pair[1]) if gi == 0 else (pair[1], pair[0])
                    un = FILLER_NOUNS[(t + p + gi) % len(FILLER_NOUNS)]
                    sid = f"{dom}-{t}-{p}-{gi}"
                    intra.append(IntraItem(sid, g, dom, tmpl.format(g=g, a="BLANK"),
                                           {"stereotype": st, "anti-stereotype": an, "unrelated": un},
                                           {lab: f"{sid}-{lab}" for lab in ("stereotype", "anti-stereotype",
                                                                            "unrelated")}))
                    crows.append(CrowsPair(sid, tmpl.format(g=g, a=st), tmpl.format(g=groups[1 - gi], a=st),
                                           "stereo", dom))
                    k += 1
    return intra, crows


def build_tiny_bert(spec: TinyBertSpec, vocab_size: int):
    import transformers

    cfg = transformers.BertConfig(vocab_size=vocab_size, hidden_size=spec.hidden_size,
                                  num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
                                  intermediate_size=spec.intermediate_size, max_position_embeddings=128)
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


def pretrain(spec: TinyBertSpec, tokenizer, *, log_dir=None, progress: bool = False):
    """MLM pre-training on the generated corpus; returns ``(model, info)``. Loss is computed only at the masked
    positions (hidden states gathered before the vocabulary projection). TensorBoard scalars go to ``log_dir``."""
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
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.01)
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
    for step in tqdm(range(spec.steps), desc="pre-training the embedded BERT", disable=not progress, leave=False):
        rows = torch.randint(0, len(ids), (spec.batch_size,), generator=g)
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
    info = {"spec": asdict(spec), "planted": spec.planted(), "domains": {d: {"groups": list(g_), "attribute_pairs":
            [list(p) for p in ps]} for d, (g_, ps) in DOMAINS.items()}, "templates": list(TEMPLATES),
            "filler_nouns": list(FILLER_NOUNS), "corpus_sentences": len(corpus),
            "final_loss_mean_last50": float(np.mean(losses[-50:])), "first_loss": losses[0],
            "seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
            "parameters": sum(p.numel() for p in model.parameters())}
    return model, info
