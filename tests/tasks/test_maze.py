"""Mazes: generators make what they claim, solving, ASCII and AOTP round trips, malformed tokens."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinylens.errors import ConfigError, TokenError, UnknownNameError
from tinylens.tasks.maze import (
    GENERATORS,
    Maze,
    connection_labels,
    generate,
    maze_from_labels,
    random_solved,
    solve,
    wall_list,
)
from tinylens.tasks.maze_tokens import SPECIAL_TOKENS, as_tokens, check_path, coord_tokens, from_tokens

TREES = ("dfs", "wilson", "kruskal")


def reachable(maze: Maze, start: tuple[int, int]) -> set[tuple[int, int]]:
    seen, stack = {start}, [start]
    while stack:
        for nxt in maze.neighbours(stack.pop()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


@pytest.mark.parametrize("name", list(GENERATORS))
@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_generators_connect_every_cell(name: str, n: int) -> None:
    maze = generate(name, n, np.random.default_rng(n))
    assert len(reachable(maze, (0, 0))) == n * n
    edges = len(maze.connections())
    if name in TREES:
        assert edges == n * n - 1, "a spanning tree has n²-1 open walls"
    else:
        assert edges >= n * n - 1
    assert not maze.down[-1].any() and not maze.right[:, -1].any()


def test_percolation_makes_loops() -> None:
    maze = generate("percolation", 8, np.random.default_rng(0))
    assert len(maze.connections()) > 8 * 8 - 1


@pytest.mark.parametrize("name", list(GENERATORS))
def test_generators_are_seeded(name: str) -> None:
    a = generate(name, 6, np.random.default_rng(7))
    b = generate(name, 6, np.random.default_rng(7))
    c = generate(name, 6, np.random.default_rng(8))
    assert a == b and a != c


def test_solve_finds_the_shortest_path() -> None:
    # an open 3×3 room: the shortest path from corner to corner has 5 cells
    room = Maze(np.array([[1, 1, 1], [1, 1, 1], [0, 0, 0]], bool), np.array([[1, 1, 0]] * 3, bool))
    solved = solve(room, (0, 0), (2, 2))
    assert len(solved.path) == 5
    check_path(room, solved.path, (0, 0), (2, 2))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(list(GENERATORS)), st.integers(2, 9), st.integers(0, 2**32 - 1))
def test_token_and_ascii_round_trips(name: str, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    solved = random_solved(generate(name, n, rng), rng)
    tokens = as_tokens(solved, rng)
    assert from_tokens(tokens, n) == solved
    assert Maze.from_ascii(solved.as_ascii()) == solved.maze
    assert len(set(solved.path)) == len(solved.path), "a shortest path never revisits a cell"


def test_the_documented_3x3_example_parses() -> None:
    text = (
        "<ADJLIST_START> (2,1) <--> (1,1) ; (2,2) <--> (1,2) ; (0,0) <--> (0,1) ; (2,1) <--> (2,0) ; "
        "(1,0) <--> (0,0) ; (2,2) <--> (2,1) ; (0,2) <--> (1,2) ; (1,1) <--> (1,0) ; <ADJLIST_END> "
        "<ORIGIN_START> (2,1) <ORIGIN_END> <TARGET_START> (0,2) <TARGET_END> "
        "<PATH_START> (2,1) (2,2) (1,2) (0,2) <PATH_END>"
    )
    solved = from_tokens(text.split(), 3)
    assert solved.path == ((2, 1), (2, 2), (1, 2), (0, 2))
    assert len(solved.maze.connections()) == 8


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda t: t.__setitem__(1, "(9,9)"), "token 1: coordinate (9,9) is off the 4×4 grid"),
        (lambda t: t.__setitem__(2, "<->"), "token 2: expected '<-->'"),
        (lambda t: t.__setitem__(4, "banana"), "token 4: expected ';'"),
        (lambda t: t.__setitem__(1, "banana"), "unknown token 'banana'"),
        (lambda t: t.pop(), "ends early"),
        (lambda t: t.append("(0,0)"), "after <PATH_END>"),
    ],
)
def test_malformed_tokens_name_token_and_position(edit, fragment: str) -> None:
    rng = np.random.default_rng(0)
    tokens = as_tokens(random_solved(generate("dfs", 4, rng), rng), rng)
    edit(tokens)
    with pytest.raises(TokenError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        from_tokens(tokens, 4)


def test_path_through_a_wall_is_named() -> None:
    rng = np.random.default_rng(1)
    solved = random_solved(generate("dfs", 4, rng), rng)
    tokens = as_tokens(solved, rng)
    wall = next(
        (a, b)
        for a in [(r, c) for r in range(4) for c in range(4)]
        for b in [(a[0], a[1] + 1)]
        if b[1] < 4 and not solved.maze.connected(a, b)
    )
    bad = tokens[: tokens.index("<ORIGIN_START>")]
    bad += ["<ORIGIN_START>", f"({wall[0][0]},{wall[0][1]})", "<ORIGIN_END>"]
    bad += ["<TARGET_START>", f"({wall[1][0]},{wall[1][1]})", "<TARGET_END>", "<PATH_START>"]
    bad += [f"({wall[0][0]},{wall[0][1]})", f"({wall[1][0]},{wall[1][1]})", "<PATH_END>"]
    with pytest.raises(TokenError, match="through a wall"):
        from_tokens(bad, 4)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1), st.data())
def test_random_corruptions_raise_only_token_errors(seed: int, data: st.DataObject) -> None:
    rng = np.random.default_rng(seed)
    n = 3
    tokens = as_tokens(random_solved(generate("dfs", n, rng), rng), rng)
    vocab = [*SPECIAL_TOKENS, *coord_tokens(n + 1), "junk", "(1,)", ""]
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["replace", "delete", "insert", "swap"]))
        i = data.draw(st.integers(0, len(tokens) - 1))
        if kind == "replace":
            tokens[i] = data.draw(st.sampled_from(vocab))
        elif kind == "delete" and len(tokens) > 1:
            tokens.pop(i)
        elif kind == "insert":
            tokens.insert(i, data.draw(st.sampled_from(vocab)))
        else:
            j = data.draw(st.integers(0, len(tokens) - 1))
            tokens[i], tokens[j] = tokens[j], tokens[i]
    with contextlib.suppress(TokenError):  # anything else escaping is a bug
        from_tokens(tokens, n)


def test_bad_generator_and_grid_size() -> None:
    with pytest.raises(UnknownNameError, match="dfs, wilson, kruskal, percolation"):
        generate("prim", 5, np.random.default_rng())
    with pytest.raises(ConfigError, match="2–20"):
        generate("dfs", 21, np.random.default_rng())


@pytest.mark.parametrize("name", list(GENERATORS))
def test_connection_labels_round_trip_and_follow_wall_list(name: str) -> None:
    maze = generate(name, 6, np.random.default_rng(5))
    labels = connection_labels(maze)
    walls = wall_list(6)
    assert labels.shape == (len(walls),) == (2 * 6 * 5,)
    assert [maze.connected(a, b) for a, b in walls] == labels.tolist()
    assert maze_from_labels(6, labels) == maze
    with pytest.raises(ConfigError, match="60 walls"):
        maze_from_labels(6, labels[:-1])
