"""``python main.py --phase …``: a jsonargparse parser (the library LightningCLI is built on) over fairq's config.

fairq's entry point is phase-based rather than LightningCLI's fit/validate/test subcommands, so the parser is
built here with jsonargparse directly; it keeps LightningCLI's conventions: YAML ``class_path``/``init_args``
for the datamodule, ``--trainer.*`` for every ``lightning.Trainer`` argument, stackable ``--config`` files,
``--print_config``, and the resolved config saved as ``config.yaml`` next to the results.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import lightning as L
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

from datamodules import FairqDataModule
from fairq.errors import UserError
from fairq.phases import PHASES
from fairq.sections import AnalysisSection, MitigationSection, QuantizationSection, RaySection, TextSection
from fairq.store import RunStore

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"
log = logging.getLogger("fairq")

# Trainer arguments fairq sets itself (its logger, callbacks and output folder).
_TRAINER_SKIP = {"logger", "callbacks", "default_root_dir", "plugins", "profiler"}


@dataclass
class OptimConfig:
    """Optimiser of every fine-tuning run (AdamW with a one-cycle schedule)."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0


@dataclass
class EvaluationConfig:
    """How cells are evaluated and timed."""

    latency_batch_size: int = 32
    latency_repeats: int = 10
    progress: bool = True


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="main.py", description="fairq: what does model compression do to whom?",
                            exit_on_error=True)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config (stackable; default: "
                        "configs/default.yaml, the embedded offline synthetic dataset)")
    parser.add_argument("--phase", type=str, default="all", choices=[*PHASES, "all"], help="phase to run")
    parser.add_argument("--output_dir", type=Optional[str], default=None,
                        help="results folder (default: outputs/<config name>)")
    parser.add_argument("--seed", type=int, default=0,
                        help="training seed (initialisation, shuffling, calibration draws); the data seed is "
                             "data.init_args.seed, fixed across training seeds")
    parser.add_argument("--seeds", type=Optional[list[int]], default=None,
                        help="several training seeds: every phase but analysis runs once per seed into the same "
                             "output folder, and analysis reports means with CIs across seeds × samples")
    parser.add_argument("--models", type=list[str], default=["tiny_cnn"],
                        help="model names: fairq registry, timm or torchvision (tv/NAME)")
    parser.add_argument("--pretrained", type=Optional[bool], default=None,
                        help="load pretrained weights: true = required, false = never, null = when available")
    parser.add_subclass_arguments(FairqDataModule, "data", required=True,
                                  help="the dataset (a FairqDataModule: face datasets, or datamodules.TextDataModule)")
    parser.add_class_arguments(L.Trainer, "trainer", skip=_TRAINER_SKIP, instantiate=False)
    parser.add_class_arguments(OptimConfig, "optim")
    parser.add_class_arguments(EvaluationConfig, "evaluation")
    parser.add_class_arguments(QuantizationSection, "quantization")
    parser.add_class_arguments(MitigationSection, "mitigation")
    parser.add_class_arguments(AnalysisSection, "analysis")
    parser.add_argument("--launcher", type=str, default="local", choices=["local", "ray"],
                        help="where cells run: this process, or warm Ray workers that run cell after cell (see "
                             "fairq/launch.py)")
    parser.add_class_arguments(RaySection, "ray")
    parser.add_class_arguments(TextSection, "text")
    parser.add_argument("--debug", type=bool, default=False,
                        help="show the Python traceback of user errors too (also: FAIRQ_DEBUG=1)")
    return parser


def parse_args(argv: list[str] | None = None) -> tuple[ArgumentParser, Namespace, str]:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv = ["--config", str(DEFAULT_CONFIG)] + argv
    parser = build_parser()
    cfg = parser.parse_args(argv)
    configs = [Path(str(p)) for p in (cfg.get("config") or []) if p is not None]
    name = Path(str(configs[-1])).stem if configs else "default"
    return parser, cfg, name


def environment_info() -> dict:
    import importlib.metadata as md

    pkgs = {}
    for pkg in ("torch", "torchvision", "lightning", "timm", "torchao", "torchmetrics", "transformers",
                "fairlearn", "numpy", "pandas", "jsonargparse"):
        try:
            pkgs[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pkgs[pkg] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001 - not a git checkout
        commit = None
    import torch

    return {"packages": pkgs, "python": sys.version, "platform": platform.platform(), "git_commit": commit,
            "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def make_context(parser: ArgumentParser, cfg: Namespace, name: str):
    from fairq.phases.context import RunContext

    output_dir = cfg.output_dir or str(Path("outputs") / name)
    store = RunStore(output_dir)
    init = parser.instantiate(cfg)
    init.data.sampling_seed = int(cfg.seed)
    return RunContext(store=store, datamodule=init.data, models=run_models(cfg), seed=cfg.seed,
                      pretrained=cfg.pretrained, trainer=_trainer_kwargs(cfg.trainer.as_dict()),
                      optim=cfg.optim.as_dict(), evaluation=cfg.evaluation.as_dict(),
                      sections={s: cfg[s].as_dict() for s in ("quantization", "mitigation", "analysis", "text")})


def _trainer_kwargs(raw: dict) -> dict:
    """Only the Trainer arguments that differ from Lightning's defaults, so the Trainer applies its own."""
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(L.Trainer.__init__).parameters.items()}
    return {k: v for k, v in raw.items() if k in defaults and v != defaults[k]}


class _DropAdverts(logging.Filter):
    """Lightning's "💡 Tip: try installing litlogger/litmodels" lines, printed for every Trainer, carry no result."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip")


def _quiet_third_party() -> None:
    """Silence third-party noise that repeats per cell and says nothing about the run (never fairq's own logs)."""
    import warnings

    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_DropAdverts())
    # Lightning 2.6 calls a torch pytree API that torch 2.14 deprecates, once per batch transfer.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def main(argv: list[str] | None = None) -> int:
    """Run the phases; a :class:`fairq.errors.UserError` prints its message alone and returns 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("FAIRQ_DEBUG", "") not in ("", "0") or any(
        a in ("--debug", "--debug=true", "--debug=True") for a in argv)
    try:
        return _main(argv)
    except UserError as err:
        if debug:
            raise
        print(f"fairq: error: {err}", file=sys.stderr)
        return 2


def run_models(cfg: Namespace) -> list[str]:
    """The models a run trains and compresses: ``--text.model`` (the masked LM, or a list of them, to run), else
    ``--models``."""
    return text_models(cfg) or list(cfg.models)


def text_models(cfg: Namespace) -> list[str]:
    """The masked LMs of a text run (``text.model``: one name or a list), empty for a vision run."""
    return TextSection(model=cfg.text.model).models()


def validate_sections(cfg: Namespace) -> list[str]:
    """Check the run at startup (seconds, nothing loaded or trained), so a typo fails before any data or model is
    touched: the run's models first (an unknown name: the model registry's error with close matches), then every
    method entry of the phases that run, with either launcher. Returns one line per entry skipped in this run (its
    ``models:`` names real models, none of them in this run)."""
    from fairq.models import check_model_name
    from fairq.sections import check_entry_models, check_methods_apply, plan_run

    models = run_models(cfg)
    vision = not text_models(cfg)
    if vision:
        for name in models:
            check_model_name(name)
    planned = plan_run({s: cfg[s].as_dict() for s in ("quantization", "mitigation")})
    phases = PHASES if cfg.phase == "all" else (cfg.phase,)
    active = {p: cells for p, cells in planned.items() if p in phases}
    skipped = check_entry_models(active, models)
    if vision:  # a text run's models are masked LMs: every method applies to a BERT
        check_methods_apply(active, models)
    return skipped


def _main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_third_party()
    parser, cfg, name = parse_args(argv)
    skipped = validate_sections(cfg)
    for line in skipped:
        log.info(line)
    if cfg.launcher == "ray":
        from fairq.launch import import_ray

        import_ray()  # a missing Ray is said now, before any work
    ctx = make_context(parser, cfg, name)
    config_path = ctx.store.path("config.yaml")
    config_path.write_text(parser.dump(cfg) + "".join(f"# {line}\n" for line in skipped))
    ctx.store.write_json("environment.json", environment_info())
    phases = PHASES if cfg.phase == "all" else (cfg.phase,)
    seeds = list(cfg.seeds) if cfg.seeds else [cfg.seed]
    from fairq.launch import launch

    make_ctx = functools.partial(worker_context, str(config_path.resolve()), str(ctx.store.root.resolve()))
    launch(cfg.launcher, ctx, phases, seeds, _phase_module, ray_section=RaySection(**cfg.ray.as_dict()),
           make_ctx=make_ctx)
    return 0


_WORKER_CONTEXTS: dict = {}


def worker_context(config_path: str, output_dir: str, model: str, seed: int):
    """A run's context in another process (a Ray worker, :class:`fairq.launch.CellWorker`): the resolved config the
    driver saved, one model, one training seed. Built once per worker process and run, so every later cell of that
    worker skips re-parsing the config and re-opening the data."""
    key = (config_path, output_dir)
    if key not in _WORKER_CONTEXTS:
        parser, cfg, name = parse_args(["--config", config_path, "--output_dir", output_dir])
        _WORKER_CONTEXTS[key] = make_context(parser, cfg, name)
    ctx = _WORKER_CONTEXTS[key]
    ctx.models = [model]
    ctx.use_seed(seed)
    return ctx


def _phase_module(phase: str):
    import importlib

    try:
        return importlib.import_module(f"fairq.phases.{phase}")
    except ModuleNotFoundError as err:
        if err.name == f"fairq.phases.{phase}":
            return None
        raise
