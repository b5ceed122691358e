"""Real INT8 kernels vs simulated INT8: do they predict the same labels on a run's test split?

Loads each baseline checkpoint of a fairq output folder (its ``config.yaml`` rebuilds the data), quantizes it
with the same calibration batches — ``PTQConfig(8, 8, backend="int8")`` (oneDNN kernels) and the two simulations,
``backend="simulated"`` with ``simulation="graph"`` (the default: real INT8's PT2E graph, fake-quantized) and
``simulation="layer_input"`` (the older per-layer-input fake-quant) — and prints, for each simulation, the share of
test samples on which it and real INT8 predict the same label: overall, per intersectional group, and by the FP32
model's confidence (top probability, in bins), plus each model's accuracy and how often each disagrees with FP32
(a model with many near-tie predictions flips those under any perturbation). Issue 16 asks for ≥ 99% (graph).

    python benchmarks/int8_agreement.py --output_dir outputs/default
    python benchmarks/int8_agreement.py --output_dir runs/utkface --calibration_samples 256 --seed_spread
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from fairq.cli import make_context, parse_args  # noqa: E402
from fairq.compression import PTQConfig, quantize  # noqa: E402
from fairq.compression.backends.int8 import int8_ranges  # noqa: E402
from fairq.evaluate import predict_frame  # noqa: E402

CONFIDENCE_BINS = [0.5, 0.6, 0.75, 0.9, 0.99, 1.0]
ACT_RANGE = f"0..{int8_ranges()[0]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output_dir", required=True, help="a fairq output folder with baseline checkpoints")
    ap.add_argument("--calibration_samples", type=int, default=256)
    ap.add_argument("--seed_spread", action="store_true",
                    help="also calibrate each backend on a second draw: how much INT8 PTQ varies with its own data")
    args = ap.parse_args()
    out = Path(args.output_dir)
    parser, cfg, name = parse_args(["--config", str(out / "config.yaml"), "--output_dir", str(out)])
    ctx = make_context(parser, cfg, name)
    dm = ctx.data()
    for model_name in ctx.models:
        baseline = ctx.load_baseline(model_name)
        def predict(model, desc):
            return predict_frame(model, dm.test_dataloader(), sensitive_names=dm.sensitive_names,
                                 sensitive_levels=dm.sensitive_levels, desc=f"{model_name} {desc}")

        def quantized_pred(kind, seed):
            calib = list(dm.calibration_dataloader(args.calibration_samples, seed=seed))
            cfg = PTQConfig(backend="int8") if kind == "int8" else PTQConfig(backend="simulated", simulation=kind)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = quantize(baseline, cfg, calib)
            return predict(q, f"{kind} (calibration seed {seed})")

        frames = {"fp32": predict(baseline, "fp32")}
        for kind in ("int8", "graph", "layer_input"):
            frames[kind] = quantized_pred(kind, ctx.seed)
            if args.seed_spread:  # the same quantizer calibrated on a second, differently seeded draw
                frames[f"{kind}_2"] = quantized_pred(kind, ctx.seed + 1)
        real, fp = frames["int8"], frames["fp32"]
        conf = fp[[c for c in fp.columns if c.startswith("prob_")]].max(axis=1)  # top class probability
        groups = real[list(dm.sensitive_names)].astype(str).agg(", ".join, axis=1)
        print(f"\n{model_name} on {dm.dataset_name} test (n={len(real)}), INT8 activation codes {ACT_RANGE} "
              f"on this CPU; accuracy FP32 {_acc(fp):.4f}, "
              f"real INT8 {_acc(real):.4f}; FP32 vs real INT8 agree on {_agree(fp, real):.2%}")
        for kind in ("graph", "layer_input"):
            sim = frames[kind]
            assert (real["sample_id"] == sim["sample_id"]).all()
            same = real["y_pred"] == sim["y_pred"]
            print(f"  simulated INT8 ({kind}) vs real INT8: agree on {same.mean():.2%} "
                  f"({int((~same).sum())} of {len(same)} differ); accuracy {_acc(sim):.4f}; "
                  f"FP32 vs simulated agree on {_agree(fp, sim):.2%}")
            bins = pd.cut(conf, CONFIDENCE_BINS, include_lowest=True)
            by_conf = same.groupby(bins, observed=False).agg(["mean", "size"])
            print("    by FP32 top probability: " + "; ".join(
                f"{iv.left:.2f}-{iv.right:.2f} {r['mean']:.2%} (n={int(r['size'])})"
                for iv, r in by_conf.iterrows() if r["size"]))
            per_group = same.groupby(groups).agg(["mean", "size"]).sort_values("mean")
            below = per_group[per_group["mean"] < 0.99]
            print(f"    per group ({len(per_group)} groups, {len(below)} below 99%): " + "; ".join(
                f"{g} {r['mean']:.1%} (n={int(r['size'])})" for g, r in per_group.iterrows()))
        if args.seed_spread:
            for kind in ("int8", "graph", "layer_input"):
                print(f"  {kind} calibrated on two different draws agrees with itself on "
                      f"{_agree(frames[kind], frames[f'{kind}_2']):.2%}")


def _acc(frame) -> float:
    return float((frame["y_pred"] == frame["y_true"]).mean())


def _agree(a, b) -> float:
    return float((a["y_pred"] == b["y_pred"]).mean())


if __name__ == "__main__":
    main()
