"""Per-cell minibatch samplers of the modular trainer (indices into the training set).

``with_replacement`` (the companion's rule): ``min(batch_size, n)`` indices drawn uniformly with
replacement at every step. ``epoch_shuffle``: walks through per-epoch random permutations.
Each cell has its own CPU ``torch.Generator``, so a cell's draws do not depend on its job.
"""

from __future__ import annotations

import torch


class ReplacementSampler:
    """Per-cell minibatches drawn uniformly with replacement: ``torch.randint(0, n, (min(b, n),))``.

    ``rng_state`` is the starting state of the cell's own CPU ``torch.Generator``; the trainer
    passes the global generator's state right after the cell's model was built from its seed,
    which makes the draws the companion's (``set_seed(seed); Model(p); ... torch.randint``).
    """

    def __init__(self, n: int, batch_size: int, rng_state: torch.Tensor):
        self.n, self.size = n, min(int(batch_size), n)
        self.gen = torch.Generator()
        self.gen.set_state(rng_state)

    def next(self) -> torch.Tensor:
        return torch.randint(0, self.n, (self.size,), generator=self.gen)

    def state(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


class MinibatchSampler:
    """Per-cell epoch-wise shuffling with its own ``torch.Generator`` (seeded by the cell seed)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, batch_size
        self.gen = torch.Generator().manual_seed(int(seed))
        self.perm = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.pos >= self.n:
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos}

    def load(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.perm, self.pos = state["perm"], state["pos"]
