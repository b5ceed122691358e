"""The engine's seams: a method registered in this file alone runs through the phases and analysis; the library
layers import nothing above them; config typos fail at startup; batches are read in one place."""
import ast
import dataclasses
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from fairq.batches import ClassificationTask, predict, split_batch
from fairq.cli import main
from fairq.compression import MethodResult, register_method
from fairq.compression.core.config import MethodConfig
from fairq.compression.core.modules import quantizable_layers
from fairq.compression.core.registry import Artifact, unregister_method

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--data.init_args.n_samples", "400", "--data.init_args.image_size", "32", "--data.init_args.batch_size", "32",
    "--data.init_args.eval_batch_size", "32", "--models", "[tiny_cnn]", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
    "--evaluation.latency_repeats", "2", "--evaluation.progress", "false",
    "--analysis.n_bootstrap", "50", "--analysis.figures", "false",
]


# ------------------------------------------------------------------------------------ a method of this file only
@dataclasses.dataclass
class SignConfig(MethodConfig):
    """Toy method: every Conv/Linear weight becomes ``scale · sign(w)`` per output channel (1 bit)."""

    weight_bits: int = 1
    shrink: float = 1.0


def _sign_handler(model: nn.Module, config: SignConfig, inputs) -> MethodResult:
    seen = sum(1 for _ in inputs.validation)  # declared need: the phase must have built it
    with torch.no_grad():
        for mod in quantizable_layers(model).values():
            w = mod.weight
            scale = w.abs().flatten(1).mean(1).view(-1, *([1] * (w.ndim - 1)))
            w.copy_(config.shrink * scale * torch.sign(w))
    return MethodResult(model, weight_bits=1, act_bits=None, backend="simulated", record={"toy_val_batches": seen},
                        artifacts=[Artifact("toy", {"shrink": config.shrink, "val_batches": seen}, column="toy")])


@pytest.fixture
def sign_method():
    register_method("_sign", SignConfig, _sign_handler, needs={"validation"}, family="toy")
    yield "_sign"
    unregister_method("_sign")


def test_a_method_registered_in_a_test_runs_through_the_phases_and_analysis(sign_method, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIRQ_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    args = ["--output_dir", str(out), *TINY,
            "--quantization.methods", json.dumps([{"method": "_sign"}, {"method": "_sign", "shrink": [0.5]}])]
    assert main(["--phase", "baseline", *args]) == 0
    assert main(["--phase", "quantization", *args]) == 0
    m = pd.read_csv(out / "metrics.csv", keep_default_na=False)
    toy = m[m["method"] == "_sign"].set_index("variant")
    assert sorted(toy.index) == ["", "shrink=0.5"]
    assert set(toy["family"]) == {"toy"} and set(toy["phase"]) == {"quantization"}
    assert set(toy["weight_bits"].astype(int)) == {1}
    dm_val_batches = math.ceil(json.loads((out / "data.json").read_text())["counts"]["val"]["n"] / 32)
    assert set(toy["toy_val_batches"].astype(float)) == {dm_val_batches}
    for cell, rel in zip(toy["cell"], toy["toy"]):
        assert rel == f"toy/{cell}.json" and json.loads((out / rel).read_text())["val_batches"] == dm_val_batches
    assert main(["--phase", "analysis", *args]) == 0
    deltas = pd.read_csv(out / "tables" / "deltas.csv")
    toy_deltas = deltas[(deltas["method"] == "_sign") & (deltas["metric"] == "accuracy") & (deltas["group"] == "all")]
    assert len(toy_deltas) >= 2 and toy_deltas["delta"].notna().all()


# ------------------------------------------------------------------------------------ results are values
#: What a model attribute of fairq looked like before results were values (issue 24): ``model.fairq_backend``,
#: ``getattr(model, "fairq_act_qrange", None)``, and the tagging helper. Facts travel in ``MethodResult`` and in
#: the fields of the wrapper classes, provenance in ``ModelInfo``.
_MODEL_ATTRIBUTE = re.compile(r"\.fairq_[a-z]\w*|\b(?:get|set|has|del)attr\([^)]*[\"']fairq_[a-z]\w*[\"']"
                              r"|\btag_model\b|\bTAGS\b")


def _model_attributes(path: str, text: str) -> list[str]:
    return [f"{path}:{i}: {line.strip()}" for i, line in enumerate(text.splitlines(), 1)
            if _MODEL_ATTRIBUTE.search(line)]


def test_no_fairq_model_attribute_is_left():
    """``grep -rn "fairq_" fairq`` finds no model attribute: every fact about a compressed model is a value."""
    found = [hit for path in sorted((ROOT / "fairq").rglob("*.py"))
             for hit in _model_attributes(str(path.relative_to(ROOT)), path.read_text())]
    assert not found, "model attributes / tags left:\n" + "\n".join(found)


def test_the_attribute_check_sees_the_old_spellings():
    old = ['model.fairq_backend = "int8"', 'qrange = getattr(model, "fairq_act_qrange", None)',
           "if hasattr(model, 'fairq_simulated_layers'):", "out.fairq_weight_bits, out.fairq_act_bits = w, a",
           "from fairq.compression.core.backend import load_int8, resolve_backend, tag_model",
           'TAGS = ("fairq_method", "fairq_weight_bits")']
    for line in old:
        assert _model_attributes("old.py", line), line
    assert not _model_attributes("ok.py", 'import fairq_ep_toy\nprefix = "fairq_text_figures_"')


# ------------------------------------------------------------------------------------ layering
def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """Every fairq/datamodules/callbacks module imported anywhere in a file (top level or inside functions);
    ``from pkg import submodule`` counts as an import of the submodule only."""
    tree = ast.parse(path.read_text())
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names}
            out |= (subs & modules) or {base}
            if subs - modules:
                out.add(base)
    return {m for m in out if m.split(".")[0] in ("fairq", "datamodules", "callbacks")}


def _module_graph() -> dict[str, set[str]]:
    files = {}
    for top in ("fairq", "datamodules", "callbacks"):
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
            files[".".join(parts)] = path
    names = set(files)
    return {mod: {m for m in _imports(path, mod, names) if m in files and m != mod} for mod, path in files.items()}


#: Every package's layer, lowest first. A module may import its own layer and those below, never one above —
#: e.g. fairq.lit → fairq.text, fairq.mitigation → datamodules and fairq.mitigation → fairq.api were upward imports
#: (issue 24) and now fail here.
LAYERS = (
    ("fairq.errors", "fairq.threads", "fairq.store", "fairq.sampling"),
    ("fairq.metrics",),
    ("fairq.batches", "fairq.evaluate", "fairq.models"),
    ("fairq.lit",),
    # fairq.compression by job, the contract lowest; the package itself (and its front door, .api) on top
    ("fairq.compression.core",),
    ("fairq.compression.backends",),
    ("fairq.compression.quant",),
    ("fairq.compression.prune", "fairq.compression.distill"),
    ("fairq.compression.localize",),
    ("fairq.compression",),
    ("fairq.text", "fairq.mitigation", "fairq.methods"),
    ("datamodules", "callbacks", "fairq.analysis", "fairq.sections"),
    ("fairq.api", "fairq.phases"),
    ("fairq.launch",),
    ("fairq.cli",),
)


def _layer(mod: str) -> int | None:
    for i, packages in enumerate(LAYERS):
        if any(mod == p or mod.startswith(p + ".") for p in packages):
            return i
    return None


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module from a layer above its own."""
    return sorted(f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})" for m, deps in graph.items()
                  if m != "fairq" for d in deps if d != "fairq" and _layer(d) > _layer(m))


def test_every_module_has_a_layer_and_imports_none_above_its_own():
    graph = _module_graph()
    unplaced = sorted(m for m in graph if m != "fairq" and _layer(m) is None)
    assert not unplaced, f"modules with no layer in LAYERS: {unplaced}"
    upward = _upward(graph)
    assert not upward, "\n".join(upward)
    code = ("import sys, fairq.compression; bad = [m for m in sys.modules if m.startswith('fairq.mitigation')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_the_layer_check_sees_an_upward_import():
    """The check itself: each import that used to exist (issue 24's three, and two the compression split removed),
    added to the real graph, is reported."""
    old = (("fairq.lit", "fairq.text.engine"), ("fairq.mitigation.bias_aware_calibration", "datamodules.sampler"),
           ("fairq.mitigation.fairness_aware", "fairq.api"),
           ("fairq.compression.core.registry", "fairq.compression.quant.ptq"),
           ("fairq.compression.backends.int8", "fairq.compression.quant.graph_sim"))
    for low, high in old:
        graph = {m: set(deps) for m, deps in _module_graph().items()}
        graph[low].add(high)
        assert any(line.startswith(f"{low} ") and f"imports {high} " in line for line in _upward(graph)), (low, high)


def test_no_module_imports_another_modules_private_name():
    """The extension API is public (issue 24): a name another module needs has no leading underscore."""
    bad = []
    for top in ("fairq", "datamodules", "callbacks"):
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module != "__future__" and (
                        node.level or (node.module or "").split(".")[0] in ("fairq", "datamodules", "callbacks")):
                    bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "\n".join(bad)


def test_the_package_has_no_import_cycle():
    graph = _module_graph()
    state: dict[str, int] = {}

    def visit(mod, stack):
        state[mod] = 1
        for dep in graph[mod]:
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, stack + [dep])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])


# ------------------------------------------------------------------------------------ startup validation
@pytest.mark.parametrize("entry, expected", [
    ({"method": "ptq_statc", "bits": 4}, "did you mean 'ptq_static'"),
    ({"method": "ptq_static", "bits": 4, "obsever": "mse"}, "did you mean 'observer'"),
    ({"method": "ptq_static", "bits": 9}, "weight_bits must be an int in 2..8"),
])
def test_a_bad_method_entry_fails_in_seconds_before_any_data_or_model(entry, expected, tmp_path, capsys):
    out = tmp_path / "run"
    t0 = time.perf_counter()
    code = main(["--phase", "all", "--output_dir", str(out), *TINY, "--data.init_args.cache_dir",
                 str(tmp_path / "cache"), "--quantization.methods", json.dumps([{"method": "ptq_static"}, entry])])
    elapsed = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2 and elapsed < 5, elapsed
    assert "quantization.methods[1]" in err and expected in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists() and not (out / "data.json").exists()  # nothing loaded or generated


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    from fairq.errors import ConfigError

    with pytest.raises(ConfigError, match="did you mean"):
        main(["--phase", "all", "--debug", "true", "--output_dir", str(tmp_path), *TINY,
              "--mitigation.methods", '[{"method": "bias_awre_calibration"}]'])


# ------------------------------------------------------------------------------------ the modality seam
def test_one_splitter_reads_every_batch_form():
    x, y, s = torch.randn(4, 3), torch.tensor([0, 1, 1, 0]), torch.tensor([[0, 1], [1, 1], [0, 0], [1, 0]])
    image = split_batch({"image": x, "target": y, "sensitive": s, "sample_id": ["a", "b", "c", "d"]})
    assert image.args[0] is x and image.kwargs == {} and image.target is y and image.sample_ids == ["a", "b", "c", "d"]
    assert torch.equal(image.sensitive, s)
    hf = split_batch({"input_ids": x.long(), "attention_mask": x.long(), "labels": y})
    assert hf.args == () and set(hf.kwargs) == {"input_ids", "attention_mask"} and hf.target is y
    tup = split_batch((x, y, s[:, 0]))
    assert tup.args[0] is x and tup.sensitive.shape == (4, 1)
    # a task names its inputs: other keys (metadata of a dataset) are not fed to the model
    task = ClassificationTask(input_keys=("pixels",))
    b = split_batch({"pixels": x, "path": ["p"] * 4, "target": y}, task)
    assert b.args[0] is x and b.kwargs == {}


def test_predict_fills_running_ids_and_keeps_sensitive_codes():
    model = nn.Linear(3, 2)
    batches = [(torch.randn(5, 3), torch.zeros(5, dtype=torch.long), torch.ones(5, 2, dtype=torch.long))] * 2
    p = predict(model, batches)
    assert p.sample_ids == [str(i) for i in range(10)] and p.prob.shape == (10, 2)
    assert p.sensitive.shape == (10, 2) and (p.pred == p.prob.argmax(1)).all()


def test_nothing_above_datamodules_indexes_image_batches():
    offenders = []
    for top in ("fairq", "callbacks"):
        for path in (ROOT / top).rglob("*.py"):
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if '["image"]' in line and not line.lstrip().startswith(("#", '"', "'")) and "``" not in line:
                    offenders.append(f"{path.relative_to(ROOT)}:{i}")
    assert not offenders, offenders


def test_an_infeasible_budget_is_a_user_error_without_a_traceback(tmp_path, capsys):
    """InfeasibleError is a UserError: the run stops with status 2 and the message says what to change."""
    code = main(["--phase", "all", "--output_dir", str(tmp_path / "run"), *TINY, "--data.init_args.cache_dir",
                 str(tmp_path / "cache"), "--mitigation.methods", "[]", "--quantization.methods",
                 json.dumps([{"method": "mixed_precision", "bits": 4, "budget_avg_bits": None,
                              "budget_mb": 1e-9}])])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "is infeasible" in err and "raise the budget" in err and "Traceback" not in err


def test_an_installed_packages_entry_point_registers_its_method(tmp_path, monkeypatch):
    """A third-party method reaches every process through a ``fairq.methods`` entry point (no environment variable):
    a package installed on ``sys.path`` with that entry point is imported by ``load_methods``."""
    from fairq.compression.core.registry import get_method, unregister_method
    from fairq.methods import load_methods, plugin_modules

    (tmp_path / "fairq_ep_toy").mkdir()
    (tmp_path / "fairq_ep_toy" / "__init__.py").write_text(
        "from dataclasses import dataclass\n"
        "from fairq import MethodConfig\n"
        "from fairq.compression import MethodResult, register_method\n"
        "@dataclass\n"
        "class EpToyConfig(MethodConfig):\n"
        "    weight_bits: int = 8\n"
        "register_method('_ep_toy', EpToyConfig, lambda model, config, inputs: MethodResult.fp32(model),"
        " family='toy')\n")
    dist = tmp_path / "fairq_ep_toy-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fairq-ep-toy\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fairq.methods]\nep_toy = fairq_ep_toy\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("FAIRQ_METHOD_MODULES", raising=False)
    assert "fairq_ep_toy" in plugin_modules()
    try:
        load_methods()
        assert get_method("_ep_toy").family == "toy"
    finally:
        unregister_method("_ep_toy")
        sys.modules.pop("fairq_ep_toy", None)
