"""Live probing: one question through a run's model at a checkpoint, everything a page draws.

A model is loaded once per (run, checkpoint) and kept (a small LRU cache); a probe holds that
model's lock while it runs, because TransformerLens adds and removes hooks on the shared modules
during ``run_with_cache`` (two probes at once on one model would see each other's hooks).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tinylens import runs
from tinylens.analysis import mean_attention
from tinylens.errors import TinylensError
from tinylens.evaluation import greedy_answer
from tinylens.runs import TrainedModel
from tinylens.store import Workspace
from tinylens.tasks.maze_task import MazeTask
from tinylens.tasks.maze_tokens import parse_coord

TOP_K = 5
"""Most likely tokens shown per answer position."""
CACHED_MODELS = 8
"""Models kept loaded (run × checkpoint)."""
MAX_SEED = 2**63 - 1


class BadRequestError(TinylensError):
    """A probe request that cannot be answered as asked (HTTP 400)."""


@dataclass
class _Entry:
    model: TrainedModel
    lock: threading.Lock


class ModelCache:
    """Models by (run, step), loaded once each; at most :data:`CACHED_MODELS` kept."""

    def __init__(self, open_workspace: Callable[[], Workspace], size: int = CACHED_MODELS) -> None:
        self._open = open_workspace
        self._size = size
        self._entries: OrderedDict[tuple[str, int | None], _Entry] = OrderedDict()
        self._lock = threading.Lock()  # guards the dict and loading: a model is loaded once
        self.loads = 0
        """Models loaded so far (tests check that a checkpoint loads once)."""

    def get(self, run: str, step: int | None) -> _Entry:
        with self._lock:
            key = (run, step)
            entry = self._entries.get(key)
            if entry is None:
                entry = _Entry(runs.load_trained(self._open(), run, step), threading.Lock())
                entry.model.model.eval()
                self.loads += 1
                self._entries[key] = entry
                while len(self._entries) > self._size:
                    self._entries.popitem(last=False)
            self._entries.move_to_end(key)
            return entry


def probe(entry: _Entry, *, text: Any = None, seed: Any = None) -> dict[str, Any]:
    """Ask the model one question, typed (``text``, the task's prompt format) or drawn (``seed``).

    Returns the tokens, the model's greedy answer and the true one, the top tokens and the true
    token's probability at each answer position (teacher-forced on the model's own answer), and
    every head's attention pattern ``[layer][head][query][key]`` over the sequence the model wrote;
    for a maze, its walls and both paths.

    Raises:
        BadRequestError: neither or both of ``text`` and ``seed``, a seed out of range, or text
            the task cannot read (the task's own message says why).
    """
    trained = entry.model
    task = trained.task
    if (text is None) == (seed is None):
        raise BadRequestError("give a question as text, or a seed to draw one (not both)")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise BadRequestError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
        prompt = task.sample(1, torch.Generator().manual_seed(seed))[0, : task.prompt_len]
    else:
        if not isinstance(text, str):
            raise BadRequestError(f"text must be a string, got {type(text).__name__}")
        try:
            prompt = task.parse_prompt(text)
        except TinylensError as err:
            raise BadRequestError(str(err)) from None
    with entry.lock, torch.no_grad():
        answer = greedy_answer(trained.model, task, prompt[None])[0]
        sequence = torch.cat([prompt, answer])
        logits = trained.model(sequence[None])[0]  # [pos, d_vocab]
        patterns = mean_attention(trained.model, sequence[None])  # [layer, head, q, k]
    truth = task.solve(prompt[None])[0, task.prompt_len :]
    probs = logits.float().softmax(-1)
    positions = []
    for slot, (name, pos) in enumerate(
        zip(task.answer_names, task.answer_positions.tolist(), strict=True)
    ):
        row = probs[pos - 1]
        top = row.topk(min(TOP_K, row.numel()))
        positions.append(
            {
                "name": name,
                "predicted": task.vocab[int(answer[slot])],
                "true": task.vocab[int(truth[slot])],
                "p_true": round(float(row[truth[slot]]), 5),
                "top": [
                    {"token": task.vocab[int(i)], "p": round(float(p), 5)}
                    for p, i in zip(top.values, top.indices, strict=True)
                ],
            }
        )
    result: dict[str, Any] = {
        "run": trained.run.name,
        "step": trained.step,
        "task": task.name,
        "tokens": [task.vocab[int(t)] for t in sequence],
        "prompt_len": task.prompt_len,
        "question": task.decode(prompt),
        "answer": task.decode(torch.cat([prompt, answer])),
        "truth": task.decode(torch.cat([prompt, truth])),
        "correct": bool(torch.equal(answer, truth)),
        "positions": positions,
        "attention": [
            [[[round(v, 4) for v in q] for q in head] for head in layer] for layer in patterns.tolist()
        ],
    }
    if isinstance(task, MazeTask):
        result["maze"] = _maze(task, prompt, truth, answer)
    return result


def _maze(task: MazeTask, prompt: torch.Tensor, truth: torch.Tensor, answer: torch.Tensor) -> dict:
    """The maze to draw: its size, open connections, origin, target, true and predicted paths."""
    solved = task.solved_maze(torch.cat([prompt, truth]))
    predicted = [parse_coord(task.vocab[int(t)]) for t in answer]
    return {
        "n": solved.maze.n,
        "connections": [[list(a), list(b)] for a, b in solved.maze.connections()],
        "origin": list(solved.origin),
        "target": list(solved.target),
        "path": [list(c) for c in solved.path],
        "predicted": [list(c) for c in predicted if c is not None],
    }
