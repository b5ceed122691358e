"""Pruning benchmark: what structured and unstructured pruning buy in speed and bytes on CPU, in one run.

    python benchmarks/bench_pruning.py                                # all three, 2 threads
    python benchmarks/bench_pruning.py --batch-size 4 --repeats 3     # a short run

1. ResNet-50 (timm, random init, 224 px) with 50 % of its channels removed by ``channel_prune`` (torch-pruning
   DepGraph) vs dense: forward speed-up (target ≥ 2x) and serialized size.
2. A BERT-base-sized encoder (12 layers, hidden 768, 12 heads, sequence 128) with half its heads removed by
   ``head_prune`` vs dense: forward speed-up and size.
3. ResNet-50 with 70 % unstructured magnitude sparsity: bytes of the sparse (bitmask) file vs the dense
   ``torch.save``, and its latency (dense kernels: no speed-up is expected, and none is claimed).

Dense and pruned forwards are timed alternately (one of each per repeat, after warm-up) so that load from other
processes hits both alike; the ratio of medians is printed, and the ratio of the fastest runs (less sensitive to
bursts of load from other jobs). Every model is random-init: speed and size do not
depend on the weights' values (the sparse file does depend on the zero count, which is measured and printed).
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairq.compression import MethodInputs, compress, make_config  # noqa: E402
from fairq.compression.core.measure import serialized_bytes  # noqa: E402
from fairq.compression.core.sparsity import count_params, sparse_serialized_bytes  # noqa: E402
from fairq.models import create_model  # noqa: E402

TARGETS = {"resnet50 channels 50%": 2.0}


def _alternate(a, b, inputs, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of each forward of ``a`` and ``b`` on ``inputs`` (args, kwargs), timed alternately after a
    warm-up."""
    args, kwargs = inputs
    ta, tb = [], []
    with torch.inference_mode():
        a(*args, **kwargs), b(*args, **kwargs)
        for _ in range(repeats):
            for fn, times in ((a, ta), (b, tb)):
                start = time.perf_counter()
                fn(*args, **kwargs)
                times.append(time.perf_counter() - start)
    return ta, tb


def _row(name, dense, small, inputs, repeats, **extra) -> dict:
    ta, tb = _alternate(dense, small, inputs, repeats)
    t_dense, t_small = statistics.median(ta), statistics.median(tb)
    return {"case": name, "dense_ms": 1e3 * t_dense, "pruned_ms": 1e3 * t_small, "speedup": t_dense / t_small,
            "speedup_best": min(ta) / min(tb),
            "dense_MiB": serialized_bytes(dense) / 2**20, "pruned_MiB": extra.pop("pruned_bytes",
                                                                                 serialized_bytes(small)) / 2**20,
            "params_ratio": count_params(small)["params"] / count_params(dense)["params"], **extra}


def bench_channels(args) -> dict:
    torch.manual_seed(0)
    dense = create_model("resnet50", num_classes=2, pretrained=False).eval()
    x = torch.randn(args.batch_size, 3, 224, 224)
    small = compress(dense, make_config("channel_prune", ratio=0.5),
                     MethodInputs(calibration=[x[:2]], validation=None)).model.eval()
    return _row("resnet50 channels 50%", dense, small, ((x,), {}), args.repeats)


def bench_heads(args) -> dict:
    import transformers

    torch.manual_seed(0)
    cfg = transformers.BertConfig(num_labels=2, attn_implementation="sdpa")  # BERT-base sizes
    dense = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    small = compress(dense, make_config("head_prune", ratio=0.5), MethodInputs(calibration=[batch])).model.eval()
    return _row("bert-base heads 50%", dense, small, ((), batch), args.repeats)


def bench_unstructured(args) -> dict:
    torch.manual_seed(0)
    dense = create_model("resnet50", num_classes=2, pretrained=False).eval()
    x = torch.randn(args.batch_size, 3, 224, 224)
    res = compress(dense, make_config("magnitude_prune", sparsity=0.7), MethodInputs(calibration=[x[:2]]))
    buf = io.BytesIO()
    from fairq.compression.core.sparsity import save_sparse

    save_sparse(res.model, buf)
    assert buf.getbuffer().nbytes == sparse_serialized_bytes(res.model)
    return _row("resnet50 unstructured 70%", dense, res.model.eval(), ((x,), {}), args.repeats,
                pruned_bytes=buf.getbuffer().nbytes, measured_sparsity=res.record["sparsity"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", default="channels,heads,unstructured")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = {"channels": bench_channels, "heads": bench_heads, "unstructured": bench_unstructured}
    rows = [cases[c](args) for c in args.cases.split(",")]
    print(f"threads={args.threads} batch={args.batch_size} repeats={args.repeats} (medians, alternated)")
    for r in rows:
        extra = f"  sparsity {r['measured_sparsity']:.3f}" if "measured_sparsity" in r else ""
        target = TARGETS.get(r["case"])
        verdict = "" if target is None else f"  target ≥ {target}x: {'met' if r['speedup'] >= target else 'NOT met'}"
        print(f"{r['case']:28s} dense {r['dense_ms']:8.1f} ms  pruned {r['pruned_ms']:8.1f} ms  "
              f"speed-up {r['speedup']:.2f}x (best-of {r['speedup_best']:.2f}x)  size {r['dense_MiB']:.1f} → {r['pruned_MiB']:.1f} MiB "
              f"({r['pruned_MiB'] / r['dense_MiB']:.2f}x)  params {r['params_ratio']:.2f}x{extra}{verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
