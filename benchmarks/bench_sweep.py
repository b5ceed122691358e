"""Sweep throughput: the same cells serially and on a local Ray with N warm workers, in one run.

Two workloads, each measured serially (``--launcher local``: the 128px workload on 1 thread — one worker's share, so
the efficiency is speed-up ÷ workers against one worker —, the default workload on the process's own threads, as a
user's plain run; ``--serial_threads`` sets both)
and on Ray (``--launcher ray``, N workers × ``cpus_per_cell`` 1) into fresh output folders that start from the same
trained baselines (trained once, serially, outside the clock):

* ``default`` — the default config's own cells: every quantization and mitigation setting of
  ``configs/default.yaml`` on its data (synthetic, 64 px) for its models;
* ``128px`` — K static-PTQ settings of ``tiny_cnn`` at 128 px (seconds each: where start-up costs no longer
  hide), for ``--train_seeds`` training seeds (default 2, each with its own baseline: 82 cells).

Each prints both wall times (the mean of ``--repeats`` runs each, alternated serial, Ray, Ray, serial, …), the
speed-up (serial ÷ Ray) and the efficiency (speed-up ÷ N), and checks that every run stored the same cells with the
same values (timings aside). The Ray time includes creating the workers
(importing torch, reading the config, opening the data in each); the local Ray itself is started before the clock,
as a cluster is up before a sweep.

``--project_from DIR`` sizes the seed study's full sweep from a real run's measured per-cell costs
(:func:`project`; its assumptions are printed with it).

    python benchmarks/bench_sweep.py      # both workloads as benchmarks/README.md records them
    python benchmarks/bench_sweep.py --workloads 128px --cells 8
    python benchmarks/bench_sweep.py --workloads default --default_args "--trainer.max_epochs 1"
    python benchmarks/bench_sweep.py --project_from outputs/celeba --workers 16
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairq.cli import main as fairq_main  # noqa: E402

QUIET = ["--trainer.enable_progress_bar", "false", "--evaluation.progress", "false",
         "--analysis.figures", "false", "--analysis.report", "false"]
# wall-clock columns: they measure the machine's load, not the cell's result
TIMING = ("latency_ms", "latency_ratio_vs_fp32", "eval_seconds", "compress_seconds")
STUDY_SAMPLES = {"train": 162_770, "val": 19_867, "test": 19_962}  # CelebA's official partition


def _ptq_settings(k: int) -> list[dict]:
    """The first ``k`` of 40 distinct static-PTQ settings: 4 observers × 5 widths, per channel, then per tensor."""
    grid = [{"method": "ptq_static", "bits": b, **({"observer": o} if o else {}),
             **({} if per_channel else {"per_channel": False})}
            for per_channel in (True, False) for o in (None, "percentile", "mse", "histogram") for b in (8, 6, 4, 3, 2)]
    if k > len(grid):
        raise SystemExit(f"--cells {k}: the 128px workload has {len(grid)} distinct settings")
    return grid[:k]


def workload_args(name: str, cells: int, n_samples: int, default_args: list[str], train_seeds: int = 1) -> list[str]:
    """The command-line arguments (beyond phase, launcher and output folder) of a workload."""
    if name == "default":
        return [*QUIET, *default_args]
    seeds = ["--seeds", json.dumps(list(range(train_seeds)))] if train_seeds > 1 else []
    return [*QUIET, *seeds, "--models", "[tiny_cnn]", "--trainer.max_epochs", "1", "--mitigation.methods", "[]",
            "--data.init_args.n_samples", str(n_samples), "--data.init_args.image_size", "128",
            "--quantization.methods", json.dumps(_ptq_settings(cells))]


def _same_cells(a: Path, b: Path) -> str:
    """'' when both runs stored the same cells with the same values (timings aside), else what differs."""
    x = pd.read_csv(a / "metrics.csv").set_index("cell").sort_index()
    y = pd.read_csv(b / "metrics.csv").set_index("cell").sort_index()
    if list(x.index) != list(y.index):
        return f"cells differ: {sorted(set(x.index) ^ set(y.index))}"
    cols = [c for c in x.columns if c not in TIMING]
    try:
        pd.testing.assert_frame_equal(x[cols], y.reindex(columns=cols), check_exact=True)
    except AssertionError as err:
        return str(err).splitlines()[0]
    return ""


def _cell_work(run: Path) -> float:
    """Seconds the cells themselves measured (compression + evaluation, summed over the run's non-baseline cells)."""
    m = pd.read_csv(run / "metrics.csv")
    m = m[m["method"] != "baseline"]
    return float(m[[c for c in ("compress_seconds", "eval_seconds") if c in m]].fillna(0).to_numpy().sum())


def order(repeats: int) -> list[str]:
    """Serial and Ray runs alternated A B B A A B …, so that a machine that drifts slower or faster during the
    benchmark (seen here: the same serial cells took 119-139 s on different runs of an idle machine) weighs on both
    sides alike instead of on whichever ran second."""
    pairs = [("local", "ray") if r % 2 == 0 else ("ray", "local") for r in range(repeats)]
    return [launcher for pair in pairs for launcher in pair]


def sweep(root: Path, args: list[str], serial_threads: int | None, repeats: int = 1) -> dict:
    """Train the baselines once, then time the cells serially and on Ray, ``repeats`` times each in alternating
    order (:func:`order`), every run from a fresh copy of that folder."""
    import torch

    base = root / "baseline"
    assert fairq_main(["--phase", "baseline", "--output_dir", str(base), *args]) == 0
    runs: dict[str, list[dict]] = {"local": [], "ray": []}
    for k, launcher in enumerate(order(repeats)):
        out = root / f"{launcher}{k}"
        shutil.copytree(base, out)
        before = torch.get_num_threads()
        if launcher == "local" and serial_threads:
            torch.set_num_threads(serial_threads)
        threads = torch.get_num_threads()
        t0 = time.perf_counter()
        try:
            code = fairq_main(["--phase", "all", "--launcher", launcher, "--ray.cpus_per_cell", "1",
                               "--output_dir", str(out), *args, "--analysis.n_bootstrap", "10"])
        finally:
            torch.set_num_threads(before)
        wall = time.perf_counter() - t0
        assert code == 0, f"{launcher} run failed"
        runs[launcher].append({"dir": out, "wall": wall, "work": _cell_work(out), "threads": threads,
                               "cells": len(pd.read_csv(out / "metrics.csv"))})
    first = runs["local"][0]["dir"]
    differs = [d for d in (_same_cells(first, r["dir"]) for r in runs["local"][1:] + runs["ray"]) if d]
    mean = {k: {f: sum(r[f] for r in v) / len(v) for f in ("wall", "work")} for k, v in runs.items()}
    return {"local": mean["local"]["wall"], "ray": mean["ray"]["wall"], "serial_work": mean["local"]["work"],
            "ray_work": mean["ray"]["work"], "walls": {k: [r["wall"] for r in v] for k, v in runs.items()},
            "serial_threads": runs["local"][0]["threads"], "cells": runs["local"][0]["cells"],
            "differs": differs[0] if differs else ""}


def project(run_dir: Path, config: str | None, models: list[str], seeds: int, workers: list[int],
            image_size: int) -> None:
    """The wall time of the seed study's full sweep, from ``run_dir``'s measured per-cell costs.

    Cost model (printed with the result), fitted per method on ``run_dir``'s compression cells, each cell
    normalised by its own model's forward FLOPs per sample: the method's own work (``compress_seconds``:
    calibration, training steps, search — sized by the config, not by the dataset) scales with FLOPs; its evaluation
    (``eval_seconds``) with FLOPs × test samples. A method the run did not measure costs the run's mean. Cells are
    perfectly packed onto the workers (the longest cell is the floor)."""
    import torch

    from fairq.cli import parse_args
    from fairq.compression.core.sparsity import count_flops
    from fairq.models import create_model, input_size_keyword
    from fairq.sections import plan_run

    m = pd.read_csv(run_dir / "metrics.csv")
    env = json.loads((run_dir / "environment.json").read_text()) if (run_dir / "environment.json").exists() else {}
    comp = m[m["method"] != "baseline"].copy()
    if comp.empty or "compress_seconds" not in comp:
        raise SystemExit(f"{run_dir}/metrics.csv has no compression cells with compress_seconds (a run of this "
                         "fairq version) to project from")
    _, run_cfg, _ = parse_args(["--config", str(run_dir / "config.yaml")])
    measured_size = int(run_cfg.data.init_args.get("image_size") or image_size)
    cache: dict = {}

    def flops(name: str, size: int) -> float:
        if (name, size) not in cache:
            key = input_size_keyword(name)
            model = create_model(name, num_classes=2, pretrained=False, **({key: size} if key else {})).eval()
            cache[name, size] = float(count_flops(model, [torch.zeros(1, 3, size, size)]))
        return cache[name, size]

    comp["flops"] = [flops(name, measured_size) for name in comp["model"]]
    comp["work"] = comp["compress_seconds"].fillna(0) / comp["flops"]  # s per FLOP of one forward sample
    comp["eval"] = comp["eval_seconds"].fillna(0) / (comp["flops"] * comp["n"])
    per_method = comp.groupby("method")[["work", "eval"]].mean()
    fallback = comp[["work", "eval"]].mean()
    _, cfg, _ = parse_args(["--config", config] if config else [])
    planned = plan_run({s: cfg[s].as_dict() for s in ("quantization", "mitigation")})
    settings = [p for cells in planned.values() for p in cells]
    n_test = STUDY_SAMPLES["test"]
    total, longest, lines = 0.0, 0.0, []
    for name in models:
        f = flops(name, image_size)
        costs = [f * (per_method.loc[p.method] if p.method in per_method.index else fallback)[["work", "eval"]]
                 .dot([1.0, n_test]) for p in settings if p.runs_on(name)]
        total += seeds * sum(costs)
        longest = max([longest, *costs])
        lines.append(f"  {name:<24} {f / 1e9:6.2f} GFLOPs/sample, {len(costs)} settings × {seeds} seeds: "
                     f"{seeds * sum(costs) / 3600:8.2f} h of cells")
    span = max(flops(n, image_size) for n in models) / comp["flops"].min()
    print(f"measured: {len(comp)} compression cells of {', '.join(sorted(comp['model'].unique()))} at "
          f"{measured_size} px on {comp['n'].median():.0f} test samples in {run_dir} "
          f"({env.get('device', 'device unknown')}, {env.get('cpu_count', '?')} CPUs, "
          f"{env.get('torch_threads', '?')} threads)")
    print("  mean compress + evaluate seconds per cell: " + ", ".join(
        f"{k} {v:.1f}" for k, v in (comp["compress_seconds"].fillna(0) + comp["eval_seconds"].fillna(0))
        .groupby(comp["method"]).mean().sort_values().items()))
    print(f"study: CelebA ({n_test:,} test images) at {image_size} px, {len(models)} models, {len(settings)} planned "
          f"settings of {config or 'configs/default.yaml'}, {seeds} seeds")
    print("\n".join(lines))
    for n in workers:
        print(f"projected wall time on {n:>3} workers like the measured one: "
              f"{max(total / n, longest) / 3600:8.2f} h (perfect packing; the longest cell is the floor)")
    print("assumptions: a method's own work scales with the model's forward FLOPs (calibration sizes and training "
          "steps as configured, so an epoch-based training cell on a larger training split costs more), its "
          "evaluation with FLOPs × test samples; methods the run did not measure cost its mean; baselines "
          "(fine-tuning), Ray start-up and data preparation come on top. GPU workers: project from a run measured "
          "on a GPU (its environment.json says which device) — no GPU speed-up is assumed here.")
    if span > 100:
        print(f"warning: the study's largest model has {span:,.0f}x the FLOPs of the smallest measured one; a small "
              "model's cell is dominated by per-cell overhead (latency timing, Python), not FLOPs, so this "
              "over-estimates — project from a run of one study model on CelebA-sized data for a plan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workloads", default="default,128px", help="comma-separated: default, 128px")
    ap.add_argument("--cells", type=int, default=40, help="128px workload: PTQ cells (up to 40)")
    ap.add_argument("--train_seeds", type=int, default=2,
                    help="128px workload: training seeds, each its own baseline and its own --cells settings (a study "
                    "runs several: the seed study 3)")
    ap.add_argument("--n_samples", type=int, default=6000, help="128px workload: synthetic images (test: 30%%)")
    ap.add_argument("--default_args", default="--trainer.max_epochs 1 --data.init_args.n_samples 3000",
                    help="default workload: extra main.py arguments (the default shrinks its training and data)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="serial and Ray runs of each workload, alternated (serial, Ray, Ray, serial, ...); the "
                    "speed-up is the ratio of their mean wall times")
    ap.add_argument("--serial_threads", type=int, default=None,
                    help="intra-op threads of the serial run (default: 1 for 128px, the process's own for default)")
    ap.add_argument("--project_from", default=None, help="a run folder whose measured per-cell costs to project")
    ap.add_argument("--config", default=None, help="projection: the sweep's config (default configs/default.yaml, "
                    "which lists every registered method)")
    ap.add_argument("--models", default=None, help="projection: comma-separated models (default: the study's five)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--image_size", type=int, default=128, help="projection: the study's input size")
    ap.add_argument("--project_workers", default="1,8,32", help="projection: worker counts")
    args = ap.parse_args(argv)
    if args.project_from:
        from fairq.models.registry import STUDY_MODELS

        models = args.models.split(",") if args.models else list(STUDY_MODELS)
        project(Path(args.project_from), args.config, models, args.seeds,
                [int(n) for n in args.project_workers.split(",")], args.image_size)
        return 0
    import ray

    repo = str(Path(__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k.startswith("FAIRQ_")}
    ray.init(num_cpus=args.workers, include_dashboard=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": repo, **env}})
    results = {}
    try:
        for name in args.workloads.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                wl = workload_args(name, args.cells, args.n_samples, shlex.split(args.default_args), args.train_seeds)
                threads = args.serial_threads or (1 if name == "128px" else None)
                results[name] = sweep(Path(tmp), wl, threads, args.repeats)
    finally:
        ray.shutdown()
    print(f"\n{'workload':<10}{'cells':>6}{'serial s':>10}{'threads':>8}{'Ray s':>8}{'workers':>8}"
          f"{'speed-up':>10}{'efficiency':>11}  same cells and values")
    for name, t in results.items():
        speedup = t["local"] / t["ray"]
        print(f"{name:<10}{t['cells']:>6}{t['local']:>10.1f}{t['serial_threads']:>8}{t['ray']:>8.1f}"
              f"{args.workers:>8}{speedup:>9.2f}x{speedup / args.workers:>11.2f}  {t['differs'] or 'yes'}")
    print(f"\nwall times are the mean of {args.repeats} run(s) each, run in the order serial, Ray, Ray, serial, ...; "
          "the cells' own work is their compress_seconds + eval_seconds, summed:")
    for name, t in results.items():
        share = t["ray_work"] / args.workers
        print(f"  {name}: serial runs {', '.join(f'{w:.1f}' for w in t['walls']['local'])} s, Ray runs "
              f"{', '.join(f'{w:.1f}' for w in t['walls']['ray'])} s. Cells' own work: serial {t['serial_work']:.1f} s,"
              f" on Ray {t['ray_work']:.1f} s (x{t['ray_work'] / max(t['serial_work'], 1e-9):.2f}: {args.workers} at "
              "once, and each worker's first cell pays the first use of torch.export and oneDNN, which the warm "
              f"serial process paid before the clock), {share:.1f} s per worker; the other {t['ray'] - share:.1f} s "
              "of the Ray time are worker start, idle tails and the driver's analysis "
              f"(serial: {t['local'] - t['serial_work']:.1f} s outside the cells)")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    return 0 if not any(t["differs"] for t in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
