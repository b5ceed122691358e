"""Text benchmarks are data (fairq.text.benchmarks): a benchmark of your own is one module — here this test file —
that registers a reader, its masked-position requests and one weighted metric function; ``--phase all`` then scores
it in every cell, bootstraps it, and shows it in the tables, the curves' metric list and the report, with no other
file edited. Also: every shipped benchmark's metric function is one implementation behind both the cell's value
and the bootstrap, and the registry's own errors."""
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fairq.text.benchmarks import benchmarks, register_benchmark, unregister_benchmark
from fairq.text.data import Skipped
from fairq.text.engine import MaskRequest
from fairq.text.scoring import Job

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "stereoset.yaml"
TINY = '--text={"model": "fairq-tiny-bert", "pretrain": {"steps": 15, "batch_size": 16, "n_sentences": 400, ' \
       '"hidden_size": 32, "intermediate_size": 64, "negatives": 256}}'


# ------------------------------------------------------------------------------------------------ the toy benchmark
@dataclass(frozen=True)
class WordChoice:
    id: str
    domain: str
    prefix: str
    first: str   # the option the benchmark counts as the "stereotypical" one
    second: str


def read_word_choice(root, n_per_domain: int = 6):
    items = [WordChoice(f"{d}{i}", d, f"the {w} is", "good", "bad")
             for d, words in (("people", ("man", "woman", "doctor")), ("jobs", ("farmer", "nurse", "teacher")))
             for i, w in enumerate(words * (n_per_domain // 3))]
    return items, Skipped()


def build_word_choice(tok, items, *, benchmark="word_choice", max_len=512):
    requests, spans = [], []
    for it in items:
        ctx = tok.encode(it.prefix)
        seq = (tok.cls_id, *ctx, tok.mask_id, tok.sep_id)
        a, b = tok.encode(it.first)[0], tok.encode(it.second)[0]
        spans.append((it, len(requests)))
        requests += [MaskRequest(seq, 1 + len(ctx), a), MaskRequest(seq, 1 + len(ctx), b)]

    def finish(lp):
        return pd.DataFrame([{"sample_id": f"{benchmark}:{it.id}", "benchmark": benchmark, "domain": it.domain,
                              "score_first": float(lp[k]), "score_second": float(lp[k + 1]), "y_true": 1,
                              "y_pred": int(lp[k] > lp[k + 1])} for it, k in spans])

    return Job(benchmark, requests, finish, Skipped())


def word_choice_metrics(frame, w=None):
    """% items preferring the first option, under per-item weights (one implementation for value and bootstrap)."""
    w = np.ones((1, len(frame))) if w is None else w
    first = (frame["score_first"].to_numpy(float) > frame["score_second"].to_numpy(float)).astype(float)
    return {"word_choice_first": 100 * (w @ first) / w.sum(1)}


@pytest.fixture
def word_choice():
    register_benchmark("word_choice", metrics=word_choice_metrics, build_requests=build_word_choice,
                       reader=read_word_choice, stratum=lambda it: it.domain, columns=("word_choice_first",),
                       headline=("word_choice_first",),
                       sections=(("Word choice", lambda present: ["word_choice_first"]),))
    yield
    unregister_benchmark("word_choice")


def test_a_benchmark_registered_in_one_module_runs_through_phase_all(word_choice, tmp_path, monkeypatch):
    from fairq.cli import main

    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["--phase", "all", "--config", str(CONFIG), "--output_dir", str(out),
            # only the toy benchmark: no data files needed
            "--data.init_args.stereoset", "false", "--data.init_args.crows", "false", "--data.init_args.bbq", "false",
            "--data.init_args.probes", "false", "--data.init_args.validation_items", "0",
            "--data.init_args.root", "null", "--data.init_args.benchmarks", '{"word_choice": {"items": 8}}',
            "--evaluation.progress", "false", "--evaluation.latency_repeats", "1", TINY,
            "--quantization.calibration_samples=8",
            '--quantization.methods=[{"method": "ptq_dynamic", "bits": 8}]', "--mitigation.methods=[]",
            '--analysis={"n_bootstrap": 50, "figures": false}']
    assert main(args) == 0
    m = pd.read_csv(out / "metrics.csv")
    assert list(m["method"]) == ["baseline", "ptq_dynamic"]
    # the cell's value is the metric function on the stored per-item rows
    for _, row in m.iterrows():
        items = pd.read_parquet(out / row["predictions"])
        toy = items[items["benchmark"] == "word_choice"]
        assert len(toy) == 8 and set(toy["domain"]) == {"people", "jobs"}   # the seeded, stratified subset
        want = 100 * (toy["score_first"] > toy["score_second"]).mean()
        assert row["word_choice_first"] == pytest.approx(want)
    assert json.loads((out / "data.json").read_text())["sizes"]["word_choice"] == {"read": 12, "scored": 8}
    scores = pd.read_csv(out / "tables" / "text_scores.csv")
    toy = scores[scores["metric"] == "word_choice_first"]
    assert len(toy) == 2 and toy["value_ci_low"].le(toy["value"]).all() and toy["value"].le(toy["value_ci_high"]).all()
    compressed = toy[toy["method"] == "ptq_dynamic"].iloc[0]
    assert np.isfinite(compressed["delta"]) and np.isfinite(compressed["p_adjusted"])
    flips = pd.read_csv(out / "tables" / "text_flips.csv")
    assert "word_choice" in set(flips["benchmark"])
    report = (out / "report.html").read_text()
    assert "<h3>Word choice</h3>" in report and "word_choice_first" in report


def test_unknown_benchmark_in_a_config_is_one_clear_error():
    from fairq.errors import UserError

    from datamodules.text import TextDataModule

    with pytest.raises(UserError, match="no text benchmark 'stereosett'.*stereoset"):
        TextDataModule(benchmarks={"stereosett": {}})


def test_register_benchmark_rejects_what_it_cannot_run(word_choice):
    with pytest.raises(ValueError, match="registered twice"):
        register_benchmark("word_choice", metrics=word_choice_metrics, build_requests=build_word_choice)
    with pytest.raises(ValueError, match="exactly one of build_requests"):
        register_benchmark("no_scorer", metrics=word_choice_metrics)
    assert "no_scorer" not in benchmarks()


def test_every_shipped_benchmark_has_one_metric_implementation():
    """The cell's value of every bootstrapped metric is the benchmark's weighted function at unit weights: exactly
    equal (one function), on a frame with uneven terms per domain."""
    from fairq.analysis.text import metric_draws
    from fairq.text.task import text_metrics

    rng = np.random.default_rng(0)
    n = 37
    frame = pd.DataFrame({"sample_id": [f"stereoset:{i}" for i in range(n)], "benchmark": "stereoset",
                          "domain": rng.choice(["gender", "race", "religion"], n),
                          "term": rng.choice([f"t{k}" for k in range(7)], n),
                          "score_stereotype": rng.random(n), "score_anti": rng.random(n),
                          "score_unrelated": rng.random(n), "y_true": 1, "y_pred": 0})
    point, cell = metric_draws(frame), text_metrics(frame)
    for k, v in point.items():
        assert cell[k] == v[0], k   # exact: one implementation
    assert set(benchmarks()) >= {"stereoset", "stereoset_inter", "crows", "bbq", "probe_stereoset", "probe_crows"}


def test_an_installed_package_registers_its_benchmark_through_an_entry_point(tmp_path, monkeypatch):
    """A third-party benchmark reaches every process (Ray workers included) through a ``fairq.benchmarks`` entry
    point, with no environment variable."""
    import sys

    from fairq.text.benchmarks import plugin_modules

    (tmp_path / "fairq_bench_toy.py").write_text(
        "from fairq.text.benchmarks import register_benchmark\n"
        "register_benchmark('_bench_toy', metrics=lambda frame, w=None: {}, score=lambda model, tok, items: None)\n")
    dist = tmp_path / "fairq_bench_toy-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fairq-bench-toy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fairq.benchmarks]\nbench_toy = fairq_bench_toy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("FAIRQ_BENCHMARK_MODULES", raising=False)
    assert "fairq_bench_toy" in plugin_modules()
    try:
        assert "_bench_toy" in benchmarks()
    finally:
        unregister_benchmark("_bench_toy")
        sys.modules.pop("fairq_bench_toy", None)
