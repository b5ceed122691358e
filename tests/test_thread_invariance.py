"""Results do not depend on the intra-op thread count (a Ray worker's ``cpus_per_cell``, a machine's cores): a few
training steps and a mixed-precision plan under 1 and 2 threads give the same weights and the same plan, and the
greedy bit allocation ignores float noise in the sensitivities it compares."""
import copy

import pytest
import torch
from torch import nn

from fairq.compression.core.config import MixedPrecisionConfig
from fairq.compression.quant.mixed_precision import allocate_bits, plan_mixed_precision
from fairq.lit import FairClassifier, quiet_trainer
from fairq.threads import backward as thread_invariant_backward


def _threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    return before


def _cnn():
    torch.manual_seed(0)
    # conv weight gradients (oneDNN) and LayerNorm's γ/β gradients are the kernels whose sums follow the threads
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.LayerNorm(512), nn.Linear(512, 2))


def _batches(n=6, size=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 2, (size,), generator=g)) for _ in range(n)]


def _train(threads):
    before = _threads(threads)
    try:
        torch.manual_seed(0)
        module = FairClassifier(_cnn(), lr=1e-2)
        trainer = quiet_trainer(max_epochs=1, enable_progress_bar=False)
        trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(_batches(), batch_size=None))
        return {k: v.clone() for k, v in module.model.state_dict().items()}
    finally:
        torch.set_num_threads(before)


def test_training_gives_the_same_weights_under_1_and_2_threads():
    one, two = _train(1), _train(2)
    differ = {k: float((one[k] - two[k]).abs().max()) for k in one if not torch.equal(one[k], two[k])}
    assert not differ, f"weights differ between 1 and 2 threads (max abs difference per tensor): {differ}"


def test_backward_on_one_thread_is_what_makes_the_gradients_agree():
    """The premise of :mod:`fairq.threads`: a plain backward's conv / LayerNorm gradients follow the thread count
    (skipped where this build's kernels do not split their sums by thread), ``fairq.threads.backward``'s do not."""
    model, (x, y) = _cnn(), _batches(1)[0]
    grads = {}
    for threads in (1, 2):
        before = _threads(threads)
        try:
            for how, backward in (("plain", lambda loss: loss.backward()), ("fairq", thread_invariant_backward)):
                m = copy.deepcopy(model)
                backward(nn.functional.cross_entropy(m(x), y))
                grads[how, threads] = [p.grad.clone() for p in m.parameters()]
            assert torch.get_num_threads() == threads  # restored after the backward
        finally:
            torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(grads["fairq", 1], grads["fairq", 2]))
    if all(torch.equal(a, b) for a, b in zip(grads["plain", 1], grads["plain", 2])):
        pytest.skip("this build's backward kernels give the same sums under 1 and 2 threads")


def test_a_mixed_precision_plan_is_the_same_under_1_and_2_threads():
    model = _cnn().eval()
    val = _batches(4, seed=2)
    cfg = MixedPrecisionConfig(budget_avg_bits=5.0, candidate_bits=(2, 4, 8, None), keep_first=False)
    plans = {}
    for threads in (1, 2):
        before = _threads(threads)
        try:
            plans[threads] = plan_mixed_precision(copy.deepcopy(model), cfg, val).to_dict()
        finally:
            torch.set_num_threads(before)
    assert plans[1] == plans[2]
    assert len({r["bits"] for r in plans[1]["layers"]}) > 1  # a real allocation, not every layer alike


@pytest.mark.parametrize("noise", [1e-12, -1e-12])
def test_allocation_ignores_float_noise_between_equal_sensitivities(noise):
    """Two equal-sized layers, equally sensitive up to noise of either sign: the tie goes to the same layer (by
    name), so a measurement under another reduction order cannot move the plan."""
    params = {"a": 1000, "b": 1000}

    def avg(alloc):
        return sum(params[n] * (32 if b is None else b) for n, b in alloc.items()) / 2000

    sens = {"a": {4: 0.0123, 8: 0.001}, "b": {4: 0.0123 * (1 + noise), 8: 0.001}}
    alloc = allocate_bits(sens, (4, 8), avg, 6.0)
    assert alloc == {"a": 4, "b": 8}
    reordered = allocate_bits(dict(reversed(list(sens.items()))), (4, 8), avg, 6.0)
    assert reordered == alloc
