"""Lattice mazes: generators, the shortest-path solver and ASCII round trips.

Background:
    A maze on an n×n grid of cells is the set of open walls between 4-neighbouring cells. The
    generators of Ivanitskiy, Spies et al. (maze-dataset) make spanning trees (one path between any
    two cells): randomised depth-first search (the default), Wilson's algorithm (uniform over
    spanning trees), randomised Kruskal; percolation opens extra walls with probability p on top of a
    tree, so a path always exists and loops appear. The solution is the shortest origin → target path.

Usage:
    rng = np.random.default_rng(0)
    maze = generate("dfs", 5, rng)
    solved = solve(maze, (0, 0), (4, 4))
    print(solved.as_ascii())

References:
    Ivanitskiy, Spies et al. 2023, arXiv:2309.10498; github.com/understanding-search/maze-dataset.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool

from tinylens.errors import ConfigError, TokenError, unknown_name

Coord = tuple[int, int]
"""A cell as (row, column), (0, 0) top left."""
MIN_GRID, MAX_GRID = 2, 20


@dataclass(frozen=True, eq=False)
class Maze:
    """Open walls of an n×n lattice: ``down[r, c]`` (r,c)–(r+1,c), ``right[r, c]`` (r,c)–(r,c+1)."""

    down: Bool[np.ndarray, "row col"]
    right: Bool[np.ndarray, "row col"]

    @property
    def n(self) -> int:
        return int(self.down.shape[0])

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Maze)
            and np.array_equal(self.down, other.down)
            and np.array_equal(self.right, other.right)
        )

    def __hash__(self) -> int:
        return hash((self.down.tobytes(), self.right.tobytes()))

    def connected(self, a: Coord, b: Coord) -> bool:
        """Whether a and b are neighbours with an open wall between them."""
        (r1, c1), (r2, c2) = sorted((a, b))
        if r1 == r2 and c2 == c1 + 1:
            return bool(self.right[r1, c1])
        if c1 == c2 and r2 == r1 + 1:
            return bool(self.down[r1, c1])
        return False

    def neighbours(self, cell: Coord) -> list[Coord]:
        r, c = cell
        out = []
        if r > 0 and self.down[r - 1, c]:
            out.append((r - 1, c))
        if r + 1 < self.n and self.down[r, c]:
            out.append((r + 1, c))
        if c > 0 and self.right[r, c - 1]:
            out.append((r, c - 1))
        if c + 1 < self.n and self.right[r, c]:
            out.append((r, c + 1))
        return out

    def connections(self) -> list[tuple[Coord, Coord]]:
        """Every open wall as a (cell, cell) pair, row-major order."""
        pairs = [
            ((int(r), int(c)), (int(r) + 1, int(c))) for r, c in zip(*np.nonzero(self.down), strict=True)
        ]
        pairs += [
            ((int(r), int(c)), (int(r), int(c) + 1))
            for r, c in zip(*np.nonzero(self.right), strict=True)
        ]
        return pairs

    @classmethod
    def from_connections(cls, n: int, pairs: list[tuple[Coord, Coord]]) -> Maze:
        """Build from neighbour pairs; a non-adjacent or off-grid pair raises :class:`TokenError`."""
        down = np.zeros((n, n), dtype=bool)
        right = np.zeros((n, n), dtype=bool)
        for a, b in pairs:
            for cell in (a, b):
                if not (0 <= cell[0] < n and 0 <= cell[1] < n):
                    raise TokenError(f"cell {cell} is off the {n}×{n} grid")
            (r1, c1), (r2, c2) = sorted((a, b))
            if r1 == r2 and c2 == c1 + 1:
                right[r1, c1] = True
            elif c1 == c2 and r2 == r1 + 1:
                down[r1, c1] = True
            else:
                raise TokenError(f"cells {a} and {b} are not neighbours, so cannot be connected")
        return cls(down, right)

    def as_ascii(self, path: tuple[Coord, ...] = ()) -> str:
        """Walls as '#', open cells as ' ', path cells as '*' (origin 'S', target 'E')."""
        size = 2 * self.n + 1
        grid = [["#"] * size for _ in range(size)]
        for r in range(self.n):
            for c in range(self.n):
                grid[2 * r + 1][2 * c + 1] = " "
                if self.down[r, c]:
                    grid[2 * r + 2][2 * c + 1] = " "
                if self.right[r, c]:
                    grid[2 * r + 1][2 * c + 2] = " "
        for i, (r, c) in enumerate(path):
            grid[2 * r + 1][2 * c + 1] = "S" if i == 0 else "E" if i == len(path) - 1 else "*"
        for a, b in itertools.pairwise(path):
            grid[a[0] + b[0] + 1][a[1] + b[1] + 1] = "*"
        return "\n".join("".join(row) for row in grid)

    @classmethod
    def from_ascii(cls, text: str) -> Maze:
        """Inverse of :meth:`as_ascii` (path marks read as open cells)."""
        rows = [line for line in text.strip("\n").splitlines()]
        n = (len(rows) - 1) // 2
        if n < 1 or len(rows) != 2 * n + 1 or any(len(r) != 2 * n + 1 for r in rows):
            raise TokenError(
                f"an ASCII maze of n×n cells has 2n+1 lines of 2n+1 characters; got {len(rows)} lines"
            )
        open_ = [[ch != "#" for ch in row] for row in rows]
        down = np.array([[open_[2 * r + 2][2 * c + 1] for c in range(n)] for r in range(n)])
        right = np.array([[open_[2 * r + 1][2 * c + 2] for c in range(n)] for r in range(n)])
        down[-1, :] = False
        right[:, -1] = False
        return cls(down, right)


@dataclass(frozen=True, eq=False)
class SolvedMaze:
    """A maze with the path from ``path[0]`` (origin) to ``path[-1]`` (target)."""

    maze: Maze
    path: tuple[Coord, ...]

    @property
    def origin(self) -> Coord:
        return self.path[0]

    @property
    def target(self) -> Coord:
        return self.path[-1]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SolvedMaze) and self.maze == other.maze and self.path == other.path

    def __hash__(self) -> int:
        return hash((self.maze, self.path))

    def as_ascii(self) -> str:
        return self.maze.as_ascii(self.path)


# -- probe labels ---------------------------------------------------------------------------------


def wall_list(n: int) -> list[tuple[Coord, Coord]]:
    """Every wall between neighbouring cells of an n×n grid, in a fixed order: vertical steps
    (r,c)–(r+1,c) row-major, then horizontal steps (r,c)–(r,c+1) row-major; 2·n·(n−1) in all."""
    walls = [((r, c), (r + 1, c)) for r in range(n - 1) for c in range(n)]
    return walls + [((r, c), (r, c + 1)) for r in range(n) for c in range(n - 1)]


def connection_labels(maze: Maze) -> Bool[np.ndarray, " wall"]:
    """For each wall of :func:`wall_list`, whether it is open: the targets of a maze probe."""
    return np.concatenate([maze.down[:-1].ravel(), maze.right[:, :-1].ravel()])


def maze_from_labels(n: int, labels: Bool[np.ndarray, " wall"]) -> Maze:
    """Inverse of :func:`connection_labels` (e.g. to draw the maze a probe decodes)."""
    labels = np.asarray(labels, dtype=bool)
    if labels.shape != (2 * n * (n - 1),):
        raise ConfigError(f"an {n}×{n} maze has {2 * n * (n - 1)} walls, got labels {labels.shape}")
    split = n * (n - 1)
    down = np.zeros((n, n), dtype=bool)
    right = np.zeros((n, n), dtype=bool)
    down[:-1] = labels[:split].reshape(n - 1, n)
    right[:, :-1] = labels[split:].reshape(n, n - 1)
    return Maze(down, right)


# -- generators -----------------------------------------------------------------------------------


def _check_grid(n: int) -> None:
    if not isinstance(n, int) or not MIN_GRID <= n <= MAX_GRID:
        raise ConfigError(f"grid size must be an integer {MIN_GRID}–{MAX_GRID}, got {n!r}")


def _fast_rng(rng: np.random.Generator) -> random.Random:
    """Python's RNG, seeded from ``rng``: ~10× cheaper per single draw than numpy's, which the
    generators make one cell at a time. Seeding from ``rng`` keeps every maze reproducible."""
    return random.Random(int(rng.integers(2**63)))


@functools.cache
def _grid_neighbours(n: int) -> tuple[tuple[int, ...], ...]:
    """For each flat cell index r·n + c, the flat indices of its 4-neighbours on the grid."""
    out = []
    for r in range(n):
        for c in range(n):
            cells = ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1))
            out.append(tuple(a * n + b for a, b in cells if 0 <= a < n and 0 <= b < n))
    return tuple(out)


def gen_dfs(n: int, rng: np.random.Generator) -> Maze:
    """Randomised depth-first search from a random cell: long corridors, few branches."""
    fast = _fast_rng(rng)
    neighbours = _grid_neighbours(n)
    visited = [False] * (n * n)
    down = [False] * (n * n)  # flat, row-major, as Maze.down
    right = [False] * (n * n)
    start = fast.randrange(n * n)
    visited[start] = True
    stack = [start]
    while stack:
        cell = stack[-1]
        options = [x for x in neighbours[cell] if not visited[x]]
        if not options:
            stack.pop()
            continue
        nxt = options[int(fast.random() * len(options))]  # cheaper than randrange, as uniform
        step = nxt - cell  # ±1: a step along the row; ±n: a step down or up
        if step in (1, -1):
            right[min(cell, nxt)] = True
        else:
            down[min(cell, nxt)] = True
        visited[nxt] = True
        stack.append(nxt)
    return Maze(np.array(down).reshape(n, n), np.array(right).reshape(n, n))


def gen_wilson(n: int, rng: np.random.Generator) -> Maze:
    """Wilson's algorithm: loop-erased random walks; uniform over all spanning trees."""
    down = np.zeros((n, n), dtype=bool)
    right = np.zeros((n, n), dtype=bool)
    in_tree = np.zeros((n, n), dtype=bool)
    in_tree[int(rng.integers(n)), int(rng.integers(n))] = True
    cells = [(r, c) for r in range(n) for c in range(n)]
    for cell in (cells[i] for i in rng.permutation(len(cells))):
        if in_tree[cell]:
            continue
        step: dict[Coord, Coord] = {}  # last exit taken from each cell: erases loops implicitly
        cur = cell
        while not in_tree[cur]:
            r, c = cur
            moves = [(r + dr, c + dc) for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))]
            moves = [(a, b) for a, b in moves if 0 <= a < n and 0 <= b < n]
            step[cur] = moves[int(rng.integers(len(moves)))]
            cur = step[cur]
        cur = cell
        while not in_tree[cur]:
            _open(down, right, cur, step[cur])
            in_tree[cur] = True
            cur = step[cur]
    return Maze(down, right)


def gen_kruskal(n: int, rng: np.random.Generator) -> Maze:
    """Randomised Kruskal: walls in random order, opened when they join two components."""
    down = np.zeros((n, n), dtype=bool)
    right = np.zeros((n, n), dtype=bool)
    parent = list(range(n * n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    walls = [((r, c), (r + 1, c)) for r in range(n - 1) for c in range(n)]
    walls += [((r, c), (r, c + 1)) for r in range(n) for c in range(n - 1)]
    for idx in rng.permutation(len(walls)):
        a, b = walls[idx]
        ra, rb = find(a[0] * n + a[1]), find(b[0] * n + b[1])
        if ra != rb:
            parent[ra] = rb
            _open(down, right, a, b)
    return Maze(down, right)


def gen_percolation(n: int, rng: np.random.Generator, p: float = 0.4) -> Maze:
    """Percolation over a spanning tree: each wall opens with probability ``p`` on top of a random
    depth-first tree (maze-dataset's ``gen_dfs_percolation``). Every cell stays reachable, so any
    origin → target path exists; the extra walls make loops and several routes."""
    down = (rng.random((n, n)) < p) & (np.arange(n)[:, None] < n - 1)
    right = (rng.random((n, n)) < p) & (np.arange(n)[None, :] < n - 1)
    tree = gen_dfs(n, rng)
    return Maze(down | tree.down, right | tree.right)


GENERATORS: dict[str, Callable[[int, np.random.Generator], Maze]] = {
    "dfs": gen_dfs,
    "wilson": gen_wilson,
    "kruskal": gen_kruskal,
    "percolation": gen_percolation,
}
"""Registry: generator name → function."""


def generate(name: str, n: int, rng: np.random.Generator) -> Maze:
    """A maze from the generator registered as ``name`` on an n×n grid."""
    if name not in GENERATORS:
        raise unknown_name("maze generator", name, GENERATORS)
    _check_grid(n)
    return GENERATORS[name](n, rng)


def _open(down: np.ndarray, right: np.ndarray, a: Coord, b: Coord) -> None:
    (r1, c1), (r2, _) = sorted((a, b))
    if r1 == r2:
        right[r1, c1] = True
    else:
        down[r1, c1] = True


# -- solving --------------------------------------------------------------------------------------


def solve(maze: Maze, origin: Coord, target: Coord) -> SolvedMaze:
    """The shortest path from origin to target (breadth-first search over flat cell indices)."""
    n = maze.n
    adjacency: list[list[int]] = [[] for _ in range(n * n)]
    for i, is_open in enumerate(maze.down.ravel().tolist()):
        if is_open:
            adjacency[i].append(i + n)
            adjacency[i + n].append(i)
    for i, is_open in enumerate(maze.right.ravel().tolist()):
        if is_open:
            adjacency[i].append(i + 1)
            adjacency[i + 1].append(i)
    start, goal = origin[0] * n + origin[1], target[0] * n + target[1]
    previous: dict[int, int] = {start: start}
    queue = deque([start])
    while queue and goal not in previous:
        cell = queue.popleft()
        for nxt in adjacency[cell]:
            if nxt not in previous:
                previous[nxt] = cell
                queue.append(nxt)
    if goal not in previous:
        raise TokenError(f"no path from {origin} to {target} in this maze")
    path = [goal]
    while path[-1] != start:
        path.append(previous[path[-1]])
    return SolvedMaze(maze, tuple(divmod(i, n) for i in reversed(path)))


def random_solved(maze: Maze, rng: np.random.Generator) -> SolvedMaze:
    """Two distinct cells drawn uniformly as origin and target, and the path between them."""
    n = maze.n
    first, second = _fast_rng(rng).sample(range(n * n), 2)
    return solve(maze, divmod(first, n), divmod(second, n))
