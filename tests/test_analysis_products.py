"""Analysis products as a registry: a product defined in this file alone (or in a package found through its entry
point) computes its table and writes its report section, in ``run_analysis`` and through ``--phase all``; the
settings validate themselves; the registry orders products by what they require."""
import json
import sys

import pandas as pd
import pytest

from fairq.analysis import AnalysisSettings, register_product, registered_products, run_analysis, unregister_product
from fairq.analysis.products import load_products, plugin_modules, run_order
from fairq.analysis.report import html_table
from fairq.errors import ConfigError
from tests.test_analysis_pipeline import make_store
from tests.test_engine_seams import TINY

TOY_SECTION = "<h2>Toy product: mean accuracy delta per method</h2>"


# ------------------------------------------------------------------------------------ a product of this file only
def _toy_compute(ctx):
    d = ctx.results["deltas"]
    acc = d[(d["metric"] == "accuracy") & (d["group"] == "all") & (d["method"] != "baseline")]
    table = acc.groupby("method", as_index=False)["delta"].mean().rename(columns={"delta": "mean_delta"})
    ctx.results["toy_methods"] = len(table)
    return {"toy_mean_delta": table}


def _toy_report(ctx):
    return TOY_SECTION + html_table(ctx.results["toy_mean_delta"])


@pytest.fixture
def toy_product():
    register_product("toy", _toy_compute, requires=("deltas",), report=_toy_report, order=15)
    yield "toy"
    unregister_product("toy")


def test_a_product_registered_in_a_test_writes_its_table_and_report_section(toy_product, tmp_path):
    out = make_store(tmp_path, n=400, with_mitigation=False)
    res = run_analysis(out, n_bootstrap=20, progress=False, figures=False)
    table = pd.read_csv(out / "tables" / "toy_mean_delta.csv")
    deltas = pd.read_csv(out / "tables" / "deltas.csv")
    acc = deltas[(deltas["metric"] == "accuracy") & (deltas["group"] == "all")]
    assert sorted(table["method"]) == ["ptq_static"]
    assert table["mean_delta"].iloc[0] == pytest.approx(acc.loc[acc["method"] == "ptq_static", "delta"].mean())
    assert res["tables"]["toy_mean_delta"] == out / "tables" / "toy_mean_delta.csv"
    doc = (out / "report.html").read_text()
    # in report order: after the findings (order 10), before the overview of the deltas product (order 20)
    assert doc.index("<h2>Findings</h2>") < doc.index(TOY_SECTION) < doc.index("<h2>Overview")
    unregister_product("toy")
    run_analysis(out, n_bootstrap=20, progress=False, figures=False)
    assert TOY_SECTION not in (out / "report.html").read_text()


def test_an_installed_packages_product_runs_through_phase_all(tmp_path, monkeypatch):
    """A product in a package of its own, found through its ``fairq.analysis_products`` entry point (no edit of
    fairq, no environment variable), computes its table and writes its section in ``--phase all``."""
    pkg = tmp_path / "site" / "fairq_toy_product"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from fairq.analysis import register_product\n"
        "def compute(ctx):\n"
        "    m = ctx.store.metrics\n"
        "    return {'toy_cells': m.groupby('method', as_index=False).size()}\n"
        "register_product('toy_cells', compute, applies=lambda ctx: ctx.store is not None,\n"
        "                 report=lambda ctx: '<h2>Toy cells</h2>' + str(len(ctx.results['toy_cells'])))\n")
    dist = tmp_path / "site" / "fairq_toy_product-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fairq-toy-product\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fairq.analysis_products]\ntoy_cells = fairq_toy_product\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("FAIRQ_ANALYSIS_MODULES", raising=False)
    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "cache"))
    assert "fairq_toy_product" in plugin_modules()
    out = tmp_path / "run"
    try:
        assert main_all(out) == 0
        table = pd.read_csv(out / "tables" / "toy_cells.csv")
        metrics = pd.read_csv(out / "metrics.csv")
        assert dict(zip(table["method"], table["size"])) == metrics["method"].value_counts().to_dict()
        assert "<h2>Toy cells</h2>2" in (out / "report.html").read_text()
    finally:
        unregister_product("toy_cells")
        sys.modules.pop("fairq_toy_product", None)


def main_all(out):
    from fairq.cli import main

    return main(["--phase", "all", "--output_dir", str(out), *TINY, "--mitigation.methods", "[]",
                 "--quantization.methods", json.dumps([{"method": "ptq_static", "bits": 8}])])


def test_a_module_named_in_the_environment_is_loaded(tmp_path, monkeypatch):
    (tmp_path / "fairq_env_product.py").write_text(
        "from fairq.analysis import register_product\nregister_product('env_toy', lambda ctx: {}, order=999)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("FAIRQ_ANALYSIS_MODULES", " fairq_env_product ,")
    try:
        assert [p.name for p in load_products()][-1] == "env_toy"
    finally:
        unregister_product("env_toy")
        sys.modules.pop("fairq_env_product", None)


# ------------------------------------------------------------------------------------ settings
@pytest.mark.parametrize("field, value, expected", [
    ("alpha", 1.5, "analysis.alpha must be a level strictly between 0 and 1"),
    ("alpha", 0, "analysis.alpha must be a level strictly between 0 and 1"),
    ("n_bootstrap", 0, "analysis.n_bootstrap must be a positive integer"),
    ("n_permutations", 2.5, "analysis.n_permutations must be a positive integer"),
    ("min_group_size", True, "analysis.min_group_size must be a positive integer"),
    ("margin", -0.1, "analysis.margin must be a finite number >= 0"),
    ("seed", "0", "analysis.seed must be an integer"),
])
def test_settings_reject_bad_values_with_the_field_named(field, value, expected):
    with pytest.raises(ConfigError, match=expected):
        AnalysisSettings(**{field: value})


def test_settings_derive_the_confidence_label_and_permutations():
    s = AnalysisSettings(alpha=0.1, n_bootstrap=300)
    assert (s.confidence, s.level, s.n_perm) == (pytest.approx(0.9), "90%", 300)
    assert AnalysisSettings(n_permutations=7).n_perm == 7 and AnalysisSettings().level == "95%"


def test_the_config_sections_defaults_are_the_settings_defaults():
    """The ``analysis:`` section (what the CLI parses) defaults to what ``run_analysis`` does without settings."""
    import dataclasses

    from fairq.sections import AnalysisSection

    settings = AnalysisSettings()
    for f in dataclasses.fields(AnalysisSection):
        if f.name != "seed":  # the section's None: the run's --seed
            assert f.default == getattr(settings, f.name), f.name
    assert {f.name for f in dataclasses.fields(AnalysisSection)} | {"progress"} == {
        f.name for f in dataclasses.fields(AnalysisSettings)}


def test_run_analysis_names_an_unknown_option(tmp_path):
    with pytest.raises(TypeError, match="n_boostrap"):
        run_analysis(tmp_path, n_boostrap=10)
    with pytest.raises(ConfigError, match="alpha"):
        run_analysis(tmp_path, alpha=2)  # before anything is read


# ------------------------------------------------------------------------------------ the registry
def test_products_compute_after_what_they_require_and_report_in_their_order():
    names = [p.name for p in registered_products()]
    assert names[:3] == ["findings", "deltas", "flips"]  # the report opens with the findings
    computed = [p.name for p in run_order()]
    assert computed.index("findings") > max(computed.index(n) for n in ("deltas", "flips", "exemplars"))
    assert computed.index("soft_head_pruning") > computed.index("text")


def test_a_product_requiring_an_unknown_one_or_registered_twice_is_refused():
    register_product("needs_ghost", lambda ctx: {}, requires="ghost")
    try:
        with pytest.raises(ValueError, match="requires \\['ghost'\\], which is not registered"):
            run_order()
        with pytest.raises(ValueError, match="registered twice"):
            register_product("needs_ghost", lambda ctx: {})
    finally:
        unregister_product("needs_ghost")


def test_a_product_is_skipped_when_a_product_it_requires_did_not_run(tmp_path):
    """``requires``: runs after, and only if, those ran; ``after``: an order only. (No cells: no fairq product
    applies, so only these run.)"""
    from fairq.analysis.products import AnalysisContext, compute_products

    seen = []
    register_product("never", lambda ctx: seen.append("never"), applies=lambda ctx: False)
    register_product("needs_never", lambda ctx: seen.append("needs_never"), requires=("never",), order=1)
    register_product("after_never", lambda ctx: (seen.append("after_never"), {"t": pd.DataFrame({"a": [1]})})[1],
                     after=("never", "not_registered"), order=2)
    try:
        ran = compute_products(ctx := AnalysisContext(tmp_path, AnalysisSettings()))
        assert [p.name for p in ran] == ["after_never"] and seen == ["after_never"]
        assert ctx.tables == {"t": tmp_path / "tables" / "t.csv"} and (tmp_path / "tables" / "t.csv").is_file()
    finally:
        for name in ("never", "needs_never", "after_never"):
            unregister_product(name)
