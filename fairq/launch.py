"""Launchers: where a run's cells execute. The output folder is the single source of truth either way.

* ``local`` (default): this process, phase by phase and seed by seed.
* ``ray``: the cells run on warm Ray workers — actors (:class:`CellWorker`) that import torch, read the config,
  open the data and load a baseline once, then evaluate cell after cell. The driver hands cells to them with Ray's
  ``ActorPool``: every baseline (model × seed) first, and each quantization / mitigation setting of a model and
  seed as soon as that baseline is done, to whichever worker is free. Analysis runs in the driver once every cell
  is done. ``ray.init`` joins ``ray.address`` / ``$RAY_ADDRESS`` or starts a local Ray on this machine's cores.
  A worker computes with ``cpus_per_cell`` intra-op threads, the serial run with its own; the results are the same
  (:mod:`fairq.threads`).

Where results go (the assumption users must meet on a cluster): **workers write the output folder themselves**, so
it must be on a filesystem every node sees (local disk for a single machine, NFS / a shared volume otherwise).
Each cell is written as on one machine — predictions first, atomically, then its ``metrics.csv`` row under a file
lock, replacing any row with the same cell id — so a worker that is killed mid-cell (Ray restarts it and re-runs
its unfinished cell) never duplicates or loses a row, and a rerun skips the cells already there. Data is prepared
(and its image cache built) by the driver before any worker starts, so workers only read it.
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


class CellWorker:
    """A warm Ray worker (an actor): imports torch, reads the run's config and opens its data once, keeps the
    baselines it loaded (the last :attr:`KEEP` ``(model, seed)`` pairs), then runs one cell per call.

    ``make_ctx(model, seed)`` rebuilds the run's context in the worker (from the resolved config the driver saved);
    ``threads``: the intra-op threads of every cell here (the cell's ``cpus_per_cell``; results do not depend on
    it, :mod:`fairq.threads`)."""

    KEEP = 2

    def __init__(self, make_ctx, threads: int):
        import torch

        # the phases' imports (torch, Lightning, timm: ~6 s of a cold start) happen here, when the driver creates
        # the worker — while it prepares the data — not when the first cell arrives
        import fairq.phases.baseline  # noqa: F401
        import fairq.phases.methods  # noqa: F401

        _quiet_worker()
        torch.set_num_threads(max(1, int(threads)))
        self.make_ctx = make_ctx
        self.baselines: dict = {}

    def baseline(self, model: str, seed: int) -> tuple[str, int]:
        """Fine-tune and evaluate one baseline (skipped when its cell is stored already)."""
        from fairq.phases import baseline

        baseline.run(self.make_ctx(model, seed))
        return model, seed

    def cell(self, phase: str, model: str, seed: int, index: int) -> int:
        """The ``index``-th planned setting of section ``phase`` on one model and seed; the number of rows stored."""
        from fairq.phases.methods import run_one

        rows = run_one(self.make_ctx(model, seed), phase, model, index, self.baselines)
        if (model, seed) in self.baselines:  # most recently used last
            self.baselines[model, seed] = self.baselines.pop((model, seed))
        for key in list(self.baselines)[:-self.KEEP]:
            del self.baselines[key]
        return len(rows)


def _quiet_worker() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(f"--launcher ray needs Ray, which is not installed here: {INSTALL_RAY}") from None
    return ray


def run_ray(ctx, phases, seeds, phase_module, section, make_ctx) -> None:
    """Fan the run's cells out to warm Ray workers (module docstring), then analyse in the driver."""
    from fairq.sections import plan_run

    ray = import_ray()
    from ray.util import ActorPool

    env = {k: v for k, v in os.environ.items() if k.startswith("FAIRQ_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO), os.environ.get("PYTHONPATH", "")) if p)
    address = section.address or os.environ.get("RAY_ADDRESS") or None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=True,
                 logging_level=logging.WARNING)
    workers: list = []
    try:
        planned = plan_run(ctx.sections)
        cells = {(model, seed): [(phase, model, seed, i) for phase in ("quantization", "mitigation")
                                 if phase in phases for i, p in enumerate(planned[phase]) if p.runs_on(model)]
                 for seed in seeds for model in ctx.models}  # an entry's models: restricts it, as in run_section
        baselines = list(cells) if "baseline" in phases else []
        n_tasks = len(baselines) + sum(map(len, cells.values()))
        # the workers start (and import) while the driver prepares the data and its image cache, once, before any
        # worker reads it (no cell is submitted before that)
        workers = _workers(ray, section, n_tasks, make_ctx) if n_tasks else []  # none for --phase analysis
        ctx.data()
        pool = ActorPool(workers)
        log.info("=== ray: %d cells (%s) on %d warm workers", n_tasks,
                 ", ".join(p for p in phases if p != "analysis"), len(workers))
        t0 = time.perf_counter()
        for model, seed in baselines:
            pool.submit(lambda w, v: w.baseline.remote(*v), (model, seed))
        if not baselines:  # the baselines are stored already: every cell can start
            for todo in cells.values():
                _submit_cells(pool, todo)
        while pool.has_next():
            done = pool.get_next_unordered()  # raises when a cell failed beyond its retries
            if isinstance(done, tuple):  # a baseline: its model's cells may start now
                _submit_cells(pool, cells[done])
        log.info("=== ray: every cell done in %.1f s", time.perf_counter() - t0)
    finally:
        # the workers end with the run, now: on a Ray instance that outlives it (a cluster, or a caller's ray.init)
        # a worker released only by garbage collection holds its CPUs until Ray notices, and the next run's workers
        # wait for them
        for w in workers:
            ray.kill(w)
        if started:
            ray.shutdown()
    if "analysis" in phases:
        run_local(ctx, ("analysis",), seeds, phase_module)


def _submit_cells(pool, todo) -> None:
    for args in todo:
        pool.submit(lambda w, v: w.cell.remote(*v), args)


def _workers(ray, section, n_tasks: int, make_ctx) -> list:
    """As many warm workers as the cluster fits (its CPUs ÷ ``cpus_per_cell``, GPUs ÷ ``gpus_per_cell``), at most
    one per task. A worker that dies is restarted and its unfinished call re-run, ``max_retries`` times (a re-run
    replaces, never duplicates, its cell)."""
    res = ray.cluster_resources()
    fits = [res.get("CPU", 0) / section.cpus_per_cell] if section.cpus_per_cell else []
    if section.gpus_per_cell:
        fits.append(res.get("GPU", 0) / section.gpus_per_cell)
    n = max(1, min(int(min(fits, default=n_tasks)), n_tasks))
    actor = ray.remote(CellWorker).options(num_cpus=section.cpus_per_cell, num_gpus=section.gpus_per_cell,
                                           max_restarts=section.max_retries, max_task_retries=section.max_retries)
    return [actor.remote(make_ctx, max(1, round(section.cpus_per_cell))) for _ in range(n)]


def launch(launcher: str, ctx, phases, seeds, phase_module, *, ray_section=None, make_ctx=None) -> None:
    """Run ``phases`` with ``launcher``; ``make_ctx(model, seed)`` (picklable) rebuilds the context in a worker."""
    if launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher {launcher!r}; choose from {LAUNCHERS}")
    if launcher == "local":
        run_local(ctx, phases, seeds, phase_module)
    else:
        run_ray(ctx, phases, seeds, phase_module, ray_section, make_ctx)

