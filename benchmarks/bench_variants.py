"""Evaluating K compressed variants of one model: cost ≈ K × (model forward), not K × (decode + forward).

fairq decodes and resizes each image once per (dataset, resolution) into the uint8 cache; every variant's
evaluation (``fairq.evaluate.predict_frame`` over ``test_dataloader()``, as the quantization and mitigation phases
run it) reads that cache. This script measures, in one run, on the same test split:

- ``decode``: one pass of JPEG/PNG decode + resize over the test files (what each variant would pay again without
  the cache) — the same ``decode_image`` the cache builder uses;
- per variant: the bare forward on batches already in memory, and fairq's whole evaluation loop.

It prints ``Σ forward / Σ loop`` (target ≥ 0.9: K variants cost about K forwards) and what the same K evaluations
would cost if each re-decoded its images, ``(K × decode + Σ forward) / Σ loop``.

    python benchmarks/bench_variants.py                  # UTKFace from ../shared/data when present, else synthetic
    python benchmarks/bench_variants.py --dataset synthetic --model tiny_cnn
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules import create_datamodule  # noqa: E402
from datamodules.cache import decode_image  # noqa: E402
from fairq.compression import DynamicConfig, PTQConfig, quantize  # noqa: E402
from fairq.models import create_model  # noqa: E402

from _timing import forward_and_loop_seconds  # noqa: E402

SHARED_UTK = Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface"

# The quantization phase's default variants (QAT and mixed precision end in models of these same kinds).
VARIANTS = {
    "fp32": None,
    "ptq_static w8 (real int8)": PTQConfig(weight_bits=8, act_bits=8),
    "ptq_static w4 (simulated)": PTQConfig(weight_bits=4, act_bits=8),
    "ptq_dynamic w8": DynamicConfig(),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="utkface" if SHARED_UTK.is_dir() else "synthetic")
    ap.add_argument("--root", default=str(SHARED_UTK) if SHARED_UTK.is_dir() else None)
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--max-samples", type=int, default=1000, help="samples per split")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="passes of each; the fastest is kept")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = args.root if args.dataset != "synthetic" else None
    dm = create_datamodule(args.dataset, root=root, image_size=args.image_size,
                           eval_batch_size=args.batch_size, max_samples_per_split=args.max_samples)
    dm.prepare_data()
    dm.setup("test")
    batches = [dm.task.split(b).args[0] for b in dm.test_dataloader()]  # the model inputs of each batch
    n = sum(len(b) for b in batches)

    # One decode pass over the test split's source files (the benchmark reads the datamodule's file index).
    data_root = Path(dm.describe()["root"])
    files = dm._frame("test")["file"].tolist()  # noqa: SLF001 - the file list is internal to the datamodule
    t0 = time.perf_counter()
    for f in files:
        decode_image(data_root / f, args.image_size)
    decode_s = time.perf_counter() - t0

    model = create_model(args.model, num_classes=dm.num_classes, pretrained=False).eval()
    calib = dm.calibration_dataloader(64, seed=0)
    print(f"{args.dataset} test split: {n} images at {args.image_size}px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads; model {args.model}")
    print(f"decode + resize of the test files, one pass: {decode_s:.2f} s ({n / decode_s:.0f} img/s)")
    print(f"{'variant':<28}{'forward s':>10}{'loop s':>9}{'fwd/loop':>10}")
    sum_fwd = sum_loop = 0.0
    for name, cfg in VARIANTS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            variant = model if cfg is None else quantize(model, cfg, calib)
        t_fwd, t_loop = forward_and_loop_seconds(variant, batches, dm, args.repeats)
        sum_fwd += t_fwd
        sum_loop += t_loop
        print(f"{name:<28}{t_fwd:>10.2f}{t_loop:>9.2f}{t_fwd / t_loop:>10.3f}")
    k = len(VARIANTS)
    print(f"K = {k} variants: Σ forward / Σ loop = {sum_fwd / sum_loop:.3f} (target ≥ 0.9)")
    print(f"re-decoding per variant would cost (K × decode + Σ forward) / Σ loop = "
          f"{(k * decode_s + sum_fwd) / sum_loop:.2f}× fairq's time")


if __name__ == "__main__":
    main()
