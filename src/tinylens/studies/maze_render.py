"""Drawing mazes: walls, the true path and, optionally, a predicted one, as a matplotlib figure.

Usage:
    fig = draw_maze(solved, predicted=model_path)
    fig.savefig("maze.png")
"""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from tinylens.tasks.maze import Coord, Maze, SolvedMaze


def draw_walls(ax: Axes, maze: Maze) -> None:
    """Closed walls as black segments; cell (r, c) is the unit square centred on (c, r)."""
    n = maze.n
    segments = []
    for r in range(n):
        for c in range(n):
            if r + 1 < n and not maze.down[r, c]:
                segments.append(((c - 0.5, c + 0.5), (r + 0.5, r + 0.5)))
            if c + 1 < n and not maze.right[r, c]:
                segments.append(((c + 0.5, c + 0.5), (r - 0.5, r + 0.5)))
    for xs, ys in segments:
        ax.plot(xs, ys, color="black", lw=2, solid_capstyle="round")
    lo, hi = -0.5, n - 0.5
    ax.plot([lo, hi, hi, lo, lo], [lo, lo, hi, hi, lo], color="black", lw=3)  # the outer border


def draw_path(ax: Axes, path: tuple[Coord, ...], color: str, label: str, offset: float = 0.0) -> None:
    if not path:
        return
    rows = [r + offset for r, _ in path]
    cols = [c + offset for _, c in path]
    ax.plot(cols, rows, color=color, lw=3, alpha=0.8, label=label)


def draw_maze(solved: SolvedMaze, predicted: tuple[Coord, ...] | None = None, title: str = "") -> Figure:
    """The maze, its origin (green), target (red), true path (blue) and a predicted path (orange)."""
    n = solved.maze.n
    fig = Figure(figsize=(0.6 * n + 1.5, 0.6 * n + 1.5), layout="constrained")
    ax = fig.add_subplot()
    draw_walls(ax, solved.maze)
    draw_path(ax, solved.path, "tab:blue", "true path")
    if predicted is not None:
        draw_path(ax, predicted, "tab:orange", "predicted", offset=0.12)
    ax.plot(solved.origin[1], solved.origin[0], "o", color="tab:green", ms=10, label="origin")
    ax.plot(solved.target[1], solved.target[0], "s", color="tab:red", ms=10, label="target")
    ax.set(xlim=(-0.7, n - 0.3), ylim=(n - 0.3, -0.7), aspect="equal", xticks=[], yticks=[])
    if title:
        ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=8, frameon=False)
    return fig
