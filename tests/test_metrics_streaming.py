"""GroupConfusionMetric: streaming counts equal one-shot counts, also when a batch lacks a group (torchmetrics#3489)."""

import numpy as np
import pandas as pd
import pytest
import torch

from fairq.metrics import SCALAR_METRICS, fairness_metrics
from fairq.metrics.streaming import GroupConfusionMetric, intersectional_group_ids, radix_groups

LEVELS = {"sex": ["F", "M"], "age": ["young", "mid", "old"]}


def _data(seed=0, n=400):
    g = torch.Generator().manual_seed(seed)
    codes = torch.stack([torch.randint(0, 2, (n,), generator=g), torch.randint(0, 3, (n,), generator=g)], dim=1)
    target = torch.randint(0, 2, (n,), generator=g)
    noise = torch.rand(n, generator=g) < 0.2 + 0.1 * codes[:, 1]
    preds = torch.where(noise, 1 - target, target)
    return codes, target, preds


def _batches_missing_a_group(codes):
    """Order samples so the first batch has no (sex=M, age=old) sample and another has only that group."""
    missing = (codes[:, 0] == 1) & (codes[:, 1] == 2)
    order = torch.cat([torch.nonzero(~missing).flatten(), torch.nonzero(missing).flatten()])
    return torch.split(order, 64)


def test_streaming_equals_one_shot_when_a_batch_lacks_a_group():
    codes, target, preds = _data()
    batches = _batches_missing_a_group(codes)
    gid_first = intersectional_group_ids(codes[batches[0]], [2, 3])
    assert 5 not in gid_first.tolist()  # the trap: the first batch really lacks a group
    groups = radix_groups(LEVELS)
    metric = GroupConfusionMetric(num_groups=6, num_classes=2, groups=groups, min_group_size=1)
    for idx in batches:
        metric.update(preds[idx], target[idx], intersectional_group_ids(codes[idx], [2, 3]))
    streamed = metric.fairness_metrics()
    sf = pd.DataFrame({"sex": np.array(LEVELS["sex"])[codes[:, 0].numpy()],
                       "age": np.array(LEVELS["age"])[codes[:, 1].numpy()]})
    one_shot = fairness_metrics(target.numpy(), preds.numpy(), sf, min_group_size=1)
    for key in SCALAR_METRICS:
        assert streamed[key] == pytest.approx(one_shot[key], abs=1e-12), key
    a = streamed["per_group"].set_index(["sex", "age"]).sort_index()
    b = one_shot["per_group"].set_index(["sex", "age"]).sort_index()
    pd.testing.assert_frame_equal(a[["n", "accuracy", "tpr", "fpr", "selection_rate"]],
                                  b[["n", "accuracy", "tpr", "fpr", "selection_rate"]], check_dtype=False)
    logged = metric.compute()
    assert set(logged) == set(SCALAR_METRICS)
    assert float(logged["equalized_odds_difference"]) == pytest.approx(one_shot["equalized_odds_difference"],
                                                                       abs=1e-6)


def test_scores_and_probabilities_are_thresholded_like_labels():
    codes, target, preds = _data(seed=1, n=200)
    gid = intersectional_group_ids(codes, [2, 3])
    by_label = GroupConfusionMetric(6, 2)
    by_label.update(preds, target, gid)
    by_scores = GroupConfusionMetric(6, 2)
    logits = torch.stack([-(preds.float() * 2 - 1), preds.float() * 2 - 1], dim=1)
    by_scores.update(logits, target, gid)
    by_prob = GroupConfusionMetric(6, 2)
    by_prob.update(preds.float() * 0.8 + 0.1, target, gid)
    by_logit = GroupConfusionMetric(6, 2)
    by_logit.update(preds.float() * 6 - 3, target, gid)
    for m in (by_scores, by_prob, by_logit):
        assert torch.equal(m.counts, by_label.counts)


def test_radix_ids_match_level_table():
    codes, _, _ = _data(seed=2, n=50)
    gid = intersectional_group_ids(codes, [2, 3])
    table = radix_groups([2, 3], names=["sex", "age"])
    np.testing.assert_array_equal(table.loc[gid.numpy()].to_numpy(), codes.numpy())
    assert len(table) == 6


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"attribute 1 codes must lie in \[0, 3\)"):
        intersectional_group_ids(torch.tensor([[0, 3]]), [2, 3])
    with pytest.raises(ValueError, match="shape"):
        intersectional_group_ids(torch.tensor([[0, 1, 1]]), [2, 3])
    m = GroupConfusionMetric(2, 2)
    with pytest.raises(ValueError, match="group_ids must lie"):
        m.update(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="batch sizes differ"):
        m.update(torch.tensor([0, 1]), torch.tensor([0]), torch.tensor([0, 1]))


def test_shards_merge_by_sum_like_ddp():
    """Two processes' states (each missing groups) summed as DDP would give the one-process counts."""
    codes, target, preds = _data(seed=3)
    gid = intersectional_group_ids(codes, [2, 3])
    shard = gid < 3  # shard 0 sees only sex=F, shard 1 only sex=M
    whole, left, right = GroupConfusionMetric(6, 2), GroupConfusionMetric(6, 2), GroupConfusionMetric(6, 2)
    whole.update(preds, target, gid)
    left.update(preds[shard], target[shard], gid[shard])
    right.update(preds[~shard], target[~shard], gid[~shard])
    left.merge_state(right)
    assert torch.equal(left.counts, whole.counts)
    assert left.fairness_metrics()["demographic_parity_difference"] == pytest.approx(
        whole.fairness_metrics()["demographic_parity_difference"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_counts_on_cuda_equal_cpu():
    codes, target, preds = _data(seed=4)
    gid = intersectional_group_ids(codes, [2, 3])
    cpu, gpu = GroupConfusionMetric(6, 2), GroupConfusionMetric(6, 2).to("cuda")
    cpu.update(preds, target, gid)
    gpu.update(preds.cuda(), target.cuda(), gid.cuda())
    assert torch.equal(gpu.counts.cpu(), cpu.counts)
    assert gpu.fairness_metrics()["accuracy"] == cpu.fairness_metrics()["accuracy"]


def test_ids_and_level_table_edge_cases():
    assert intersectional_group_ids(torch.tensor([0, 2, 1]), [3]).tolist() == [0, 2, 1]  # one attribute, 1-D
    # three attributes, last fastest: (1, 2, 3) over levels (2, 3, 4) is 1·12 + 2·4 + 3 = 23
    assert intersectional_group_ids(torch.tensor([[1, 2, 3], [0, 0, 1]]), [2, 3, 4]).tolist() == [23, 1]
    with pytest.raises(ValueError, match="integer level codes"):
        intersectional_group_ids(torch.tensor([[0.0, 1.0]]), [2, 3])
    table = radix_groups([2, 2])
    assert list(table.columns) == ["attr_0", "attr_1"] and table.index.name == "group_id"
    assert radix_groups([2], names=["sex"]).columns.tolist() == ["sex"]
    with pytest.raises(ValueError, match="one name per attribute"):
        radix_groups([2, 2], names=["sex"])


def test_metric_arguments_and_boundaries():
    with pytest.raises(ValueError, match="num_groups >= 1"):
        GroupConfusionMetric(0, 2)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        GroupConfusionMetric(2, 1)
    with pytest.raises(ValueError, match="groups has 6 rows but num_groups=2"):
        GroupConfusionMetric(2, 2, groups=radix_groups([2, 3]))
    one = GroupConfusionMetric(1, 2)  # a single group is allowed
    one.update(torch.tensor([1]), torch.tensor([1]), torch.tensor([0]))  # a batch of one sample counts
    assert one.counts.dtype == torch.long and one.counts.tolist() == [[[0, 0], [0, 1]]]
    three = GroupConfusionMetric(1, 3)
    with pytest.raises(ValueError, match=r"float preds must be \[B, 3\] scores .*got shape \(2,\)"):
        three.update(torch.tensor([0.2, 0.7]), torch.tensor([0, 1]), torch.tensor([0, 0]))
    m = GroupConfusionMetric(1, 2)
    with pytest.raises(ValueError, match=r"preds must lie in \[0, 2\)"):
        m.update(torch.tensor([0, 2]), torch.tensor([0, 1]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"target must lie in \[0, 2\)"):
        m.update(torch.tensor([0, 1]), torch.tensor([-1, 1]), torch.tensor([0, 0]))


@pytest.mark.parametrize("values, labels", [
    ([0.0, 1.0, 0.5, 0.49], [0, 1, 1, 0]),  # probabilities, including both ends and the 0.5 threshold
    ([1.5, 0.2], [1, 1]),                    # outside [0, 1] → logits: sigmoid(0.2) > 0.5
    ([-0.2, 0.4], [0, 1]),                   # a negative value makes them logits too: sigmoid(0.4) > 0.5
])
def test_binary_probabilities_and_logits_threshold(values, labels):
    m = GroupConfusionMetric(1, 2)
    m.update(torch.tensor(values), torch.zeros(len(values), dtype=torch.long), torch.zeros(len(values)))
    assert m.counts[0, 0].tolist() == [labels.count(0), labels.count(1)]


def test_fairness_metrics_syncs_like_compute_and_keeps_the_metric_settings():
    """``fairness_metrics()`` gathers the counts across processes when ``sync_on_compute`` (a stand-in gather that
    returns two identical 'processes' doubles every n) and not otherwise; ``pos_index`` and ``min_group_size``
    reach the metrics (hand case: groups of 4 → NaN gaps at the default min_group_size 20)."""
    target = torch.tensor([1, 1, 0, 0, 1, 1, 0, 0])
    preds = torch.tensor([1, 0, 0, 0, 1, 1, 0, 0])                       # TPR 1/2 vs 1, FPR 0 vs 0
    gid = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])

    def two_processes(tensor, group=None):
        return [tensor, tensor]

    for sync, factor in ((True, 2), (False, 1)):
        m = GroupConfusionMetric(2, 2, min_group_size=1, dist_sync_fn=two_processes, sync_on_compute=sync,
                                 distributed_available_fn=lambda: True)
        m.update(preds, target, gid)
        assert m.fairness_metrics()["per_group"]["n"].tolist() == [4 * factor, 4 * factor], sync
        assert int(m.counts.sum()) == 8                                     # the local state is left as it was
    m = GroupConfusionMetric(2, 2, min_group_size=1)
    m.update(preds, target, gid)
    assert m.fairness_metrics()["equal_opportunity_difference"] == pytest.approx(0.5)
    m0 = GroupConfusionMetric(2, 2, min_group_size=1, pos_index=0)      # class 0 positive: "TPR" = 1 − FPR = 1, 1
    m0.update(preds, target, gid)
    assert m0.fairness_metrics()["equal_opportunity_difference"] == pytest.approx(0.0)
    default = GroupConfusionMetric(2, 2)
    default.update(preds, target, gid)
    assert np.isnan(default.fairness_metrics()["equal_opportunity_difference"])
    assert float(default.compute()["accuracy"]) == pytest.approx(7 / 8)
    with pytest.raises(ValueError, match="^codes must be integer level codes, not floats$"):
        intersectional_group_ids(torch.tensor([[0.0, 1.0]]), [2, 2])


def test_the_package_exports_the_streaming_part_lazily():
    import fairq.metrics as metrics
    from fairq.metrics import streaming

    for name in ("GroupConfusionMetric", "intersectional_group_ids", "radix_groups"):
        assert getattr(metrics, name) is getattr(streaming, name)
    with pytest.raises(AttributeError, match=r"module 'fairq.metrics' has no attribute 'nope'"):
        metrics.nope  # noqa: B018
