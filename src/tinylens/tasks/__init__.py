"""Tasks: the data side of tinylens. Each knows its vocabulary, generator and labels, never a model.

A run's config stores a task by name plus its options; :func:`make_task` rebuilds it.
"""

from __future__ import annotations

from typing import Any

from tinylens.errors import ConfigError, unknown_name
from tinylens.tasks.addition import CASES, SUBTASKS, AdditionLabels, AdditionTask
from tinylens.tasks.base import Task, Tokens
from tinylens.tasks.counting import CountingLabels, CountingTask
from tinylens.tasks.maze_task import MazeTask
from tinylens.tasks.seqcont import SeqcontTask

TASKS: dict[str, type[Task]] = {}
"""Registry: task name → task class."""


def register_task(cls: type[Task]) -> type[Task]:
    """Add a task class to :data:`TASKS` under ``cls.name``; a duplicate name is an error."""
    if cls.name in TASKS:
        raise ValueError(f"task name {cls.name!r} is already registered to {TASKS[cls.name]}")
    TASKS[cls.name] = cls
    return cls


def make_task(name: str, options: dict[str, Any] | None = None) -> Task:
    """Build the task registered as ``name`` with keyword ``options``."""
    if name not in TASKS:
        raise unknown_name("task", name, sorted(TASKS))
    try:
        return TASKS[name](**(options or {}))
    except TypeError as err:  # an unknown option name
        raise ConfigError(f"bad options for task {name!r}: {err}") from None


register_task(AdditionTask)
register_task(CountingTask)
register_task(MazeTask)
register_task(SeqcontTask)

__all__ = [
    # registry
    "TASKS",
    "make_task",
    "register_task",
    # the contract
    "Task",
    "Tokens",
    # addition
    "CASES",
    "SUBTASKS",
    "AdditionLabels",
    "AdditionTask",
    # character counting (InversionView)
    "CountingLabels",
    "CountingTask",
    # maze
    "MazeTask",
    # sequence continuation
    "SeqcontTask",
]
