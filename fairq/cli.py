"""``python main.py --phase …``: a jsonargparse parser (the library LightningCLI is built on) over fairq's config.

fairq's entry point is phase-based rather than LightningCLI's fit/validate/test subcommands, so the parser is
built here with jsonargparse directly; it keeps LightningCLI's conventions: YAML ``class_path``/``init_args``
for the datamodule, ``--trainer.*`` for every ``lightning.Trainer`` argument, stackable ``--config`` files,
``--print_config``, and the resolved config saved as ``config.yaml`` next to the results.
"""
from __future__ import annotations

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
from fairq.sections import AnalysisSection, MitigationSection, QuantizationSection, TextSection
from fairq.store import RunStore

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"
log = logging.getLogger("fairq")

# Trainer arguments fairq sets itself (its logger, callbacks and output folder).
_TRAINER_SKIP = {"logger", "callbacks", "default_root_dir", "plugins", "strategy", "profiler"}


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
    parser.add_argument("--seed", type=int, default=0, help="seed of training, splits and sampling")
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
    parser.add_class_arguments(TextSection, "text")
    parser.add_argument("--debug", type=bool, default=False,
                        help="show the Python traceback of user errors too (also: FAIRQ_DEBUG=1)")
    # One seed for training, splits and sampling.
    parser.link_arguments("seed", "data.init_args.seed")
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
    models = [cfg.text.model] if cfg.text.model else list(cfg.models)  # --text.model NAME: the masked LM to run
    return RunContext(store=store, datamodule=init.data, models=models, seed=cfg.seed,
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


def validate_sections(cfg: Namespace) -> None:
    """Plan every method entry now (seconds, nothing loaded): a typo fails before any data or model is touched."""
    from fairq.sections import plan_run

    plan_run({s: cfg[s].as_dict() for s in ("quantization", "mitigation")})


def _main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_third_party()
    parser, cfg, name = parse_args(argv)
    validate_sections(cfg)
    ctx = make_context(parser, cfg, name)
    ctx.store.path("config.yaml").write_text(parser.dump(cfg))
    ctx.store.write_json("environment.json", environment_info())
    phases = PHASES if cfg.phase == "all" else (cfg.phase,)
    for phase in phases:
        module = _phase_module(phase)
        if module is None:
            log.warning("phase %s is not implemented yet; skipping", phase)
            continue
        t0 = time.perf_counter()
        log.info("=== phase %s → %s", phase, ctx.store.root)
        module.run(ctx)
        log.info("=== phase %s done in %.1f s", phase, time.perf_counter() - t0)
    return 0


def _phase_module(phase: str):
    import importlib

    try:
        return importlib.import_module(f"fairq.phases.{phase}")
    except ModuleNotFoundError as err:
        if err.name == f"fairq.phases.{phase}":
            return None
        raise
