"""Fairness under DDP (two CPU processes over gloo): the monitor logs the single-process numbers (group counts are
summed across ranks, not per-rank gaps averaged), and the fairness penalty is the full batch's, with the gradient
that gives the full batch's once DDP averages it."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fairq.mitigation.penalties import group_gap_penalty


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _penalty_worker(rank, world, port, logits, target, sens, cut, kind, queue):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    part = slice(0, cut) if rank == 0 else slice(cut, len(logits))
    local = logits[part].clone().requires_grad_()
    pen = group_gap_penalty(local, target[part], sens[part], kind=kind, min_count=2)
    pen.backward()
    queue.put((rank, float(pen.detach()), local.grad.numpy().copy()))
    # Queue.put hands the item to a feeder thread; os._exit below would kill that thread before it wrote to the pipe
    # (seen in CI as an empty queue), so flush it first
    queue.close()
    queue.join_thread()
    dist.barrier()  # both results are sent; leave without tearing gloo down (its teardown can abort at exit)
    os._exit(0)


@pytest.mark.parametrize("kind", ["dp", "eo"])
def test_penalty_under_two_ranks_is_the_full_batch_penalty(kind):
    g = torch.Generator().manual_seed(0)
    n, cut = 64, 37  # uneven split: ranks pad for the gather
    logits = torch.randn(n, 2, generator=g)
    target = torch.randint(0, 2, (n,), generator=g)
    sens = torch.randint(0, 2, (n, 2), generator=g)
    full_logits = logits.clone().requires_grad_()
    full = group_gap_penalty(full_logits, target, sens, kind=kind, min_count=2)
    full.backward()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_penalty_worker, args=(r, 2, port, logits, target, sens, cut, kind, queue))
             for r in range(2)]
    for p in procs:
        p.start()
    got = dict((r, (pen, grad)) for r, pen, grad in (queue.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    # per-rank batches alone would give other penalties; the gathered one is the full batch's
    alone = group_gap_penalty(logits[:cut], target[:cut], sens[:cut], kind=kind, min_count=2)
    assert abs(float(alone.detach()) - float(full.detach())) > 1e-4
    for r, (pen, grad) in got.items():
        assert pen == pytest.approx(float(full.detach()), rel=1e-5)
        part = slice(0, cut) if r == 0 else slice(cut, n)
        # each rank's samples receive the penalty's gradient from both ranks; DDP's averaging divides by 2
        torch.testing.assert_close(torch.from_numpy(grad) / 2, full_logits.grad[part], rtol=1e-4, atol=1e-7)


@pytest.mark.slow
def test_fairness_monitor_logs_the_same_numbers_on_two_ranks(tmp_path):
    import lightning as L

    from callbacks import FairnessMonitor
    from datamodules import SyntheticDataModule
    from fairq.lit import FairClassifier
    from fairq.models import create_model

    dm = SyntheticDataModule(n_samples=400, image_size=32, batch_size=16, eval_batch_size=16,
                             cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    dm.setup()
    n_val = len(dm.split_frame("val"))
    if n_val % 2:
        pytest.skip(f"the validation split ({n_val}) must split evenly over two ranks for an exact comparison")
    torch.manual_seed(0)
    model = create_model("tiny_cnn", num_classes=2)
    results = {}
    for name, kw in (("single", dict(devices=1)), ("ddp", dict(devices=2, strategy="ddp_spawn"))):
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[FairnessMonitor()], **kw)
        out = trainer.validate(FairClassifier(model), datamodule=dm, verbose=False)
        results[name] = {k: float(v) for k, v in out[0].items() if k.startswith("fairness/")}
    assert results["single"] and results["single"].keys() == results["ddp"].keys()
    for k, v in results["single"].items():
        assert results["ddp"][k] == pytest.approx(v, abs=1e-6), k
