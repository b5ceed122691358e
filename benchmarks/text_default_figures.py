"""The text default's documented figures, regenerated: ``python main.py --phase all --config configs/stereoset.yaml``
once per seed, then each figure of every cell (FP32 baseline and each compressed cell) as mean, min and max over
the seeds, with the command, the machine and the date. README's "Text" figures and ``benchmarks/README.md`` quote
this script's output.

    python benchmarks/text_default_figures.py                    # seeds 0 1 2, fresh output folders under /tmp
    python benchmarks/text_default_figures.py --seeds 0 --keep out/   # one seed, keep the run folders
    python benchmarks/text_default_figures.py --jobs 3 --threads 1   # the seeds side by side, one thread each

The training seed sets the embedded BERT's pre-training and the calibration draws; the real-data subsets are the
data seed's (``data.init_args.seed``), the same for every training seed — so a pretrained subject's FP32 cell
(``fairq-minilm-mlm``) does not move with it. Pre-training is not bit-identical across CPUs / thread counts
(``fairq.text.embedded.NOT_BIT_IDENTICAL``): on another machine each seed gives other numbers, inside about the same
spread. Times depend on the machine and on its load; the load average is printed next to them.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # fairq from this checkout, as the other benchmarks do
CONFIG = "configs/stereoset.yaml"
#: (column, label) of the figures the README quotes, in print order
FIGURES = (("stereoset_intra_ss", "StereoSet SS"), ("stereoset_intra_lms", "StereoSet LMS"),
           ("stereoset_intra_icat", "StereoSet ICAT"), ("crows_metric", "CrowS metric"),
           ("bbq_accuracy_ambig", "BBQ accuracy ambiguous"), ("bbq_accuracy_disambig", "BBQ accuracy disambiguated"),
           ("bbq_bias_ambig", "BBQ s_AMB"), ("bbq_bias_disambig", "BBQ s_DIS"),
           ("bbq_context_influence", "BBQ context influence"),
           ("probe_stereoset_ss", "probe SS"), ("probe_crows_metric", "probe CrowS"),
           *((f"probe_stereoset_ss_{d}", f"probe SS {d}") for d in ("gender", "profession", "race", "religion")),
           *((f"probe_crows_{d}", f"probe CrowS {d}") for d in ("gender", "profession", "race", "religion")))


def machine(threads: int | None = None) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    n = threads or torch.get_num_threads()
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({n} threads per run), "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def start_seed(seed: int, out: Path, threads: int | None = None) -> dict:
    cmd = [sys.executable, "main.py", "--phase", "all", "--config", CONFIG, "--seed", str(seed),
           "--output_dir", str(out)]
    out.mkdir(parents=True, exist_ok=True)
    log = open(out.parent / f"seed{seed}.log", "w")
    return {"seed": seed, "out": out, "command": " ".join(["python", *cmd[1:]]), "load_before": os.getloadavg()[0],
            "t0": time.perf_counter(), "proc": subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})})}


def finish_seed(run: dict) -> dict:
    if run["proc"] is not None and run["proc"].wait() != 0:
        raise SystemExit(f"seed {run['seed']} failed: see {run['out'].parent / ('seed%d.log' % run['seed'])}")
    run["wall_s"] = time.perf_counter() - run["t0"]
    run["load_after"] = os.getloadavg()[0]
    pre = run["out"] / "pretraining.json"
    run["pretrain_s"] = json.loads(pre.read_text()).get("seconds", float("nan")) if pre.exists() else float("nan")
    run["metrics"] = pd.read_csv(run["out"] / "metrics.csv")
    return run


def cell_name(row) -> str:
    """``<model>: <method> [variant] (k bits)``."""
    variant, bits = row.get("variant"), row.get("weight_bits")
    return (f"{row['model']}: " + row["method"]
            + ("" if pd.isna(variant) or variant in ("", row["method"]) else f" {variant}")
            + ("" if pd.isna(bits) or float(bits) >= 32 else f" ({float(bits):g} bits)"))


def figures(runs: list[dict]) -> pd.DataFrame:
    """One row per cell × figure: the value per seed, mean, min, max."""
    rows = []
    for r in runs:
        m = r["metrics"]
        for _, row in m.iterrows():
            for col, label in FIGURES:
                if col in m.columns and pd.notna(row[col]):
                    rows.append({"cell": cell_name(row), "figure": label, "seed": r["seed"], "value": row[col]})
    long = pd.DataFrame(rows)
    wide = long.pivot_table(index=["cell", "figure"], columns="seed", values="value", sort=False)
    wide.columns = [f"seed {s}" for s in wide.columns]
    vals = wide.to_numpy()
    wide["mean"], wide["min"], wide["max"] = vals.mean(1), vals.min(1), vals.max(1)
    return wide.reset_index()


def cells_table(table: pd.DataFrame) -> pd.DataFrame:
    """Headline figures of every cell as ``mean [min, max]``, one row per cell."""
    head = ("StereoSet SS", "StereoSet LMS", "CrowS metric", "BBQ s_AMB", "probe SS", "probe CrowS")
    sub = table[table["figure"].isin(head)].copy()
    sub["text"] = [f"{m:.1f} [{lo:.1f}, {hi:.1f}]" for m, lo, hi in zip(sub["mean"], sub["min"], sub["max"])]
    out = sub.pivot(index="cell", columns="figure", values="text").reindex(columns=list(head))
    return out.reindex(list(dict.fromkeys(table["cell"])))


def probe_verdicts(run: dict) -> pd.DataFrame:
    """The FP32 baseline's probe scores with 95 % cluster-bootstrap CIs (:func:`fairq.text.embedded.probe_cis`)
    and the planted-bias verdict: CI above 50 where planted, containing 50 where not."""
    from fairq.text.embedded import probe_cis
    from fairq.text.models import EMBEDDED

    m = run["metrics"]
    base = m[(m["method"] == "baseline") & (m["model"] == EMBEDDED)].iloc[0]  # the model the bias was planted in
    frame = pd.read_parquet(run["out"] / base["predictions"])
    ci = probe_cis(frame[frame["benchmark"] == "probe_stereoset"], frame[frame["benchmark"] == "probe_crows"],
                   seed=run["seed"])
    planted = json.loads((run["out"] / "pretraining.json").read_text())["planted"]
    ci["planted"] = ci["domain"].map(planted)
    ci["verdict_holds"] = [lo > 50 if p else lo <= 50 <= hi for lo, hi, p in zip(ci["low"], ci["high"], ci["planted"])]
    ci.insert(0, "seed", run["seed"])
    return ci


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--keep", type=Path, default=None, help="keep the run folders here (one per seed)")
    ap.add_argument("--from_runs", action="store_true",
                    help="only aggregate the finished seed<s>/ folders under --keep (no runs, no times)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per run (OMP_NUM_THREADS; default: torch's own, one per core)")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run at once (1: timings of one run alone)")
    args = ap.parse_args(argv)
    base = args.keep or Path(tempfile.mkdtemp(prefix="fairq_text_figures_"))
    runs, pending = [], list(args.seeds)
    if args.from_runs:  # aggregate finished folders (no times)
        runs = [finish_seed({"seed": s, "out": base / f"seed{s}", "proc": None, "t0": float("nan"),
                             "load_before": float("nan"), "command": ""}) for s in args.seeds]
        pending = []
    while pending:  # at most --jobs runs at a time (their times then include each other's load)
        batch, pending = pending[:args.jobs], pending[args.jobs:]
        for run in [start_seed(s, base / f"seed{s}", args.threads) for s in batch]:
            runs.append(finish_seed(run))
            print(f"seed {run['seed']}: {run['wall_s']:.0f} s wall ({run['pretrain_s']} s pre-training), load "
                  f"average {run['load_before']:.1f} → {run['load_after']:.1f}", flush=True)
    table = figures(runs)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 70)
    print(f"\ndate: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    env = runs[0]["out"] / "environment.json"  # the threads the runs really used
    used = json.loads(env.read_text()).get("torch_threads") if env.exists() else None
    print(f"machine: {machine(used or args.threads)}")
    print(f"command per seed: python main.py --phase all --config {CONFIG} --seed <s> --output_dir <folder>")
    print(f"seeds: {args.seeds} ({args.jobs} at a time); run folders: {base}\n")
    for model in dict.fromkeys(runs[0]["metrics"]["model"]):
        print(f"FP32 baseline of {model}:")
        print(table[table["cell"] == f"{model}: baseline"].drop(columns="cell").round(2).to_string(index=False))
    print("\nevery cell, mean [min, max] over the seeds:")
    print(cells_table(table).to_string())
    print("\nplanted-bias probes of the embedded BERT's FP32 baseline, 95 % cluster-bootstrap CIs (a domain's "
          "attribute pairs resampled):")
    print(pd.concat([probe_verdicts(r) for r in runs]).round(1).to_string(index=False))
    walls = [r["wall_s"] for r in runs]
    print(f"\nwall time per run: {', '.join(f'{w:.0f} s' for w in walls)} (pre-training "
          f"{', '.join(str(r['pretrain_s']) for r in runs)} s); load average before/after: "
          f"{', '.join('%.1f/%.1f' % (r['load_before'], r['load_after']) for r in runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
