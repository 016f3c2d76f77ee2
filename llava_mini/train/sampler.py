"""The order of the data: which examples each process reads at each micro-step."""

from __future__ import annotations

import functools

import torch
from torch.utils.data import Sampler


class StepSampler(Sampler):
    """Micro-batches of indices for one process, as a pure function of the micro-step number.

    Epoch e is a permutation of the dataset seeded with (seed, e), cut into global batches of
    ``batch_size`` (an incomplete last one is dropped); optimizer step s uses global batch s. That batch
    is cut into ``accumulation x num_processes`` micro-batches of ``micro``, and process r's j-th
    micro-step of the step takes piece ``j * num_processes + r``. So every split of the same global batch
    over processes and accumulation sees the same examples per step, and starting at any micro-step
    needs no state, which makes resuming exact. (Why not accelerate's prepared DataLoader: it deals whole
    batches out to the processes, so which examples a step sees depends on how many there are.)

    With ``lengths``, each run of ``group`` global batches is sorted by length before it is cut (and the
    cut batches are shuffled again), so a batch holds examples of similar length and little padding:
    the same examples, ~20% fewer padded tokens on the course data (HF's group_by_length).
    """

    def __init__(self, dataset_size: int, batch_size: int, micro: int, num_processes: int, process_index: int,
                 seed: int, start: int, stop: int, lengths: list[int] | None = None, group: int = 16):
        if batch_size % (micro * num_processes):
            raise ValueError(f"batch_size {batch_size} is not a multiple of {micro} x {num_processes} processes")
        if dataset_size < batch_size:
            raise ValueError(f"the dataset has {dataset_size} examples, fewer than one batch ({batch_size})")
        self.dataset_size, self.batch_size, self.micro = dataset_size, batch_size, micro
        self.num_processes, self.rank = num_processes, process_index
        self.accumulation = batch_size // (micro * num_processes)
        self.seed, self.start, self.stop = seed, start, stop
        self.per_epoch, self.group = dataset_size // batch_size, group
        self.lengths = None if lengths is None else torch.as_tensor(lengths)

    @functools.lru_cache(maxsize=1)  # the epoch being read
    def _order(self, epoch: int) -> torch.Tensor:
        """The epoch's indices, one global batch after another (a row per optimizer step)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.dataset_size, generator=generator)[: self.per_epoch * self.batch_size]
        if self.lengths is None:
            return order.view(self.per_epoch, self.batch_size)
        batches = torch.cat([chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)]
                             .view(-1, self.batch_size) for chunk in order.split(self.group * self.batch_size)])
        return batches[torch.randperm(len(batches), generator=generator)]

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        for k in range(self.start, self.stop):
            step, j = divmod(k, self.accumulation)
            epoch, position = divmod(step, self.per_epoch)
            piece = j * self.num_processes + self.rank
            yield self._order(epoch)[position, piece * self.micro: (piece + 1) * self.micro].tolist()
