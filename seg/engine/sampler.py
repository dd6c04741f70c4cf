"""Iteration-based, resumable training sampler.

Training runs for a number of iterations, not epochs, so the sampler streams samples forever: epoch after
epoch, each epoch is torch's ``DistributedSampler`` order for this rank (``set_epoch`` reshuffles with
``seed + epoch``; world size 1 is the single-process case). It yields ``(index, sample_seed)``: the seed fixes
that sample's augmentation, so the data a step sees depends only on the run's seed and the position in the
stream, not on the number of workers or on what happened before a resume. Skipping to a position is
arithmetic, so resuming costs nothing.
"""

from __future__ import annotations

import itertools
from typing import Dict, Iterator, Tuple

import numpy as np
from torch.utils.data import DistributedSampler, Sampler


class ResumableSampler(Sampler):
    def __init__(self, dataset_size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0):
        self._order = DistributedSampler(range(dataset_size), num_replicas=world_size, rank=rank, shuffle=True,
                                         seed=seed, drop_last=False)
        self.seed, self.rank = seed, rank
        self.start = start  # samples this rank has already consumed

    @property
    def samples_per_epoch(self) -> int:
        return len(self._order)

    def position(self, consumed: int) -> Dict[str, int]:
        """Epoch and offset in it after ``consumed`` samples (stored in checkpoints for reference)."""
        return {"epoch": consumed // self.samples_per_epoch, "offset": consumed % self.samples_per_epoch,
                "consumed": consumed}

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch, offset = divmod(self.start, self.samples_per_epoch)
        while True:
            self._order.set_epoch(epoch)
            for position, index in enumerate(itertools.islice(self._order, offset, None), start=offset):
                sample_seed = np.random.SeedSequence([self.seed, self.rank, epoch, position]).generate_state(1)[0]
                yield index, int(sample_seed)
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # an endless stream; DataLoader only needs this for its own bookkeeping
        return 2 ** 62
