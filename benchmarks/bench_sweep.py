"""Sweep throughput: K cells on a local Ray with N workers vs the same K cells serially, in one run.

Trains one tiny baseline on the synthetic default (serially, once), then evaluates K compression cells twice into
two fresh output folders — ``--launcher local`` and ``--launcher ray`` with N CPUs — and prints both wall times,
the speed-up and the parallel efficiency (speed-up ÷ N). Ray's start-up is inside the Ray time (a user pays it).

``--project_from DIR`` then sizes a cluster from a real run's measured per-cell costs: the mean ``eval_seconds``
per cell of ``DIR/metrics.csv`` (a compression cell's cost beyond its baseline) × the number of cells a study plans
(``--models`` × planned settings of ``--config`` × ``--seeds``) ÷ workers. It says what it measured and what it
assumes: evaluation cost only, perfectly packed; baselines and fine-tuning cells add their training time.

    python benchmarks/bench_sweep.py --workers 2 --cells 8
    python benchmarks/bench_sweep.py --project_from outputs/celeba_run --config configs/celeba.yaml --gpus 8
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairq.cli import main as fairq_main  # noqa: E402

TINY = ["--models", "[tiny_cnn]", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--evaluation.progress", "false",
        "--evaluation.latency_repeats", "3", "--mitigation.methods", "[]"]


def _settings(k: int) -> list[dict]:
    grid = [{"method": "ptq_static", "bits": b, **({"observer": o} if o else {})}
            for o in (None, "percentile", "mse", "histogram") for b in (8, 6, 4, 3, 2)]
    return grid[:k]


def sweep(workers: int, cells: int, root: Path, n_samples: int, image_size: int) -> dict:
    base = root / "baseline"
    data = ["--data.init_args.n_samples", str(n_samples), "--data.init_args.image_size", str(image_size)]
    assert fairq_main(["--phase", "baseline", "--output_dir", str(base), *TINY, *data]) == 0
    methods = ["--quantization.methods", json.dumps(_settings(cells)), *data]
    times = {}
    for launcher in ("local", "ray"):
        out = root / launcher
        shutil.copytree(base, out)
        extra = ["--ray.cpus_per_cell", "1"] if launcher == "ray" else []
        t0 = time.perf_counter()
        code = fairq_main(["--phase", "quantization", "--launcher", launcher, "--output_dir", str(out),
                           *TINY, *methods, *extra])
        times[launcher] = time.perf_counter() - t0
        assert code == 0, f"{launcher} run failed"
        n = len(pd.read_csv(out / "metrics.csv")) - 1
        assert n == cells, f"{launcher}: {n} cells stored, expected {cells}"
    return times


def project(run_dir: Path, config: str | None, models: int, seeds: int, workers: int) -> None:
    from fairq.cli import parse_args
    from fairq.sections import plan_run

    m = pd.read_csv(run_dir / "metrics.csv")
    comp = m[m["method"] != "baseline"]
    if comp.empty or "eval_seconds" not in comp:
        raise SystemExit(f"{run_dir}/metrics.csv has no compression cells with eval_seconds to project from")
    per_cell = float(comp["eval_seconds"].mean())
    argv = ["--config", config] if config else []
    _, cfg, _ = parse_args(argv)
    planned = plan_run({s: cfg[s].as_dict() for s in ("quantization", "mitigation")})
    n_cells = models * seeds * sum(len(v) for v in planned.values())
    print(f"measured: {len(comp)} compression cells in {run_dir}, mean evaluation {per_cell:.2f} s per cell")
    print(f"planned: {models} models × {seeds} seeds × {sum(len(v) for v in planned.values())} settings "
          f"({config or 'configs/default.yaml'}) = {n_cells} cells")
    print(f"projection (evaluation only, perfect packing): {n_cells} × {per_cell:.2f} s ÷ {workers} workers = "
          f"{n_cells * per_cell / workers / 3600:.2f} h; training time of baselines and fine-tuning cells comes on top")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cells", type=int, default=6)
    ap.add_argument("--n_samples", type=int, default=6000, help="synthetic images (test split: 30%%)")
    ap.add_argument("--image_size", type=int, default=64)
    ap.add_argument("--project_from", default=None)
    ap.add_argument("--config", default=None)
    ap.add_argument("--models", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--gpus", type=int, default=None, help="workers of the projected cluster (default: --workers)")
    args = ap.parse_args(argv)
    if args.project_from:
        project(Path(args.project_from), args.config, args.models, args.seeds, args.gpus or args.workers)
        return 0
    import ray

    repo = str(Path(__file__).resolve().parents[1])
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": repo}})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t = sweep(args.workers, args.cells, Path(tmp), args.n_samples, args.image_size)
    finally:
        ray.shutdown()
    speedup = t["local"] / t["ray"]
    print(f"{args.cells} cells: serial {t['local']:.1f} s, local Ray with {args.workers} workers {t['ray']:.1f} s")
    print(f"speed-up: {speedup:.2f}x")
    print(f"efficiency: {speedup / args.workers:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
