"""Interoperability with maze-dataset (the paper's own library): same tokens, decoded both ways."""

from __future__ import annotations

import numpy as np
import pytest

from tinylens.tasks.maze import Maze, SolvedMaze, generate, random_solved
from tinylens.tasks.maze_tokens import ADJLIST_END, as_tokens, from_tokens

md = pytest.importorskip("maze_dataset", reason="maze-dataset is a dev dependency")
from maze_dataset import LatticeMaze, LatticeMazeGenerators  # noqa: E402
from maze_dataset import SolvedMaze as MdSolvedMaze  # noqa: E402
from maze_dataset.tokenization import MazeTokenizer, TokenizationMode  # noqa: E402


def tokenizer(n: int) -> MazeTokenizer:
    return MazeTokenizer(tokenization_mode=TokenizationMode.AOTP_UT_uniform, max_grid_size=n)


def to_md(solved: SolvedMaze) -> MdSolvedMaze:
    connections = np.stack([solved.maze.down, solved.maze.right])  # [2, row, col]
    return MdSolvedMaze.from_lattice_maze(
        LatticeMaze(connection_list=connections), np.array(solved.path)
    )


def from_md(solved: MdSolvedMaze) -> SolvedMaze:
    connections = np.asarray(solved.connection_list, dtype=bool)
    path = tuple((int(r), int(c)) for r, c in solved.solution)
    return SolvedMaze(Maze(connections[0].copy(), connections[1].copy()), path)


def split(tokens: list[str]) -> tuple[set[frozenset[str]], list[str]]:
    """(the adjacency list as a set of unordered pairs, everything after it)."""
    end = tokens.index(ADJLIST_END)
    body = tokens[1:end]
    pairs = {frozenset((body[i], body[i + 2])) for i in range(0, len(body), 4)}
    return pairs, tokens[end:]


@pytest.mark.parametrize("n", [3, 5, 8])
@pytest.mark.parametrize("generator", ["dfs", "wilson", "percolation"])
def test_same_mazes_same_tokens(n: int, generator: str) -> None:
    rng = np.random.default_rng(n)
    for _ in range(10):
        ours = random_solved(generate(generator, n, rng), rng)
        theirs = to_md(ours).as_tokens(tokenizer(n))
        assert split(as_tokens(ours, rng)) == split(list(theirs))


@pytest.mark.parametrize("n", [3, 5, 8])
def test_each_library_decodes_the_others_tokens(n: int) -> None:
    rng = np.random.default_rng(100 + n)
    for _ in range(10):
        # their maze and tokens → our decoder
        lattice = LatticeMazeGenerators.gen_dfs(np.array([n, n]))
        theirs = MdSolvedMaze.from_lattice_maze(lattice, lattice.generate_random_path())
        assert from_tokens(list(theirs.as_tokens(tokenizer(n))), n) == from_md(theirs)
        # our maze and tokens → their decoder
        ours = random_solved(generate("dfs", n, rng), rng)
        decoded = MdSolvedMaze.from_tokens(as_tokens(ours, rng), tokenizer(n))
        assert from_md(decoded) == ours
