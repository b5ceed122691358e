"""Group-balanced sampling: equal draws per intersectional sensitive group."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from fairq.sampling import balanced_indices  # noqa: F401 (re-exported: the rule lives in fairq, below the datamodules)


class GroupBalancedSampler(Sampler[int]):
    """Draw ``num_samples`` indices per epoch with equal counts for every intersectional group.

    Parameters
    ----------
    group_ids
        One integer group id per dataset item (e.g. the intersection of all sensitive attributes).
    num_samples
        Draws per epoch; defaults to the dataset length.
    seed
        Base seed; the draw of epoch ``e`` depends only on ``(seed, e)`` (Lightning calls ``set_epoch``).
    """

    def __init__(
        self, group_ids: Sequence[int] | np.ndarray | torch.Tensor, num_samples: int | None = None, seed: int = 0
    ):
        if isinstance(group_ids, torch.Tensor):
            group_ids = group_ids.cpu().numpy()
        self.group_ids = np.asarray(group_ids).reshape(-1)
        if self.group_ids.size == 0:
            raise ValueError("GroupBalancedSampler needs at least one item")
        self.num_samples = len(self.group_ids) if num_samples is None else int(num_samples)
        if self.num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw the next iteration yields."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        return iter(balanced_indices(self.group_ids, self.num_samples, rng).tolist())

    def __len__(self) -> int:
        return self.num_samples
