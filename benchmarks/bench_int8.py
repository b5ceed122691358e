"""Real-INT8 CPU benchmark: speed-up and serialized size of static INT8 PTQ versus FP32 eager, in one run.

    python benchmarks/bench_int8.py                       # ResNet-50 and ViT-S/16, batch 32, 2 threads
    python benchmarks/bench_int8.py --models resnet50 --batch-size 8 --repeats 3   # a short run

Targets (issue 3): ResNet-50 ≥ 2.5x faster than FP32 eager and ≤ 0.27x its size; ViT-S ≥ 1.4x faster.
Models are random-init timm models (speed and size do not depend on the weights); the input is 224 px.
FP32 and INT8 forwards are timed alternately (one of each per repeat, after warm-up) so that load from other
processes on a shared machine hits both alike; the table shows medians and their ratio.
Size: bytes written by ``torch.save(model.state_dict())`` (what ``fairq.compression.model_size_mb`` measures)
and by ``torch.save(model)`` (the whole model; for INT8 the graph travels as a ``torch.export`` archive).
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairq.compression.core.config import PTQConfig  # noqa: E402
from fairq.compression.backends.int8 import convert_static_int8  # noqa: E402
from fairq.models import create_model  # noqa: E402

TARGETS = {"resnet50": dict(speedup=2.5, size=0.27), "vit_small_patch16_224": dict(speedup=1.4)}


def _bytes(obj) -> int:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer().nbytes


def _time(fn, x) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def bench_model(name: str, args) -> dict:
    """Convert one model and time FP32 against INT8; returns one table row."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=args.num_classes, pretrained=False).eval()
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    calib = [torch.randn(args.calib_batch_size, 3, args.img_size, args.img_size) for _ in range(args.calib_batches)]

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = convert_static_int8(model, PTQConfig(), calib)
    convert_s = time.perf_counter() - start

    fp_times, q_times = [], []
    with torch.inference_mode():
        for _ in range(args.warmup):
            model(x), qmodel(x)
        for _ in range(args.repeats):
            fp_times.append(_time(model, x))
            q_times.append(_time(qmodel, x))
        out_q, out_ref = qmodel(x), qmodel.reference_forward(x)
        # Noise floor of that check: how far the reference itself moves when the input moves by 1e-5 (rounding
        # flips at quantization boundaries propagate; a random-init ViT amplifies them).
        out_ref_moved = qmodel.reference_forward(x + 1e-5 * torch.randn_like(x))
    fp_ms, q_ms = 1000 * statistics.median(fp_times), 1000 * statistics.median(q_times)
    sd_ratio = _bytes(qmodel.state_dict()) / _bytes(model.state_dict())
    full_ratio = _bytes(qmodel) / _bytes(model)
    # The int8 kernels must compute what the quantized reference graph (dequant → FP32 op → quant) computes.
    scale = out_ref.abs().max().clamp_min(1e-12).item()
    kernel_vs_ref = (out_q - out_ref).abs().max().item() / scale
    ref_noise = (out_ref_moved - out_ref).abs().max().item() / scale
    return dict(model=name, fp32_ms=fp_ms, int8_ms=q_ms, speedup=fp_ms / q_ms, size_ratio=sd_ratio,
                full_pickle_ratio=full_ratio, convert_s=convert_s, kernel_vs_ref=kernel_vs_ref, ref_noise=ref_noise,
                engine=qmodel.engine)


def _verdict(row: dict) -> str:
    target = TARGETS.get(row["model"])
    if not target:
        return "-"
    ok = row["speedup"] >= target["speedup"] and row["size_ratio"] <= target.get("size", float("inf"))
    wants = f"≥{target['speedup']}x" + (f", ≤{target['size']} size" if "size" in target else "")
    return f"{'PASS' if ok else 'MISS'} ({wants})"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "vit_small_patch16_224"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per model and precision")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--calib-batches", type=int, default=2)
    parser.add_argument("--calib-batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.batch_size < 1:
        parser.error("--repeats and --batch-size must be ≥ 1")
    torch.set_num_threads(args.threads)

    rows = []
    for name in args.models:
        print(f"[bench_int8] {name}: converting and timing ...", flush=True)
        rows.append(bench_model(name, args))

    print(f"\nbatch {args.batch_size}, {args.img_size}px, {args.threads} threads, median of {args.repeats} "
          f"(after {args.warmup} warm-up), torch {torch.__version__}, engine {rows[0]['engine'] if rows else '-'}")
    header = (f"{'model':<24}{'fp32 ms':>10}{'int8 ms':>10}{'speed-up':>10}{'size':>8}{'pickle':>8}"
              f"{'convert s':>11}{'int8-vs-ref':>13}{'ref noise':>11}  target")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['model']:<24}{r['fp32_ms']:>10.0f}{r['int8_ms']:>10.0f}{r['speedup']:>9.2f}x"
              f"{r['size_ratio']:>8.3f}{r['full_pickle_ratio']:>8.3f}{r['convert_s']:>11.1f}"
              f"{r['kernel_vs_ref']:>13.1e}{r['ref_noise']:>11.1e}  {_verdict(r)}")
    print("size = torch.save(state_dict) bytes INT8/FP32; pickle = torch.save(model) INT8/FP32; int8-vs-ref = max "
          "|int8 kernels - dequantized reference| / max |reference|; ref noise = the same for the reference at an "
          "input moved by 1e-5")
    return rows


if __name__ == "__main__":
    main()
