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

``--claim text`` measures the same for the text analysis's verdicts and CIs (:mod:`fairq.analysis.text`: cluster
bootstrap, paired deltas, :func:`~fairq.analysis.findings.verdict`) on StereoSet SS, CrowS-Pairs' metric and BBQ's
disambiguated accuracy, with the benchmarks' real item structure (target terms per domain, BBQ templates per
category, CrowS pairs per bias type) of the items the text default scores (the official files under
``--text_root``, the shipped config's seeded subsets by default: ``--stereoset_items 0`` etc. for every item) or of
a text cell's stored per-item rows (``--text_rows predictions/<cell>.parquet``) and outcomes simulated with a known truth. Per
repetition, a fresh draw of a clustered latent model: for unit ``c`` and item ``i``, the baseline margin is
``β + b_c + e_i`` and the compressed one ``β + μ + b'_c + e'_i``, with ``b_c ~ N(0, σ_b²)`` shared by a unit's items,
``b'_c = ρ_b b_c + √(1−ρ_b²) σ_b z_c`` (compression moves whole units, up or down), ``e ~ N(0, 1)`` and
``e'_i = ρ_e e_i + √(1−ρ_e²) z_i``; an item "prefers the stereotype" (StereoSet, CrowS) or "answers correctly"
(BBQ) when its margin is > 0. So each metric's expectation is ``100 Φ(β / s)`` (baseline) and ``100 Φ((β + μ) / s)``
(compressed), ``s = √(σ_b² + 1)``: the true delta is 0 under the null (``μ = 0``; units still move) and known under the
planted shift. A false positive is a "supported" verdict under the null for the claim "compression raises the
metric" or for "compression lowers it" (a verdict is for one direction; the rate printed is the worst of the six
claims, and the either-direction rate is printed too); coverage is the share of paired-delta CIs that contain the
true delta (null and planted, all three metrics pooled). The same
repetitions are also analysed with every item as its own unit (``--compare_items``), to show what the item
bootstrap reported. The last two lines are ``text_false_positive_rate: x`` and ``text_coverage: x``.

    python benchmarks/validate_findings.py --claim text --text_root ../shared/data/text
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


def text_structure(args) -> pd.DataFrame:
    """Per-item rows (benchmark, domain, unit and the columns the metrics read) of the real StereoSet
    intrasentence, CrowS-Pairs and BBQ items: from a stored text cell's parquet, or read from the official files."""
    from fairq.text.task import resampling_units

    if args.text_rows:
        rows = pd.read_parquet(args.text_rows)
        rows = rows[rows["benchmark"].isin(["stereoset", "crows", "bbq"])].reset_index(drop=True)
    else:
        from datamodules.text import TextDataModule

        def size(v):
            return None if v <= 0 else v

        dm = TextDataModule(root=args.text_root, intersentence=False, probes=False,
                            stereoset_items=size(args.stereoset_items), crows_items=size(args.crows_items),
                            bbq_items=size(args.bbq_items), validation_items=0)
        dm.setup()
        intra, pairs, bbq = dm.items["stereoset"], dm.items["crows"], dm.items["bbq"]
        rows = pd.concat([
            pd.DataFrame({"sample_id": [f"stereoset:{it.id}" for it in intra], "benchmark": "stereoset",
                          "domain": [it.bias_type for it in intra], "term": [it.target for it in intra]}),
            pd.DataFrame({"sample_id": [f"crows:{p.id}" for p in pairs], "benchmark": "crows",
                          "domain": [p.bias_type for p in pairs]}),
            pd.DataFrame({"sample_id": [f"bbq:{it.id}" for it in bbq], "benchmark": "bbq",
                          "domain": [it.category for it in bbq], "question_index": [it.question_index for it in bbq],
                          "polarity": [it.polarity for it in bbq], "condition": [it.condition for it in bbq],
                          "y_true": [it.label for it in bbq], "target": [it.target for it in bbq],
                          "unknown": [it.unknown for it in bbq]})], ignore_index=True)
    rows["cluster"] = resampling_units(rows)
    return rows


def simulate_text(rows: pd.DataFrame, rng: np.random.Generator, *, beta, mu, sigma_b, rho_b, rho_e
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Baseline and compressed per-item rows drawn from the clustered latent model of the module doc."""
    codes = pd.factorize(rows["cluster"])[0]
    g, n = codes.max() + 1, len(rows)
    b = sigma_b * rng.standard_normal(g)
    b2 = rho_b * b + np.sqrt(1 - rho_b**2) * sigma_b * rng.standard_normal(g)
    e = rng.standard_normal(n)
    e2 = rho_e * e + np.sqrt(1 - rho_e**2) * rng.standard_normal(n)
    out = []
    for m in (beta + b[codes] + e, beta + mu + b2[codes] + e2):
        f = rows.copy()
        bench = f["benchmark"].to_numpy()
        ss, cr, bq = bench == "stereoset", bench == "crows", bench == "bbq"
        f["score_stereotype"] = np.where(ss, 1 / (1 + np.exp(-m)), np.nan)
        f["score_anti"], f["score_unrelated"] = np.where(ss, 0.5, np.nan), np.where(ss, 0.01, np.nan)
        f["score_more"], f["score_less"] = np.where(cr, m, np.nan), np.where(cr, 0.0, np.nan)
        if bq.any():
            yt = f["y_true"].to_numpy(float)
            wrong = np.where(f["unknown"].to_numpy(float) == (yt + 1) % 3, (yt + 2) % 3, (yt + 1) % 3)
            f["y_pred"] = np.where(bq, np.where(m > 0, yt, wrong), 1).astype(int)
            f["context_influence"] = np.nan
        f.loc[~bq, "y_pred"] = (m[~bq] > 0).astype(int)
        out.append(f)
    return out[0], out[1]


def text_claim(args) -> int:
    from scipy.stats import norm

    from fairq.analysis.text import paired_draws

    rows = text_structure(args)
    metrics = {"stereoset_intra_ss": "stereoset", "crows_metric": "crows", "bbq_accuracy_disambig": "bbq"}
    s = np.sqrt(args.sigma_b**2 + 1)
    truth = {"null": 0.0, "planted": 100 * (norm.cdf((args.beta + args.mu) / s) - norm.cdf(args.beta / s))}
    units = rows.groupby("benchmark")["cluster"].nunique().to_dict()
    print(f"text claim: {', '.join(f'{b} {int((rows.benchmark == b).sum())} items / {units[b]} units' for b in units)}"
          f" · β {args.beta}, σ_b {args.sigma_b}, ρ_b {args.rho_b}, ρ_e {args.rho_e}, planted μ {args.mu} "
          f"(true Δ {truth['planted']:+.2f} points) · {args.repetitions} repetitions, {args.n_bootstrap} bootstrap "
          f"draws, alpha {args.alpha}")
    schemes = {"clusters": rows} | ({"items": rows.assign(cluster=rows["sample_id"])} if args.compare_items else {})
    rng = np.random.default_rng(args.seed)
    # [supported "> 0", supported "< 0", covered] per scenario × unit scheme × metric
    tally = {(k, sc, m): [0, 0, 0] for k in truth for sc in schemes for m in metrics}
    for scen in truth:
        mu = 0.0 if scen == "null" else args.mu
        for r in range(args.repetitions):
            base, comp = simulate_text(rows, rng, beta=args.beta, mu=mu, sigma_b=args.sigma_b, rho_b=args.rho_b,
                                       rho_e=args.rho_e)
            for sc, struct in schemes.items():
                res = paired_draws(base.assign(cluster=struct["cluster"]), comp, n_bootstrap=args.n_bootstrap,
                                   rng=np.random.default_rng([args.seed, r, len(scen), len(sc)]),
                                   confidence=1 - args.alpha)
                for m in metrics:
                    x = res[m]
                    for j, h in enumerate(("> 0", "< 0")):
                        tally[scen, sc, m][j] += verdict(x["delta"], x["ci_low"], x["ci_high"], x["p_value"], h,
                                                         alpha=args.alpha, margin=EQUIVALENCE_MARGIN) == "supported"
                    tally[scen, sc, m][2] += x["ci_low"] <= truth[scen] <= x["ci_high"]
    n = args.repetitions
    for sc in schemes:
        for m in metrics:
            (up0, down0, cov0), (up1, _, cov1) = tally["null", sc, m], tally["planted", sc, m]
            print(f"{sc:<8} {m:<22} null: supported raises {up0}/{n}, lowers {down0}/{n}, coverage {cov0 / n:.3f}"
                  f" · planted: supported raises {up1}/{n} ({up1 / n:.3f}), coverage {cov1 / n:.3f}")
    # a verdict is for one direction (findings.verdict): the false-positive rate is the worst claim's
    fpr = max(tally["null", "clusters", m][j] / n for m in metrics for j in (0, 1))
    either = max((tally["null", "clusters", m][0] + tally["null", "clusters", m][1]) / n for m in metrics)
    cov = sum(tally[k, "clusters", m][2] for k in truth for m in metrics) / (n * len(truth) * len(metrics))
    print(f"either direction (two-sided, nominal {args.alpha}): worst metric {either:.3f}")
    print(f"text_false_positive_rate: {fpr:.3f}")
    print(f"text_coverage: {cov:.3f}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--claim", choices=("worst_vs_best", "text"), default="worst_vs_best")
    ap.add_argument("--output_dir", default="outputs/default")
    ap.add_argument("--text_root", default="../shared/data/text", help="text claim: the official benchmark files")
    ap.add_argument("--text_rows", default=None, help="text claim: a text cell's predictions parquet instead")
    for bench, n in (("stereoset", 300), ("crows", 300), ("bbq", 600)):  # configs/stereoset.yaml's subsets
        ap.add_argument(f"--{bench}_items", type=int, default=n, help="text claim: seeded subset (0 = all)")
    ap.add_argument("--beta", type=float, default=0.3, help="text claim: baseline mean margin (SS ≈ 59)")
    ap.add_argument("--mu", type=float, default=0.15, help="text claim: planted shift of the compressed margin")
    ap.add_argument("--sigma_b", type=float, default=0.6, help="text claim: sd of a unit's shared effect")
    ap.add_argument("--rho_b", type=float, default=0.7, help="text claim: unit effect correlation base/compressed")
    ap.add_argument("--rho_e", type=float, default=0.8, help="text claim: item noise correlation base/compressed")
    ap.add_argument("--compare_items", action="store_true", help="text claim: also analyse with items as units")
    ap.add_argument("--model", default=None, help="model whose baseline is used (default: the first)")
    ap.add_argument("--repetitions", type=int, default=200)
    ap.add_argument("--n_bootstrap", type=int, default=400)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--flip_rate", type=float, default=0.05, help="random-flip null: per-prediction flip probability")
    ap.add_argument("--effect", type=float, default=0.2, help="planted: share of W's correct predictions flipped")
    ap.add_argument("--min_group_size", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.claim == "text":
        return text_claim(args)

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
