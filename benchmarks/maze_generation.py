"""Mazes generated + solved + tokenized per second: tinylens beside maze-dataset, in one process.

Same algorithm (randomised DFS), same grid sizes, same work per maze: generate, pick two distinct
cells, find the path, emit the AOTP tokens. Prints both rates and the ratio.

    python benchmarks/maze_generation.py [--seconds 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
from maze_dataset import LatticeMazeGenerators, SolvedMaze
from maze_dataset.tokenization import MazeTokenizer, TokenizationMode

from tinylens.tasks.maze import gen_dfs, random_solved
from tinylens.tasks.maze_tokens import as_tokens


def rate(make_one: Callable[[], object], seconds: float) -> float:
    """Mazes per second over about ``seconds`` of wall-clock time (after a short warm-up)."""
    for _ in range(20):
        make_one()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            make_one()
        count += 50
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    print(f"{'grid':>6} {'tinylens /s':>12} {'maze-dataset /s':>16} {'ratio':>7}")
    for n in (5, 10):
        rng = np.random.default_rng(0)
        tokenizer = MazeTokenizer(tokenization_mode=TokenizationMode.AOTP_UT_uniform, max_grid_size=n)

        def ours(n: int = n, rng: np.random.Generator = rng) -> list[str]:
            return as_tokens(random_solved(gen_dfs(n, rng), rng), rng)

        def theirs(n: int = n, tokenizer: MazeTokenizer = tokenizer) -> list[str]:
            lattice = LatticeMazeGenerators.gen_dfs(np.array([n, n]))
            solved = SolvedMaze.from_lattice_maze(lattice, lattice.generate_random_path())
            return solved.as_tokens(tokenizer)

        r_ours, r_theirs = rate(ours, args.seconds), rate(theirs, args.seconds)
        print(f"{n:>3}×{n:<2} {r_ours:>12,.0f} {r_theirs:>16,.0f} {r_ours / r_theirs:>6.1f}×")


if __name__ == "__main__":
    main()
