"""Cost of simulated INT-k: forward time of the simulated model ÷ forward time of its FP32 model, in one run.

    python benchmarks/bench_simulation.py                          # lite0, 128 px, batch 64, 4 bits, 2 threads
    python benchmarks/bench_simulation.py --bits 8 4 --repeats 5 --model resnet18

Both simulations of ``ptq_static`` are measured: ``graph`` (the default: the real INT8 backend's PT2E graph at k
bits, BatchNorm folded, weights dequantized once, each quantize → dequantize pair one fused fake-quant op) and
``layer_input`` (the older module swap: BatchNorm unfolded, every conv/linear input fake-quantized). Each is
timed alternately with the FP32 model on the same batch (:func:`fairq.compression.measure_latency_paired`), so
other load on a shared machine shifts both; the ratio is the median of per-repeat ratios. Target (issue 16):
≤ 1.3× FP32 for lite0 at 128 px, batch 64. The model has its offline ImageNet weights where fairq has them
(``pretrained: null``); calibration uses random batches (the time of a fake-quant op does not depend on values).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairq.compression import PTQConfig, measure_latency_paired, quantize  # noqa: E402
from fairq.models import create_model  # noqa: E402

TARGET = 1.3


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--bits", type=int, nargs="+", default=[4])
    ap.add_argument("--simulations", nargs="+", default=["graph", "layer_input"])
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=2, pretrained=None).eval()
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    calib = [torch.randn(16, 3, args.img_size, args.img_size) for _ in range(2)]
    rows = []
    for bits in args.bits:
        for sim in args.simulations:
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = quantize(model, PTQConfig(weight_bits=bits, act_bits=bits, backend="simulated", simulation=sim),
                             calib)
            convert_s = time.perf_counter() - start
            lat = measure_latency_paired(q, model, x, warmup=args.warmup, repeats=args.repeats)
            rows.append(dict(bits=bits, simulation=sim, convert_s=convert_s, **lat))
            print(f"[bench_simulation] {args.model} INT{bits} {sim}: {lat['latency_ratio_vs_fp32']:.2f}x FP32",
                  flush=True)
    print(f"\n{args.model}, {args.img_size}px, batch {args.batch_size}, {args.threads} threads, median of "
          f"{args.repeats} alternated pairs (after {args.warmup} warm-up), torch {torch.__version__}")
    header = f"{'bits':>4}  {'simulation':<12}{'sim ms':>9}{'fp32 ms':>9}{'sim/fp32':>10}{'convert s':>11}  target"
    print(header)
    print("-" * len(header))
    for r in rows:
        verdict = "PASS" if r["latency_ratio_vs_fp32"] <= TARGET else "MISS"
        print(f"{r['bits']:>4}  {r['simulation']:<12}{r['latency_ms']:>9.0f}{r['reference_latency_ms']:>9.0f}"
              f"{r['latency_ratio_vs_fp32']:>9.2f}x{r['convert_s']:>11.1f}  {verdict} (≤{TARGET}x)")
    return rows


if __name__ == "__main__":
    main()
