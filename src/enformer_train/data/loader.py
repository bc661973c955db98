"""Sharded, resumable batches from a store split.

The batch stream of a rank is a pure function of (seed, epoch, batch number):

- training: each epoch a permutation of the split from (seed, epoch); its first world_size * m
  samples (m = len // world_size) are dealt to the ranks, rank r taking positions r, r + world_size,
  ...; each rank cuts its m samples into m // batch_size full batches; epochs follow one another
  without end. Every rank takes the same number of steps.
- evaluation: no shuffle; rank r takes samples r, r + world_size, ...; batches of batch_size, the
  last one short; one pass. Every sample exactly once over all ranks, no padding duplicates (ranks
  may differ by one sample and one batch).

Within a rank, batch k is built by loader worker k mod num_workers, which torch's DataLoader
returns in order, so (rank, worker) shares are disjoint, and the batches do not depend on the
number of workers. Augmentation choices depend on (seed, epoch, sample) only. The loader's state is
the number of batches it has handed out: state_dict() / load_state_dict() resume exactly.

Batches: {'sequence': uint8 [batch, sequence_length] codes, 'target': float16 [batch, positions, tracks],
'index': int64 [batch] sample numbers, 'shift': int64 [batch], 'reverse_complement': bool [batch]}.
`to_device` moves the uint8 codes (the model one-hots them) and makes float32 targets on the device.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import UserError
from .augment import COMPLEMENT, Augment, FixedView, window_margin

# Salt of the epoch permutation's random stream: Augment draws from (seed, epoch, sample, AUGMENT_SALT),
# and this one keeps (seed, epoch, ...) for the order apart from it.
EPOCH_ORDER_SALT = 0x5A3D


@dataclass(frozen=True)
class Shard:
    """Which share of a split a process reads: rank `rank` of `world_size` ranks. A
    distributed.World has these two fields too and is passed in place of a Shard."""

    rank: int = 0
    world_size: int = 1


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """[num_samples] sample numbers of one epoch: a permutation from (seed, epoch), or 0..n-1."""
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    return np.random.default_rng([seed, epoch, EPOCH_ORDER_SALT]).permutation(num_samples).astype(np.int64)


def rank_share(num_samples: int, seed: int, epoch: int, shard: Shard, train: bool) -> np.ndarray:
    """The sample numbers rank shard.rank reads in `epoch`, in order."""
    order = epoch_order(num_samples, seed, epoch, shuffle=train)
    if train:
        order = order[:(num_samples // shard.world_size) * shard.world_size]
    return order[shard.rank::shard.world_size]


class _Batches(IterableDataset):
    """Batches start, start + 1, ... of one rank; each DataLoader worker builds every num_workers-th."""

    def __init__(self, store, batch_size: int, train: bool, seed: int, shard: Shard,
                 augment, sequence_length: int, start: int):
        self.store, self.batch_size, self.train, self.seed = store, batch_size, train, seed
        self.shard, self.augment, self.sequence_length, self.start = shard, augment, sequence_length, start

    def steps_per_epoch(self) -> int:
        share = len(rank_share(len(self.store), self.seed, 0, self.shard, self.train))
        return share // self.batch_size if self.train else -(-share // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        steps = self.steps_per_epoch()
        numbers = itertools.count(self.start + worker, num_workers)
        if not self.train:
            numbers = range(self.start + worker, steps, num_workers)
        cached_epoch, share = None, None
        for k in numbers:
            epoch, step = divmod(k, steps)
            if epoch != cached_epoch:
                cached_epoch = epoch
                share = rank_share(len(self.store), self.seed, epoch, self.shard, self.train)
            indices = share[step * self.batch_size:(step + 1) * self.batch_size]
            yield self.build(indices, epoch, shared=info is not None)

    def build(self, indices: np.ndarray, epoch: int, shared: bool = False) -> dict[str, torch.Tensor]:
        """Read, augment and collate the samples `indices` into one batch."""
        store, n = self.store, len(indices)
        sequence = torch.empty((n, self.sequence_length), dtype=torch.uint8)
        target = torch.empty((n, store.target_length, store.num_targets), dtype=torch.float16)
        if shared:  # built straight into shared memory: no copy when the batch crosses to the trainer
            sequence.share_memory_()
            target.share_memory_()
        seq_np, tgt_np = sequence.numpy(), target.numpy()
        shifts = np.zeros(n, dtype=np.int64)
        reverse = np.zeros(n, dtype=np.bool_)
        window = np.empty(store.window, dtype=np.uint8)
        scratch = permuted = None
        strand_pair = store.strand_pair
        identity = np.array_equal(strand_pair, np.arange(len(strand_pair)))
        margin = window_margin(store.window, self.sequence_length)
        for j, i in enumerate(indices):
            shifts[j], reverse[j] = self.augment.choose(self.seed, epoch, int(i))
            store.read_sequence(i, out=window)
            cut = window[margin + shifts[j]:margin + shifts[j] + self.sequence_length]
            if reverse[j]:
                np.take(COMPLEMENT, cut[::-1], out=seq_np[j])
                scratch = store.read_target(i, out=scratch)
                if permuted is None:
                    permuted = np.empty_like(scratch)
                if identity:
                    tgt_np[j] = scratch[::-1]
                else:  # a gather along contiguous rows, then the reversed copy: ~2x faster than one strided gather
                    permuted = np.take(scratch, strand_pair, axis=1, out=permuted)
                    tgt_np[j] = permuted[::-1]
            else:
                seq_np[j] = cut
                store.read_target(i, out=tgt_np[j])
        return {"sequence": sequence, "target": target, "index": torch.from_numpy(np.asarray(indices, dtype=np.int64)),
                "shift": torch.from_numpy(shifts), "reverse_complement": torch.from_numpy(reverse)}


class Loader:
    """Batches of one store split for one rank. Training: shuffled, augmented, endless. Evaluation:
    every sample of the rank's share once, in order, not augmented (unless `augment` is given, e.g.
    augment.FixedView(0, True) for test-time averaging).

    store: a Store (one split). batch_size: samples per batch on this rank.
    train: shuffle each epoch, drop the samples that do not fill whole batches on every rank, and
        never end; otherwise one pass over every sample of the rank's share, the last batch short.
    seed: the epoch permutations and the augmentation choices are functions of it (and of the
        epoch and the sample), and it seeds the DataLoader's own generator.
    shard: this process's rank and the number of ranks (a Shard, or distributed.World).
    num_workers: DataLoader worker processes (0: build batches in this process); batches and
        their order do not depend on it.
    augment: how each sample is shifted and reverse-complemented: default Augment(store.max_shift)
        when training, FixedView() (none) otherwise.
    sequence_length: bp of each input, cropped from the centre of the stored windows (default the
        store's); the windows' margin must leave room for augment's shifts.
    pin_memory: page-locked batches for faster copies to a GPU (default: whether CUDA is available).
    prefetch_factor: batches each worker builds ahead.
    """

    def __init__(self, store, batch_size: int, *, train: bool, seed: int = 0, shard: Shard = Shard(),
                 num_workers: int = 0, augment: Augment | FixedView | None = None, sequence_length: int | None = None,
                 pin_memory: bool | None = None, prefetch_factor: int = 2):
        if not 0 <= shard.rank < shard.world_size:
            raise ValueError(f"rank {shard.rank} outside world size {shard.world_size}")
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        sequence_length = store.sequence_length if sequence_length is None else sequence_length
        augment = augment if augment is not None else (Augment(store.max_shift) if train else FixedView())
        try:
            window_margin(store.window, sequence_length, augment.max_shift)
        except ValueError:
            raise UserError(f"{store.path}: windows of {store.window} bp cannot give {sequence_length}-bp inputs "
                            f"with shifts of up to {augment.max_shift} (centred, with an even margin); use a smaller "
                            f"sequence_length or max_shift, or prepare the store with a larger --context / "
                            f"--max-shift") from None
        self.store, self.batch_size, self.train, self.seed = store, batch_size, train, seed
        self.shard, self.num_workers = Shard(shard.rank, shard.world_size), num_workers
        self.augment, self.sequence_length, self.prefetch_factor = augment, sequence_length, prefetch_factor
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._handed_out = 0
        self._steps = self._dataset(0).steps_per_epoch()
        if self._steps == 0:
            raise UserError(f"{store.path}: the {store.split} split has {len(store)} samples, too few for batches of "
                            f"{batch_size} on each of {shard.world_size} ranks; use a smaller batch size")

    def _dataset(self, start: int) -> _Batches:
        return _Batches(self.store, self.batch_size, self.train, self.seed, self.shard,
                        self.augment, self.sequence_length, start)

    @property
    def steps_per_epoch(self) -> int:
        return self._steps

    @property
    def epoch(self) -> int:
        return self._handed_out // self._steps

    def __len__(self) -> int:
        """Batches in one epoch of this rank (for evaluation: all of them)."""
        return self._steps

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if not self.train and self._handed_out >= self._steps:
            self._handed_out = 0  # each evaluation pass starts again
        dataset = self._dataset(self._handed_out)
        # A private generator: DataLoader draws its workers' base seed from it, and drawing from the
        # global one would shift the training RNG (dropout) by the time the iterator was made.
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                            generator=torch.Generator().manual_seed(self.seed),
                            prefetch_factor=self.prefetch_factor if self.num_workers else None,
                            persistent_workers=False)
        for batch in loader:
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self._handed_out // self._steps, "position": self._handed_out % self._steps,
                "seed": self.seed, "batch_size": self.batch_size, "world_size": self.shard.world_size,
                "rank": self.shard.rank, "num_samples": len(self.store)}

    def load_state_dict(self, state: dict) -> None:
        now = {"seed": self.seed, "batch_size": self.batch_size, "world_size": self.shard.world_size,
               "num_samples": len(self.store)}
        for key, value in now.items():
            if state[key] != value:
                raise UserError(f"loader state: {key} was {state[key]}, now {value}; an exact resume needs the "
                                f"same data, seed, batch size and number of ranks")
        self._handed_out = state["epoch"] * self._steps + state["position"]


def to_device(batch: dict, device: torch.device | str) -> dict:
    """Move a batch to `device`: 'sequence' stays uint8 codes (the model one-hots them there, in its
    own dtype) and 'target' becomes float32 there, after the small float16 copy."""
    device = torch.device(device)
    out = {}
    for key, value in batch.items():
        if isinstance(value, dict):
            out[key] = to_device(value, device)
        elif key == "target":
            out[key] = value.to(device, non_blocking=True).float()
        elif isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        else:
            out[key] = value
    return out
