"""Live probing: one question through a run's model at a checkpoint, everything a page draws.

A model is loaded once per (run, checkpoint) and kept (a small LRU cache); a probe holds that
model's lock while it runs, because TransformerLens adds and removes hooks on the shared modules
during ``run_with_cache`` (two probes at once on one model would see each other's hooks).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch

from tinylens import runs
from tinylens.analysis import mean_attention
from tinylens.errors import TinylensError, quote
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


@dataclass(frozen=True)
class ProbeRequest:
    """One probe as asked: a question typed (``text``) or drawn (``seed``), at a checkpoint
    (``step``; None: the run's latest)."""

    text: str | None = None
    """A question in the task's prompt format, e.g. ``12345+67890=``."""
    seed: int | None = None
    """Draws a question from the task's generator (a maze: its seed picks the maze)."""
    step: int | None = None
    """The checkpoint's step; whether the run has it is checked against the run."""

    @classmethod
    def from_json(cls, data: Any) -> ProbeRequest:
        """Check a request body (parsed JSON): its fields and each field's type, so that every
        mistake gets its own message (``"step": "300"`` is a string, not a missing checkpoint).
        A null field counts as not given.

        Raises:
            BadRequestError: not an object, an unknown field, a field of the wrong type, a seed out
                of range, or neither or both of text and seed.
        """
        if not isinstance(data, dict):
            raise BadRequestError(f"the request body must be a JSON object, got {_described(data)}")
        unknown = sorted(set(data) - set(FIELDS))
        if unknown:
            raise BadRequestError(f"unknown fields {unknown}; give text or seed, and optionally step")
        text, seed, step = (data.get(name) for name in FIELDS)
        if text is not None and not isinstance(text, str):
            raise BadRequestError(f"text must be a string in the task's format, got {_described(text)}")
        if seed is not None and (not _is_integer(seed) or not 0 <= seed <= MAX_SEED):
            raise BadRequestError(f"seed must be an integer in [0, {MAX_SEED}], got {_described(seed)}")
        if step is not None and not _is_integer(step):
            raise BadRequestError(
                f"step must be an integer, one of the run's checkpoint steps; got {_described(step)}"
            )
        if (text is None) == (seed is None):
            raise BadRequestError("give a question as text, or a seed to draw one (not both)")
        return cls(text=text, seed=seed, step=step)


FIELDS = tuple(f.name for f in fields(ProbeRequest))
"""A probe body's fields: text, seed, step."""


def _is_integer(value: Any) -> bool:
    """A JSON integer: not a bool (true is 1 to Python), not a float (even 60.0)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _described(value: Any) -> str:
    """A JSON value as a message names it: its JSON type and the value, cut short, and where it
    means an integer written as something else, how to send it: ``the string '300' (send 300,
    without quotes)``."""
    if isinstance(value, str):
        meant = _integer_in(value)
        hint = f" (send {meant}, without quotes)" if meant is not None else ""
        return f"the string {quote(value)}{hint}"
    if isinstance(value, float):
        hint = f" (send {int(value)})" if value.is_integer() and abs(value) < 1e18 else ""
        return f"the number {value!r}{hint}"
    return _named(value)


def _named(value: Any) -> str:
    """null, a boolean, an integer, a list or an object as a message names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        digits = str(value)
        return f"the number {digits if len(digits) <= 40 else f'{digits[:20]}… ({len(digits)} digits)'}"
    if isinstance(value, list):
        return f"a list of {len(value)} item{'' if len(value) == 1 else 's'}"
    return "an object"


def _integer_in(text: str) -> int | None:
    """The integer a short string of decimal digits (an optional minus sign) spells, else None."""
    digits = text.strip()
    if len(digits) > 20 or not digits.removeprefix("-").isdecimal():
        return None
    return int(digits)


def probe(entry: _Entry, request: ProbeRequest) -> dict[str, Any]:
    """Ask the model one question, typed (``request.text``, the task's prompt format) or drawn
    (``request.seed``); the request's step is the caller's business (it picked ``entry``).

    Returns the tokens, the model's greedy answer and the true one, the top tokens and the true
    token's probability at each answer position (teacher-forced on the model's own answer), and
    every head's attention pattern ``[layer][head][query][key]`` over the sequence the model wrote;
    for a maze, its walls and both paths.

    Raises:
        BadRequestError: text the task cannot read (the task's own message says why).
    """
    trained = entry.model
    task = trained.task
    if request.seed is not None:
        prompt = task.sample(1, torch.Generator().manual_seed(request.seed))[0, : task.prompt_len]
    else:
        try:
            prompt = task.parse_prompt(request.text)
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
