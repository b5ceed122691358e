"""Real INT8 kernels vs the simulated INT8 model: do they predict the same labels on a run's test split?

Loads each baseline checkpoint of a fairq output folder (its ``config.yaml`` rebuilds the data), quantizes it
twice with the same calibration batches — ``PTQConfig(8, 8, backend="int8")`` (oneDNN kernels) and
``backend="simulated"`` (fake-quant) — and prints the share of test samples on which the two predictions agree,
overall, per intersectional group and among samples the FP32 model is sure of, plus each model's accuracy and
how often each disagrees with FP32 (a model with many near-tie predictions flips those under any perturbation).
Issue 3 asks for ≥ 99%.

    python benchmarks/int8_agreement.py --output_dir outputs/default
    python benchmarks/int8_agreement.py --output_dir runs/utkface --calibration_samples 256
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairq.cli import make_context, parse_args  # noqa: E402
from fairq.compression import PTQConfig, quantize  # noqa: E402
from fairq.evaluate import predict_frame  # noqa: E402


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

        def int8_pred(backend, seed):
            calib = list(dm.calibration_dataloader(args.calibration_samples, seed=seed))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = quantize(baseline, PTQConfig(weight_bits=8, act_bits=8, backend=backend), calib)
            return predict(q, f"{backend} (calibration seed {seed})")

        frames = {"fp32": predict(baseline, "fp32")}
        for backend in ("int8", "simulated"):
            frames[backend] = int8_pred(backend, ctx.seed)
            if args.seed_spread:  # the same quantizer calibrated on a second, differently seeded draw
                frames[f"{backend}_2"] = int8_pred(backend, ctx.seed + 1)
        real, sim = frames["int8"], frames["simulated"]
        assert (real["sample_id"] == sim["sample_id"]).all()
        same = real["y_pred"] == sim["y_pred"]
        print(f"{model_name} on {dm.dataset_name} test (n={len(real)}): real INT8 and simulated INT8 agree on "
              f"{same.mean():.2%} of samples; accuracy real {(real['y_pred'] == real['y_true']).mean():.4f}, "
              f"simulated {(sim['y_pred'] == sim['y_true']).mean():.4f}")
        fp = frames["fp32"]
        print(f"  for scale: FP32 vs real INT8 agree on {(fp['y_pred'] == real['y_pred']).mean():.2%}, "
              f"FP32 vs simulated INT8 on {(fp['y_pred'] == sim['y_pred']).mean():.2%}")
        if args.seed_spread:
            for backend, first in (("int8", real), ("simulated", sim)):
                again = frames[f"{backend}_2"]["y_pred"]
                print(f"  {backend} calibrated on two different draws agrees with itself on "
                      f"{(first['y_pred'] == again).mean():.2%}")
        conf = fp[[c for c in fp.columns if c.startswith("prob_")]].max(axis=1)
        for lo in (0.6, 0.75, 0.9):
            sure = conf >= lo
            print(f"  where the FP32 model's top probability ≥ {lo} ({sure.mean():.1%} of samples): "
                  f"real and simulated agree on {same[sure].mean():.2%}")
        groups = real[list(dm.sensitive_names)].astype(str).agg(", ".join, axis=1)
        per_group = same.groupby(groups).agg(["mean", "size"]).sort_values("mean")
        print("  lowest per-group agreement:", "; ".join(f"{g} {r['mean']:.1%} (n={int(r['size'])})"
                                                    for g, r in per_group.head(5).iterrows()))


if __name__ == "__main__":
    main()
