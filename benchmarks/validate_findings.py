"""How often are fairq's "supported" verdicts wrong? Simulated repetitions on a run's own stored predictions.

fairq publishes verdicts (supported / not supported / inconclusive) on disparate effects of compression. This
script measures, on the stored baseline predictions of one model of a run (e.g. the synthetic default), the
error rates of the claim "compression lowers the accuracy of group W more than that of the best group B"
(``Δacc(W) − Δacc(B) < 0``, the ``worst_vs_best`` finding), decided by the same statistics and rule as the
analysis (stratified bootstrap CI, paired permutation p, :func:`fairq.analysis.findings.verdict`; one claim per
repetition, so BH adjusts a single p and leaves it unchanged):

* **null, identical**: the "compressed" predictions are the baseline's — nothing changes for anyone;
* **null, random flips**: each prediction flips with probability ``--flip_rate`` independently of group — a damage
  that is not disparate (it lowers high-accuracy groups *more*);
* **null, equal damage**: every group loses the same accuracy in expectation (each correct prediction of group g
  flips with probability ``flip_rate · min(acc) / acc_g``) — the boundary of the hypothesis, true effect exactly 0;
* **planted**: a fraction ``--effect`` of W's correct predictions flip (W = the planted minority of the synthetic
  data, from ``data.json``; else the smallest group), nothing else changes. The true effect given the baseline is
  ``−effect × (W's correct predictions) / |W|``.

Printed: the share of "supported" verdicts under each null (false positive rate, target ≤ alpha), the share under
the planted effect (power at that size), and how often the CI contains the true effect (coverage, target ≈
1 − alpha). The last three lines are ``false_positive_rate: x``, ``power: x``, ``coverage: x``.

    python benchmarks/validate_findings.py --output_dir outputs/default
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fairq.analysis.findings import EQUIVALENCE_MARGIN, verdict  # noqa: E402
from fairq.analysis.load import load_store, make_cell  # noqa: E402
from fairq.analysis.pairs import align  # noqa: E402
from fairq.analysis.stats import joint_counts, paired_comparison  # noqa: E402
from fairq.metrics import encode_groups, group_labels  # noqa: E402


def planted_group(output_dir: Path, attrs: list[str], levels: pd.DataFrame) -> int | None:
    """Index (into ``levels``) of the synthetic data's planted minority (weakest signal), if ``data.json`` says."""
    path = output_dir / "data.json"
    if not path.is_file():
        return None
    d = json.loads(path.read_text())
    gen = d.get("generation") or {}
    if "signal_strength" not in gen or "groups" not in gen:
        return None
    codes = gen["groups"][int(np.argmin(gen["signal_strength"]))]
    names = d.get("sensitive_levels", {})
    want = {a: names[a][int(codes[a])] for a in attrs if a in codes}
    for i, row in levels.reset_index(drop=True).iterrows():
        if all(str(row[a]) == str(v) for a, v in want.items()):
            return int(i)
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output_dir", default="outputs/default")
    ap.add_argument("--model", default=None, help="model whose baseline is used (default: the first)")
    ap.add_argument("--repetitions", type=int, default=200)
    ap.add_argument("--n_bootstrap", type=int, default=400)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--flip_rate", type=float, default=0.05, help="random-flip null: per-prediction flip probability")
    ap.add_argument("--effect", type=float, default=0.2, help="planted: share of W's correct predictions flipped")
    ap.add_argument("--min_group_size", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    out = Path(args.output_dir)
    store = load_store(out)
    base_rows = store.metrics[store.metrics["method"] == "baseline"]
    if args.model:
        base_rows = base_rows[base_rows["model"] == args.model]
    if base_rows.empty:
        raise SystemExit(f"no baseline cell{' for ' + args.model if args.model else ''} in {out}/metrics.csv")
    base = store.cells[base_rows.index[0]]
    frame = base.frame
    attrs = list(base.sensitive)
    gid, groups = encode_groups(frame[attrs])
    labels = group_labels(groups)
    y, pred = frame["y_true"].to_numpy(), frame["y_pred"].to_numpy()
    n_g = np.bincount(gid, minlength=len(groups))
    acc = np.array([np.mean(pred[gid == g] == y[gid == g]) if n_g[g] else np.nan for g in range(len(groups))])
    eligible = n_g >= args.min_group_size
    w = planted_group(out, attrs, groups)
    if w is None or not eligible[w]:
        w = int(np.argmin(np.where(eligible, n_g, np.iinfo(np.int64).max)))
    b = int(np.nanargmax(np.where(eligible, acc, np.nan)))
    print(f"{out} · model {base.row['model']} · n={len(frame)} · W = {labels[w]} (n={n_g[w]}, acc {acc[w]:.3f}) · "
          f"B = {labels[b]} (n={n_g[b]}, acc {acc[b]:.3f}) · {args.repetitions} repetitions, "
          f"{args.n_bootstrap} bootstrap / permutation draws, alpha {args.alpha}")

    def stat(a_counts, b_counts):
        def accs(c):
            return np.trace(c, axis1=-2, axis2=-1) / np.maximum(c.sum(axis=(-2, -1)), 1)
        ra, rb = accs(a_counts), accs(b_counts)
        return ((rb[..., w] - ra[..., w]) - (rb[..., b] - ra[..., b]))[..., None]

    rng = np.random.default_rng(args.seed)
    correct_w = (gid == w) & (pred == y)
    equal_p = args.flip_rate * np.nanmin(acc[eligible]) / np.where(acc > 0, acc, np.inf)
    variants = {
        "null_identical": lambda: pred.copy(),
        "null_random_flips": lambda: np.where(rng.random(len(pred)) < args.flip_rate, 1 - pred, pred),
        "null_equal_damage": lambda: np.where((pred == y) & (rng.random(len(pred)) < equal_p[gid]), 1 - pred, pred),
        "planted": lambda: np.where(correct_w & (rng.random(len(pred)) < args.effect), 1 - pred, pred),
    }
    true_planted = -args.effect * correct_w.sum() / n_g[w]
    results = {}
    for name, make in variants.items():
        supported, covered = 0, 0
        for r in range(args.repetitions):
            var = make()
            cell = make_cell(base.row, frame.assign(y_pred=var), source=name)
            paired = align(base, cell)
            joint = joint_counts(paired.y_true, paired.y_base, paired.y_pred, gid, len(groups), 2)
            res = paired_comparison([joint], stat, n_bootstrap=args.n_bootstrap, n_permutations=args.n_bootstrap,
                                    seed=[args.seed, r, len(results)], confidence=1 - args.alpha)
            est, lo, hi, p = (float(res[k][0]) for k in ("estimate", "ci_low", "ci_high", "p_value"))
            v = verdict(est, lo, hi, p, "< 0", alpha=args.alpha, margin=EQUIVALENCE_MARGIN)
            supported += v == "supported"
            covered += lo <= true_planted <= hi
        results[name] = (supported / args.repetitions, covered / args.repetitions)
        print(f"{name:<20} supported in {supported}/{args.repetitions} repetitions ({results[name][0]:.3f})")
    fpr = max(results[k][0] for k in results if k.startswith("null"))
    print(f"planted effect: {args.effect:.0%} of W's correct predictions flipped, true Δacc(W) − Δacc(B) = "
          f"{true_planted:+.4f}")
    print(f"false_positive_rate: {fpr:.3f}")
    print(f"power: {results['planted'][0]:.3f}")
    print(f"coverage: {results['planted'][1]:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
