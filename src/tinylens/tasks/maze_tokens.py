"""Mazes as text in maze-dataset's legacy "AOTP" format (one token per coordinate), both ways.

Background:
    ``<ADJLIST_START> (0,0) <--> (0,1) ; … <ADJLIST_END> <ORIGIN_START> (r,c) <ORIGIN_END>
    <TARGET_START> (r,c) <TARGET_END> <PATH_START> (r,c) … <PATH_END>``. The adjacency list is
    shuffled and each connection's two cells are swapped with probability ½, as maze-dataset does;
    ``;`` follows every connection, the last one included. Parsing checks everything a model could
    get wrong and names the offending token and its position.

Usage:
    tokens = as_tokens(solved, rng)         # list[str]
    again = from_tokens(tokens, n=5)        # SolvedMaze; equal to solved
"""

from __future__ import annotations

import functools
import itertools
import random
import re

import numpy as np

from tinylens.errors import TokenError
from tinylens.tasks.maze import Coord, Maze, SolvedMaze

ADJLIST_START, ADJLIST_END = "<ADJLIST_START>", "<ADJLIST_END>"
ORIGIN_START, ORIGIN_END = "<ORIGIN_START>", "<ORIGIN_END>"
TARGET_START, TARGET_END = "<TARGET_START>", "<TARGET_END>"
PATH_START, PATH_END = "<PATH_START>", "<PATH_END>"
CONNECTOR, SEPARATOR, PADDING = "<-->", ";", "<PADDING>"
SPECIAL_TOKENS = (
    ADJLIST_START, ADJLIST_END, TARGET_START, TARGET_END, ORIGIN_START, ORIGIN_END,
    PATH_START, PATH_END, CONNECTOR, SEPARATOR, PADDING,
)  # fmt: skip
"""maze-dataset's special tokens, in its order."""
_COORD = re.compile(r"^\((\d+),(\d+)\)$")


def parse_coord(token: str) -> Coord | None:
    """``"(r,c)"`` → (r, c); None if the token is not a coordinate."""
    match = _COORD.match(token)
    return None if match is None else (int(match.group(1)), int(match.group(2)))


def coord_token(cell: Coord) -> str:
    return f"({cell[0]},{cell[1]})"


@functools.cache
def _coord_tokens(n: int) -> tuple[str, ...]:
    return tuple(coord_token((r, c)) for r in range(n) for c in range(n))


def coord_tokens(n: int) -> list[str]:
    """Every coordinate token of an n×n grid, row-major."""
    return list(_coord_tokens(n))


def as_tokens(solved: SolvedMaze, rng: np.random.Generator) -> list[str]:
    """The solved maze as AOTP tokens; ``rng`` shuffles the adjacency list and each pair's order."""
    n = solved.maze.n
    names = _coord_tokens(n)
    pairs = [(i, i + n) for i in np.flatnonzero(solved.maze.down).tolist()]
    pairs += [(i, i + 1) for i in np.flatnonzero(solved.maze.right).tolist()]
    fast = random.Random(int(rng.integers(2**63)))  # cheap per-draw RNG, seeded from rng
    fast.shuffle(pairs)
    tokens = [ADJLIST_START]
    for first, second in pairs:
        a, b = (second, first) if fast.random() < 0.5 else (first, second)
        tokens += [names[a], CONNECTOR, names[b], SEPARATOR]
    return [*tokens, ADJLIST_END, *query_tokens(solved)]


def query_tokens(solved: SolvedMaze) -> list[str]:
    """The tokens after ``<ADJLIST_END>``: origin, target, ``<PATH_START>``, path, ``<PATH_END>``."""
    tokens = [ORIGIN_START, coord_token(solved.origin), ORIGIN_END]
    tokens += [TARGET_START, coord_token(solved.target), TARGET_END, PATH_START]
    return [*tokens, *(coord_token(cell) for cell in solved.path), PATH_END]


def from_tokens(tokens: list[str], n: int) -> SolvedMaze:
    """Parse AOTP tokens of an n×n maze; :class:`TokenError` names any malformed token."""
    reader = _Reader(tokens, n)
    maze, origin, target = _read_prompt(reader)
    path_start = reader.pos
    path: list[Coord] = []
    while reader.peek() != PATH_END:
        path.append(reader.coord())
    reader.expect(PATH_END)
    reader.finish()
    check_path(maze, tuple(path), origin, target, offset=path_start)
    return SolvedMaze(maze, tuple(path))


def prompt_from_tokens(tokens: list[str], n: int) -> tuple[Maze, Coord, Coord]:
    """Parse a prompt (everything up to and including ``<PATH_START>``): (maze, origin, target)."""
    reader = _Reader(tokens, n)
    found = _read_prompt(reader)
    reader.finish()
    return found


def _read_prompt(reader: _Reader) -> tuple[Maze, Coord, Coord]:
    reader.expect(ADJLIST_START)
    pairs: list[tuple[Coord, Coord]] = []
    while reader.peek() != ADJLIST_END:
        a_pos, a = reader.pos, reader.coord()
        reader.expect(CONNECTOR)
        b = reader.coord()
        reader.expect(SEPARATOR)
        if abs(a[0] - b[0]) + abs(a[1] - b[1]) != 1:
            raise reader.error(f"connection {a} <--> {b} joins cells that are not neighbours", a_pos)
        pairs.append((a, b))
    reader.expect(ADJLIST_END)
    reader.expect(ORIGIN_START)
    origin = reader.coord()
    reader.expect(ORIGIN_END)
    reader.expect(TARGET_START)
    target = reader.coord()
    reader.expect(TARGET_END)
    reader.expect(PATH_START)
    return Maze.from_connections(reader.n, pairs), origin, target


def check_path(
    maze: Maze, path: tuple[Coord, ...], origin: Coord, target: Coord, offset: int = 0
) -> None:
    """Raise :class:`TokenError` unless ``path`` walks from origin to target through open walls."""
    if not path:
        raise TokenError(f"the path is empty (token {offset}); it must run from {origin} to {target}")
    if path[0] != origin:
        raise TokenError(f"the path starts at {path[0]} (token {offset}), not at the origin {origin}")
    if path[-1] != target:
        where = offset + len(path) - 1
        raise TokenError(f"the path ends at {path[-1]} (token {where}), not at the target {target}")
    for i, (a, b) in enumerate(itertools.pairwise(path)):
        if not maze.connected(a, b):
            raise TokenError(
                f"the path steps from {a} to {b} (token {offset + i + 1}) through a wall "
                "or between cells that are not neighbours"
            )


class _Reader:
    """A cursor over tokens that raises pointing errors."""

    def __init__(self, tokens: list[str], n: int) -> None:
        self.tokens, self.n, self.pos = tokens, n, 0

    def error(self, message: str, pos: int | None = None) -> TokenError:
        at = self.pos if pos is None else pos
        return TokenError(f"token {at}: {message}")

    def peek(self) -> str:
        if self.pos >= len(self.tokens):
            raise self.error("the sequence ends early")
        return self.tokens[self.pos]

    def take(self) -> str:
        token = self.peek()
        self.pos += 1
        return token

    def expect(self, wanted: str) -> None:
        token = self.take()
        if token != wanted:
            raise self.error(f"expected {wanted!r}, found {token!r}", self.pos - 1)

    def coord(self) -> Coord:
        token = self.take()
        cell = parse_coord(token)
        if cell is None:
            kind = "special token" if token in SPECIAL_TOKENS else "unknown token"
            raise self.error(f"expected a coordinate like (0,1), found {kind} {token!r}", self.pos - 1)
        if not (cell[0] < self.n and cell[1] < self.n):
            raise self.error(f"coordinate {token} is off the {self.n}×{self.n} grid", self.pos - 1)
        return cell

    def finish(self) -> None:
        if self.pos != len(self.tokens):
            after = self.tokens[self.pos - 1] if self.pos else "the start"
            raise self.error(f"unexpected {self.tokens[self.pos]!r} after {after}")
