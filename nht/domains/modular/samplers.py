"""Per-cell minibatch samplers of the modular trainer (indices into the training set).

``with_replacement`` (the companion's rule): ``min(batch_size, n)`` indices drawn uniformly with
replacement at every step. ``epoch_shuffle``: walks through per-epoch random permutations.
Each cell has its own CPU ``torch.Generator``, so a cell's draws do not depend on its job.

Both draw many steps at once: :meth:`take` ``(k)`` returns the indices of the next ``k`` steps,
back to back in one tensor, and the sizes of the steps' minibatches; they are exactly the
indices that ``k`` calls of :meth:`next` would return (``torch.randint`` and ``torch.randperm`` on
the CPU draw element by element from the generator, so one draw of ``k * b`` values is ``k``
draws of ``b``; tested). The trainer draws a whole stretch of steps per cell and moves it to the
device once, instead of drawing, stacking and copying every step.
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

    def take(self, k: int) -> tuple[torch.Tensor, list[int]]:
        """The next ``k`` steps' indices, concatenated (``k * size``,), and their sizes."""
        return torch.randint(0, self.n, (k * self.size,), generator=self.gen), [self.size] * k

    def uniform_size(self) -> int | None:
        """Every step's minibatch size, or None when steps differ (static shapes need one)."""
        return self.size

    def state(self) -> dict:
        return {"gen": self.gen.get_state()}

    def load(self, state: dict) -> None:
        self.gen.set_state(state["gen"])


class MinibatchSampler:
    """Per-cell epoch-wise shuffling with its own ``torch.Generator`` (seeded by the cell seed).

    An epoch is ``ceil(n / batch_size)`` steps; its last minibatch is short when ``batch_size``
    does not divide ``n``. The next epoch's permutation is drawn when its first step is taken."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size = n, int(batch_size)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.perm = torch.randperm(n, generator=self.gen)
        self.pos = 0

    def next(self) -> torch.Tensor:
        return self.take(1)[0]

    def take(self, k: int) -> tuple[torch.Tensor, list[int]]:
        """The next ``k`` steps' indices, concatenated, and their sizes (one slice per epoch touched)."""
        parts, sizes, start = [], [], self.pos
        for _ in range(k):
            if self.pos >= self.n:
                if self.pos > start:
                    parts.append(self.perm[start:self.pos])
                self.perm, self.pos, start = torch.randperm(self.n, generator=self.gen), 0, 0
            size = min(self.batch_size, self.n - self.pos)
            sizes.append(size)
            self.pos += size
        parts.append(self.perm[start:self.pos])
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), sizes

    def uniform_size(self) -> int | None:
        return self.batch_size if self.n % self.batch_size == 0 else None

    def state(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos}

    def load(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.perm, self.pos = state["perm"], state["pos"]
