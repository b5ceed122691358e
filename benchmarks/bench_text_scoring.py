"""Text scoring speed: the batched masked-LM engine vs a naive one-mask-per-forward loop, on the same model and items.

    python benchmarks/bench_text_scoring.py                       # bert-base-sized random model, 2 threads
    python benchmarks/bench_text_scoring.py --full                # also run the full StereoSet dev + CrowS-Pairs
    python benchmarks/bench_text_scoring.py --root ../shared/data/text --items 60 --threads 2

Prints, in one run: (1) batched items/s ÷ naive items/s on a seeded subset of StereoSet intrasentence + CrowS-Pairs
items (same requests; the answers agree to 1e-5), for the eager engine and for the compiled one
(``compile_engine``: torch.compile, oneDNN GEMMs; its one-off compilation is timed separately and reported), (2) the
wall time of the full StereoSet dev intrasentence + CrowS-Pairs with the compiled engine — measured with ``--full``,
otherwise **extrapolated** from the subset's batched time per input token × the full sets' token count (and
labelled so), (3) BBQ seconds per 1,000 items (batched, measured on a subset and scaled — labelled). The model is a randomly initialised ``BertForMaskedLM`` of bert-base size (12
layers, hidden 768, 30,522-token vocabulary): speed does not depend on the weights.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fairq.text.data import read_bbq, read_crows, read_stereoset  # noqa: E402
from fairq.text.engine import MaskedLMEngine, naive_logprobs  # noqa: E402
from fairq.text.models import bert_uncased_tokenizer  # noqa: E402
from fairq.text.scoring import HFTokenizer, build_bbq, build_crows, build_stereoset  # noqa: E402


def _pick(items, n, seed):
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(items), size=min(n, len(items)), replace=False)
    return [items[i] for i in sorted(idx)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "text"))
    ap.add_argument("--items", type=int, default=40, help="StereoSet items in the timed subset (CrowS: half)")
    ap.add_argument("--bbq_items", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--size", choices=["base", "tiny"], default="base", help="bert-base-sized or a 2-layer model")
    ap.add_argument("--full", action="store_true", help="also time the full StereoSet dev + CrowS-Pairs (slow)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no_compile", action="store_true", help="the 'compiled' engine runs eager (for comparison)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    root = Path(args.root)
    tok = HFTokenizer(bert_uncased_tokenizer())
    torch.manual_seed(args.seed)
    cfg = transformers.BertConfig() if args.size == "base" else transformers.BertConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
    model = transformers.BertForMaskedLM(cfg).eval()
    intra, _, _ = read_stereoset(root / "stereoset_dev.json")
    pairs, _ = read_crows(root / "crows_pairs_anonymized.csv")
    bbq, _ = read_bbq(root / "bbq")
    sub_ss, sub_cr = _pick(intra, args.items, args.seed), _pick(pairs, max(1, args.items // 2), args.seed)
    reqs = build_stereoset(tok, sub_ss).requests + build_crows(tok, sub_cr).requests
    n_items = len(sub_ss) + len(sub_cr)
    out = {"model": f"random BertForMaskedLM ({args.size}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
           "parameters)", "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "load_average_at_start": os.getloadavg()[0], "subset_items": n_items, "subset_requests": len(reqs)}

    def tokens(requests):  # input tokens the engine runs (requests that share an input run it once)
        return sum(len(ids) for ids, _ in {(r.ids, r.pos) for r in requests})

    engine = MaskedLMEngine(model, pad_id=tok.pad_id, batch_size=args.batch_size)
    engine.logprobs(reqs[:8])  # warm-up
    t0 = time.perf_counter()
    fast = engine.logprobs(reqs)
    t_batched = time.perf_counter() - t0
    compiled = MaskedLMEngine(model, pad_id=tok.pad_id, batch_size=args.batch_size, compile=not args.no_compile)
    t0 = time.perf_counter()
    compiled.logprobs(reqs[:args.batch_size])  # compilation (dynamic shapes: once for every batch shape)
    t_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    fast_c = compiled.logprobs(reqs)
    t_compiled = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = naive_logprobs(model, reqs)
    t_naive = time.perf_counter() - t0
    out.update(engine_rows=engine.rows, subset_input_tokens=tokens(reqs),
               naive_seconds=round(t_naive, 2), naive_items_per_s=round(n_items / t_naive, 3),
               batched_eager_seconds=round(t_batched, 2), batched_eager_items_per_s=round(n_items / t_batched, 2),
               speedup_eager=round(t_naive / t_batched, 2),
               compiled=compiled.compile, compile_seconds_once=round(t_compile, 1),
               batched_compiled_seconds=round(t_compiled, 2),
               batched_compiled_items_per_s=round(n_items / t_compiled, 2),
               speedup_compiled=round(t_naive / t_compiled, 2),
               max_abs_logprob_diff_eager=float(np.abs(fast - slow).max()),
               max_abs_logprob_diff_compiled=float(np.abs(fast_c - slow).max()))

    full = build_stereoset(tok, intra).requests + build_crows(tok, pairs).requests
    out["full_stereoset_crows_items"] = len(intra) + len(pairs)
    out["full_stereoset_crows_requests"] = len(full)
    out["full_stereoset_crows_input_tokens"] = tokens(full)
    if args.full:
        t0 = time.perf_counter()
        compiled.logprobs(full)
        out["full_stereoset_crows_seconds_measured_compiled"] = round(time.perf_counter() - t0 + t_compile, 1)
    else:
        out["full_stereoset_crows_seconds_EXTRAPOLATED_compiled"] = round(
            t_compile + t_compiled / out["subset_input_tokens"] * out["full_stereoset_crows_input_tokens"], 1)
        out["full_stereoset_crows_seconds_EXTRAPOLATED_eager"] = round(
            t_batched / out["subset_input_tokens"] * out["full_stereoset_crows_input_tokens"], 1)
        out["extrapolation"] = ("subset batched seconds per input token × the full sets' input tokens (+ the one "
                                "compilation); run with --full to measure it")
    engine = compiled
    sub_bbq = _pick(bbq, args.bbq_items, args.seed)
    job = build_bbq(tok, sub_bbq)
    t0 = time.perf_counter()
    engine.logprobs(job.requests)
    t_bbq = time.perf_counter() - t0
    out.update(bbq_subset_items=len(sub_bbq), bbq_subset_seconds=round(t_bbq, 2),
               bbq_seconds_per_1000_items_SCALED=round(t_bbq / len(sub_bbq) * 1000, 1),
               bbq_all_items=len(bbq), load_average_at_end=os.getloadavg()[0])
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
