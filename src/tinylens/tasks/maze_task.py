"""The maze-solving task: AOTP prompts in, the shortest path out, as fixed-length token sequences.

Background:
    Each sequence is a maze's AOTP prompt (adjacency list, origin, target, ``<PATH_START>``), left-
    padded with ``<PADDING>`` so that ``<PATH_START>`` always sits at the same position, followed by
    the path cells and ``<PATH_END>``, right-padded to ``seq_len``. The answer slots are the positions
    after ``<PATH_START>``; :meth:`MazeTask.answer_valid` marks those up to ``<PATH_END>``, so paths of
    every length train and score together. Padding on the left keeps the prompt's end, where probes
    read the residual stream, at one position for every maze.

Usage:
    task = MazeTask(grid=5)
    tokens = task.sample(64, torch.Generator().manual_seed(0))   # [64, task.seq_len]
    solved = task.solved_maze(tokens[0])

References:
    Ivanitskiy, Spies et al. 2023 (maze-transformer pads prompts on the left in the same way).
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from jaxtyping import Bool, Int

from tinylens.errors import ConfigError, TokenError, quote, unknown_name
from tinylens.tasks.base import Task, Tokens, draw_batch_seed
from tinylens.tasks.maze import (
    GENERATORS,
    MAX_GRID,
    MIN_GRID,
    SolvedMaze,
    connection_labels,
    generate,
    random_solved,
    solve,
    wall_list,
)
from tinylens.tasks.maze_tokens import (
    ADJLIST_END,
    ADJLIST_START,
    PADDING,
    PATH_END,
    PATH_START,
    SPECIAL_TOKENS,
    as_tokens,
    coord_token,
    coord_tokens,
    from_tokens,
    parse_coord,
    prompt_from_tokens,
    query_tokens,
)

QUERY_LEN = 7
"""Prompt tokens after the adjacency list: origin ×3, target ×3, ``<PATH_START>``."""

TREE_GENERATORS = ("dfs", "wilson", "kruskal")
"""Generators whose mazes are spanning trees (n² − 1 open walls)."""


@dataclass(frozen=True)
class NextSteps:
    """Per sequence, where the path's next step is chosen and what the prompt says about it."""

    query: Bool[torch.Tensor, "batch pos"]
    """Positions holding a path cell that is not the target (the next token is a cell)."""
    valid_keys: Bool[torch.Tensor, "batch query key"]
    """Adjacency-list positions naming a cell joined to the query's cell by an open wall."""
    invalid_keys: Bool[torch.Tensor, "batch query key"]
    """Adjacency-list positions naming a lattice neighbour of the query's cell behind a wall."""
    allowed: Bool[torch.Tensor, "batch query vocab"]
    """Tokens that would be a legal next step (a cell joined to the query's cell)."""


HELD_OUT_SHARE = 16
"""One in this many (maze, origin, target) problems is held out: never drawn for training."""


def is_held_out(solved: SolvedMaze) -> bool:
    """Whether a problem belongs to the held-out split: a fixed hash of its walls, origin and
    target (not of the token order, which is shuffled), so the split is the same in every run."""
    maze = solved.maze
    key = b"".join((maze.down.tobytes(), maze.right.tobytes(), bytes([*solved.origin, *solved.target])))
    digest = hashlib.blake2b(key, digest_size=8).digest()
    return int.from_bytes(digest, "little") % HELD_OUT_SHARE == 0


class MazeTask(Task):
    """Solve n×n lattice mazes (n = 2…20) from maze-dataset's AOTP prompt."""

    name: ClassVar[str] = "maze"
    generation_metric_names: ClassVar[tuple[str, ...]] = ("exact_path", "valid_path", "target_reached")
    seeded_batches: ClassVar[bool] = True

    def __init__(self, grid: int = 5, generator: str = "dfs") -> None:
        """
        Args:
            grid: the side n of the n×n maze.
            generator: ``dfs`` (default), ``wilson``, ``kruskal`` or ``percolation``.
        """
        if isinstance(grid, bool) or not isinstance(grid, int) or not MIN_GRID <= grid <= MAX_GRID:
            raise ConfigError(f"maze grid must be an integer {MIN_GRID}–{MAX_GRID}, got {grid!r}")
        if generator not in GENERATORS:
            raise unknown_name("maze generator", generator, GENERATORS)
        self.grid = grid
        self.generator = generator
        self._vocab = (*SPECIAL_TOKENS, *coord_tokens(grid))
        self._ids = {token: i for i, token in enumerate(self._vocab)}
        n = grid
        max_walls = n * n - 1 if generator in TREE_GENERATORS else 2 * n * (n - 1)
        # <ADJLIST_START> 4 per wall <ADJLIST_END>, origin ×3, target ×3, <PATH_START>
        self._prompt_len = 4 * max_walls + 2 + QUERY_LEN
        self._answer_positions = torch.arange(self._prompt_len, self._prompt_len + n * n + 1)

    # -- Task contract ----------------------------------------------------------------------------

    @property
    def vocab(self) -> tuple[str, ...]:
        return self._vocab

    @property
    def seq_len(self) -> int:
        return self._prompt_len + self.grid**2 + 1  # the longest path visits every cell

    @property
    def answer_positions(self) -> Int[torch.Tensor, " answer"]:
        return self._answer_positions

    @property
    def answer_names(self) -> tuple[str, ...]:
        return tuple(f"P{k}" for k in range(len(self._answer_positions)))

    def options(self) -> dict[str, Any]:
        return {"grid": self.grid, "generator": self.generator}

    def sample(self, n: int, generator: torch.Generator, *, train: bool = False) -> Tokens:
        """``n`` random mazes with two distinct random cells as origin and target.

        Training draws (``train=True``) come only from the training split and all others only from
        the held-out split (see :func:`is_held_out`), so a maze scored as held out was never trained
        on, whatever the seeds.
        """
        return self.batch_from_seed(draw_batch_seed(generator), n, train=train)

    @property
    def shared_prefix_len(self) -> int:
        """The left-padded adjacency list: everything before ``<ORIGIN_START>``."""
        return self._prompt_len - QUERY_LEN

    def sample_grouped(
        self, n_groups: int, k: int, generator: torch.Generator, *, train: bool = False
    ) -> Tokens:
        """``n_groups`` random mazes with ``k`` (origin, target) queries each, drawn independently
        (with replacement) from the maze's problems in the split ``train`` asks for (see
        :meth:`sample`). The k sequences of a maze share its adjacency list, in the same order."""
        return self.batch_from_seed(draw_batch_seed(generator), n_groups * k, k=k, train=train)

    def batch_from_seed(self, seed: int, n: int, *, k: int = 1, train: bool = False) -> Tokens:
        if k > 1 and n % k:
            raise ConfigError(f"{n} sequences do not split into groups of {k}")
        rng = np.random.default_rng(seed)
        rows = []
        while len(rows) < n:
            maze = generate(self.generator, self.grid, rng)
            solved = random_solved(maze, rng)
            if is_held_out(solved) == train:
                continue  # a maze whose first draw is in the other split is skipped
            words = as_tokens(solved, rng)
            rows.append(self._layout(words))
            prefix = words[: words.index(ADJLIST_END) + 1]
            while len(rows) % k:  # the first query belongs to the split, so this ends
                solved = random_solved(maze, rng)
                if is_held_out(solved) != train:
                    rows.append(self._layout([*prefix, *query_tokens(solved)]))
        return torch.tensor(rows, dtype=torch.int64).reshape(n, self.seq_len)

    def answer_valid(self, tokens: Tokens) -> Bool[torch.Tensor, "batch answer"]:
        """Answer slots up to and including each sequence's ``<PATH_END>``."""
        answers = tokens[:, self._answer_positions]  # [batch, answer]
        is_end = answers == self._ids[PATH_END]
        after_end = (is_end.cumsum(1) - is_end.long()) > 0
        return ~after_end

    @property
    def answer_end(self) -> tuple[int, int]:
        return self._ids[PATH_END], self._ids[PADDING]

    def encode(self, text: str) -> Int[torch.Tensor, " pos"]:
        words = text.split()
        if len(words) != self.seq_len:
            raise TokenError(
                f"a {self.grid}×{self.grid} maze sequence has {self.seq_len} tokens, got {len(words)}"
            )
        return torch.tensor(self._to_ids(words), dtype=torch.int64)

    def decode(self, tokens: Int[torch.Tensor, " pos"]) -> str:
        ids = [int(t) for t in tokens]
        if any(not 0 <= i < len(self._vocab) for i in ids):
            raise TokenError(f"token ids outside the maze vocabulary (0–{len(self._vocab) - 1})")
        return " ".join(self._vocab[i] for i in ids)

    def parse_prompt(self, text: str) -> Int[torch.Tensor, " prompt"]:
        """An AOTP prompt (padding optional, ending in ``<PATH_START>``) → left-padded prompt ids."""
        words = [w for w in text.split() if w != PADDING]
        prompt_from_tokens(words, self.grid)  # validates, naming the offending token
        if len(words) > self._prompt_len:
            raise TokenError(
                f"the prompt has {len(words)} tokens; {self.generator} mazes of this size have at "
                f"most {self._prompt_len}"
            )
        padded = [PADDING] * (self._prompt_len - len(words)) + words
        return torch.tensor(self._to_ids(padded), dtype=torch.int64)

    def solve(self, prompt: Int[torch.Tensor, "batch prompt"]) -> Tokens:
        rows = []
        for row in prompt:
            words = [w for w in self.decode(row).split() if w != PADDING]
            maze, origin, target = prompt_from_tokens(words, self.grid)
            path = solve(maze, origin, target).path
            rows.append(self._layout([*words, *(coord_token(c) for c in path), PATH_END]))
        return torch.tensor(rows, dtype=torch.int64).reshape(len(rows), self.seq_len)

    def generation_metrics(
        self, prompt: Int[torch.Tensor, "batch prompt"], answer: Int[torch.Tensor, "batch answer"]
    ) -> dict[str, float]:
        """Of the generated paths: the fraction equal to the shortest path (``exact_path``), the
        fraction that are walks from the origin through open walls ending in ``<PATH_END>``
        (``valid_path``), and the fraction of valid paths that end on the target
        (``target_reached``, counted over all prompts)."""
        exact = valid = reached = 0
        for row_prompt, row_answer in zip(prompt, answer, strict=True):
            words = [w for w in self.decode(row_prompt).split() if w != PADDING]
            maze, origin, target = prompt_from_tokens(words, self.grid)
            truth = solve(maze, origin, target).path
            generated = self.decode(row_answer).split()
            if PATH_END not in generated:
                continue
            cells = generated[: generated.index(PATH_END)]
            path = [parse_coord(w) for w in cells]
            if not path or None in path or path[0] != origin:
                continue
            steps_ok = all(maze.connected(a, b) for a, b in itertools.pairwise(path))
            if not steps_ok:
                continue
            valid += 1
            reached += path[-1] == target
            exact += tuple(path) == truth
        n = max(1, prompt.shape[0])
        return {"exact_path": exact / n, "valid_path": valid / n, "target_reached": reached / n}

    # -- mazes ------------------------------------------------------------------------------------

    def connection_labels(self, tokens: Tokens) -> Bool[torch.Tensor, "batch wall"]:
        """Each sequence's open/closed walls in :func:`~tinylens.tasks.maze.wall_list` order: the
        targets of a connection probe."""
        return torch.from_numpy(
            np.stack([connection_labels(self.solved_maze(row).maze) for row in tokens])
        )

    def next_steps(self, tokens: Tokens) -> NextSteps:
        """Where the path's next step is decided, and which tokens name valid and invalid steps.

        Queries are the path positions whose cell is not yet the target (the model predicts a cell
        there). For a query on cell c, "valid" adjacency-list tokens name a cell joined to c by an
        open wall, "invalid" ones a lattice neighbour of c behind a closed wall.
        """
        n_cells = self.grid**2
        first_cell = len(SPECIAL_TOKENS)
        cell = torch.where(tokens >= first_cell, tokens - first_cell, -1)  # [batch, pos]
        ids = self._ids
        in_adjlist = (tokens == ids[ADJLIST_START]).cumsum(1) - (tokens == ids[ADJLIST_END]).cumsum(1)
        in_adjlist = (in_adjlist > 0) & (cell >= 0)

        batch, seq = tokens.shape
        open_ = torch.zeros(batch, n_cells, n_cells, dtype=torch.bool)  # [batch, cell, cell]
        for b, row in enumerate(tokens):
            for a, c in self.solved_maze(row).maze.connections():
                i, j = a[0] * self.grid + a[1], c[0] * self.grid + c[1]
                open_[b, i, j] = open_[b, j, i] = True
        lattice = torch.zeros(n_cells, n_cells, dtype=torch.bool)
        for a, c in wall_list(self.grid):
            i, j = a[0] * self.grid + a[1], c[0] * self.grid + c[1]
            lattice[i, j] = lattice[j, i] = True

        query = torch.zeros(batch, seq, dtype=torch.bool)
        query[:, self._prompt_len : -1] = (cell[:, self._prompt_len : -1] >= 0) & (
            cell[:, self._prompt_len + 1 :] >= 0
        )
        here = cell.clamp_min(0)  # [batch, pos]; only read where query holds
        # joined[b, q, k]: the cell at k is joined to the cell at q by an open wall
        joined = open_.gather(1, here[:, :, None].expand(-1, -1, n_cells))  # [batch, q, cell]
        key_cell = here[:, None, :].expand(-1, seq, -1)  # [batch, q, k]
        joined_k = joined.gather(2, key_cell)
        beside_k = lattice[here].gather(2, key_cell)  # lattice neighbours, [batch, q, k]
        keys = query[:, :, None] & in_adjlist[:, None, :]
        allowed = torch.zeros(batch, seq, len(self._vocab), dtype=torch.bool)
        allowed[:, :, first_cell:] = joined & query[:, :, None]
        return NextSteps(
            query=query,
            valid_keys=keys & joined_k,
            invalid_keys=keys & beside_k & ~joined_k,
            allowed=allowed,
        )

    def solved_maze(self, tokens: Int[torch.Tensor, " pos"]) -> SolvedMaze:
        """The maze and path one full sequence describes (padding dropped, path checked)."""
        words = [w for w in self.decode(tokens).split() if w != PADDING]
        return from_tokens(words, self.grid)

    def _layout(self, words: list[str]) -> list[int]:
        """Left-pad the prompt so <PATH_START> ends it at a fixed place; right-pad the answer."""
        split = words.index(PATH_START) + 1
        prompt, answer = words[:split], words[split:]
        padded = [PADDING] * (self._prompt_len - len(prompt)) + prompt + answer
        padded += [PADDING] * (self.seq_len - len(padded))
        return self._to_ids(padded)

    def _to_ids(self, words: list[str]) -> list[int]:
        ids = []
        for pos, word in enumerate(words):
            if word not in self._ids:
                raise TokenError(
                    f"token {pos}: {quote(word)} is not in the {self.grid}×{self.grid} maze vocabulary"
                )
            ids.append(self._ids[word])
        return ids
