"""Evaluation-loop overhead: images/s of fairq's whole evaluation loop ÷ images/s of the bare model forward.

The loop (``fairq.evaluate.predict_frame`` over ``test_dataloader()``) reads the decoded-image cache, normalises,
runs the model, and builds the per-sample frame; the bare forward runs the same model on the same batches already
in memory. Target: ratio ≥ 0.9 (the loop adds ≤ ~10% to the model's own cost). Both are measured in this run.

    python benchmarks/bench_eval_loop.py                                   # synthetic default, tiny_cnn + lite0
    python benchmarks/bench_eval_loop.py --dataset utkface --root ../shared/data/utkface --image-size 128
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules import create_datamodule  # noqa: E402
from fairq.models import create_model  # noqa: E402

from _timing import forward_and_loop_seconds  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--root", default=None)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--models", nargs="+", default=["tiny_cnn", "tf_efficientnet_lite0"])
    ap.add_argument("--max-samples", type=int, default=2048, help="test samples used (per split cap)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3, help="passes of each; the best (fastest) is kept")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dm = create_datamodule(args.dataset, root=args.root, image_size=args.image_size,
                           eval_batch_size=args.batch_size, max_samples_per_split=args.max_samples)
    dm.prepare_data()
    dm.setup("test")
    loader = dm.test_dataloader()
    # the model inputs of each batch; reading them also warms the page cache for both measurements
    batches = [dm.task.split(b).args[0] for b in loader]
    n = sum(len(b) for b in batches)
    print(f"{args.dataset} test split: {n} images at {args.image_size}px, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'model':<24}{'loop img/s':>12}{'forward img/s':>15}{'ratio':>8}")
    for name in args.models:
        model = create_model(name, num_classes=dm.num_classes, pretrained=False).eval()
        t_fwd, t_loop = forward_and_loop_seconds(model, batches, dm, args.repeats)
        print(f"{name:<24}{n / t_loop:>12.1f}{n / t_fwd:>15.1f}{t_fwd / t_loop:>8.3f}")


if __name__ == "__main__":
    main()
