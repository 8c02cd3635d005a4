"""Drawing mazes for the maze study's report (studies/, not tasks/: tasks know data, not drawing)."""

from __future__ import annotations

import numpy as np

from tinylens.studies.maze_render import draw_maze
from tinylens.tasks.maze import generate, random_solved


def test_draw_maze_renders_walls_paths_and_markers(tmp_path) -> None:
    rng = np.random.default_rng(3)
    solved = random_solved(generate("dfs", 5, rng), rng)
    fig = draw_maze(solved, predicted=solved.path[:-1], title="5×5")
    ax = fig.axes[0]
    walls = [line for line in ax.lines if line.get_color() == "black"]
    # a 5×5 spanning tree closes 2·5·4 − 24 = 16 inner walls, plus the outer border
    assert len(walls) == 16 + 1
    labels = {line.get_label() for line in ax.lines}
    assert {"true path", "predicted", "origin", "target"} <= labels
    fig.savefig(tmp_path / "maze.png")
    assert (tmp_path / "maze.png").stat().st_size > 1000
