"""Launchers: where a run's cells execute. The output folder is the single source of truth either way.

* ``local`` (default): this process, phase by phase and seed by seed.
* ``ray``: every cell is a Ray task — a baseline per model × seed, then every quantization / mitigation setting of
  that model and seed, each depending explicitly on its baseline's task (Ray starts it once the baseline's object
  is ready; nothing sleeps or polls). Analysis runs in the driver once every task is done. ``ray.init`` joins
  ``ray.address`` / ``$RAY_ADDRESS`` or starts a local Ray on this machine's cores.

Where results go (the assumption users must meet on a cluster): **workers write the output folder themselves**, so
it must be on a filesystem every node sees (local disk for a single machine, NFS / a shared volume otherwise).
Each cell is written as on one machine — predictions first, atomically, then its ``metrics.csv`` row under a file
lock, replacing any row with the same cell id — so a task that is retried or killed mid-cell never duplicates or
loses a row, and a rerun skips the cells already there. Data is prepared (and its image cache built) by the driver
before any task starts, so workers only read it.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from fairq.errors import UserError

log = logging.getLogger("fairq")

LAUNCHERS = ("local", "ray")
INSTALL_RAY = "pip install -r requirements-ray.txt   (or: pip install 'ray>=2.9')"
_REPO = Path(__file__).resolve().parents[1]


def run_local(ctx, phases, seeds, phase_module) -> None:
    """Every phase in this process; analysis once, the others once per training seed."""
    for phase in phases:
        module = phase_module(phase)
        for seed in ([seeds[0]] if phase == "analysis" else seeds):
            ctx.use_seed(seed)
            t0 = time.perf_counter()
            log.info("=== phase %s%s → %s", phase, f" (seed {seed})" if len(seeds) > 1 else "", ctx.store.root)
            module.run(ctx)
            log.info("=== phase %s done in %.1f s", phase, time.perf_counter() - t0)


def baseline_task(make_ctx, model: str, seed: int) -> str:
    """Ray task: fine-tune and evaluate one baseline (skipped when its cell is stored already). ``make_ctx(model,
    seed)`` rebuilds the run's context in the worker (from the resolved config the driver saved)."""
    from fairq.phases import baseline

    _quiet_worker()
    ctx = make_ctx(model, seed)
    baseline.run(ctx)
    return ctx.cell(model, "baseline", 32, 32)


def cell_task(make_ctx, phase: str, model: str, seed: int, index: int, baseline_done=None) -> int:
    """Ray task: one planned setting of a section on one model and seed; ``baseline_done`` is the baseline task's
    result, which makes the dependency explicit (Ray runs this task only once that object exists)."""
    from fairq.phases.methods import run_one

    _quiet_worker()
    return len(run_one(make_ctx(model, seed), phase, model, index))


def _quiet_worker() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--launcher ray needs Ray, which is not installed here: {INSTALL_RAY}") from None
    return ray


def run_ray(ctx, phases, seeds, phase_module, section, make_ctx) -> None:
    """Fan the run's cells out as Ray tasks (module docstring), then analyse in the driver."""
    from fairq.sections import plan_run

    ray = import_ray()
    env = {k: v for k, v in os.environ.items() if k.startswith("FAIRQ_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH", "")) if p)
    address = section.address or os.environ.get("RAY_ADDRESS") or None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=True,
                 logging_level=logging.WARNING)
    try:
        ctx.data()  # prepare data and its image cache once, before any worker reads it
        opts = dict(num_cpus=section.cpus_per_cell, num_gpus=section.gpus_per_cell, max_retries=section.max_retries)
        base = ray.remote(baseline_task).options(**opts)
        cell = ray.remote(cell_task).options(**opts)
        planned = plan_run(ctx.sections)
        refs, deps = [], {}
        for seed in seeds:
            for model in ctx.models:
                if "baseline" in phases:
                    deps[(model, seed)] = base.remote(make_ctx, model, seed)
                    refs.append(deps[(model, seed)])
                for phase in ("quantization", "mitigation"):
                    if phase not in phases:
                        continue
                    for i in range(len(planned[phase])):
                        refs.append(cell.remote(make_ctx, phase, model, seed, i, deps.get((model, seed))))
        log.info("=== ray: %d tasks (%s) on %s", len(refs), ", ".join(p for p in phases if p != "analysis"),
                 ray.cluster_resources().get("CPU", 0))
        t0 = time.perf_counter()
        ray.get(refs)
        log.info("=== ray: every task done in %.1f s", time.perf_counter() - t0)
    finally:
        if started:
            ray.shutdown()
    if "analysis" in phases:
        run_local(ctx, ("analysis",), seeds, phase_module)


def launch(launcher: str, ctx, phases, seeds, phase_module, *, ray_section=None, make_ctx=None) -> None:
    """Run ``phases`` with ``launcher``; ``make_ctx(model, seed)`` (picklable) rebuilds the context in a worker."""
    if launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {launcher!r}; choose from {LAUNCHERS}")
    if launcher == "local":
        run_local(ctx, phases, seeds, phase_module)
    else:
        run_ray(ctx, phases, seeds, phase_module, ray_section, make_ctx)

