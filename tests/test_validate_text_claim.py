"""benchmarks/validate_findings.py --claim text runs on a text cell's stored per-item rows and prints its false-positive
rate and coverage (the measured values are in benchmarks/README.md; here a few repetitions on a small synthetic structure)."""
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from test_text_bootstrap import crows_rows, stereoset_rows  # noqa: E402


def _bbq_rows(n_templates=8, per=8):
    rows = []
    for t in range(n_templates):
        for i in range(per):
            rows.append({"sample_id": f"bbq:Age:{t}-{i}", "benchmark": "bbq", "domain": ("Age", "Religion")[t % 2],
                         "question_index": str(t), "polarity": ("neg", "nonneg")[i % 2],
                         "condition": ("ambig", "disambig")[(i // 2) % 2], "y_true": i % 3, "target": (i + 1) % 3,
                         "unknown": 2 if i % 3 != 2 else 0})
    return pd.DataFrame(rows)


def test_text_claim_prints_its_rates(tmp_path, capsys):
    import validate_findings

    frame = pd.concat([stereoset_rows(n_terms=8, per_term=4), crows_rows(30), _bbq_rows()], ignore_index=True)
    path = tmp_path / "cell.parquet"
    frame.to_parquet(path)
    assert validate_findings.main(["--claim", "text", "--text_rows", str(path), "--repetitions", "3",
                                   "--n_bootstrap", "50", "--compare_items"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-2].startswith("text_false_positive_rate: ") and out[-1].startswith("text_coverage: ")
    fpr, cov = (float(line.split(": ")[1]) for line in out[-2:])
    assert 0 <= fpr <= 1 and 0 <= cov <= 1
    assert sum(line.startswith(("clusters", "items")) for line in out) == 6  # 3 metrics × 2 unit schemes


def test_the_simulation_has_the_stated_truth():
    """The latent model's metric expectations: 100·Φ(β/s) at baseline, so the mean of many draws is close."""
    from scipy.stats import norm

    import validate_findings

    rows = stereoset_rows(n_terms=40, per_term=5)
    rows["cluster"] = rows["domain"] + ":" + rows["term"]
    rng = np.random.default_rng(0)
    beta, mu, sb = 0.3, 0.4, 0.6
    deltas = []
    for _ in range(150):
        base, comp = validate_findings.simulate_text(rows, rng, beta=beta, mu=mu, sigma_b=sb, rho_b=0.7, rho_e=0.8)
        pro = lambda f: 100 * (f["score_stereotype"] > f["score_anti"]).mean()  # noqa: E731 (equal items per term)
        deltas.append(pro(comp) - pro(base))
    s = np.sqrt(sb**2 + 1)
    truth = 100 * (norm.cdf((beta + mu) / s) - norm.cdf(beta / s))
    d = np.array(deltas)
    assert abs(d.mean() - truth) < 4 * d.std() / np.sqrt(len(d))
