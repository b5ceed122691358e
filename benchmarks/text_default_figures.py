"""The text default's documented figures, regenerated: ``python main.py --phase all --config configs/stereoset.yaml``
once per seed, then each figure of every cell (FP32 baseline and each compressed cell) as mean, min and max over
the seeds, with the command, the machine and the date. README's "Text" figures and ``benchmarks/README.md`` quote
this script's output.

    python benchmarks/text_default_figures.py                    # seeds 0 1 2, fresh output folders under /tmp
    python benchmarks/text_default_figures.py --seeds 0 --keep out/   # one seed, keep the run folders

The seed sets the embedded BERT's pre-training seed and the seeded real-data subsets, so the spread over seeds is
the spread a user sees. Pre-training is not bit-identical across CPUs / thread counts (``fairq.text.embedded.
NOT_BIT_IDENTICAL``): on another machine each seed gives other numbers, inside about the same spread. Times depend
on the machine and on its load; the load average is printed next to them.
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


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def run_seed(seed: int, out: Path) -> dict:
    cmd = [sys.executable, "main.py", "--phase", "all", "--config", CONFIG, "--seed", str(seed),
           "--output_dir", str(out)]
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True)
    wall = time.perf_counter() - t0
    pre = json.loads((out / "pretraining.json").read_text()) if (out / "pretraining.json").exists() else {}
    return {"seed": seed, "command": " ".join(["python", *cmd[1:]]), "wall_s": wall,
            "pretrain_s": pre.get("seconds", float("nan")), "load_before": load0, "load_after": os.getloadavg()[0],
            "metrics": pd.read_csv(out / "metrics.csv")}


def cell_name(row) -> str:
    variant, bits = row.get("variant"), row.get("weight_bits")
    return (row["method"] + ("" if pd.isna(variant) or variant in ("", row["method"]) else f" {variant}")
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--keep", type=Path, default=None, help="keep the run folders here (one per seed)")
    ap.add_argument("--cells", default="baseline", help="'baseline' (FP32 only) or 'all' cells in the table")
    args = ap.parse_args(argv)
    base = args.keep or Path(tempfile.mkdtemp(prefix="fairq_text_figures_"))
    runs = []
    for s in args.seeds:
        runs.append(run_seed(s, base / f"seed{s}"))
        print(f"seed {s}: {runs[-1]['wall_s']:.0f} s wall ({runs[-1]['pretrain_s']} s pre-training), load average "
              f"{runs[-1]['load_before']:.1f} → {runs[-1]['load_after']:.1f}", flush=True)
    table = figures(runs)
    if args.cells == "baseline":
        table = table[table["cell"] == "baseline"]
    pd.set_option("display.width", 200)
    print(f"\ndate: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {machine()}")
    print(f"command per seed: {runs[0]['command'].replace('--seed ' + str(args.seeds[0]), '--seed <s>')}")
    print(f"seeds: {args.seeds}; run folders: {base}\n")
    print(table.round(2).to_string(index=False))
    walls = [r["wall_s"] for r in runs]
    print(f"\nwall time per run: {', '.join(f'{w:.0f} s' for w in walls)} (pre-training "
          f"{', '.join(str(r['pretrain_s']) for r in runs)} s); load average before/after: "
          f"{', '.join('%.1f/%.1f' % (r['load_before'], r['load_after']) for r in runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
