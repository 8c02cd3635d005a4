"""The trainer: deterministic, resumable, with per-position and per-group metrics.

Each step draws a fresh batch from the task's seeded generator, takes the cross-entropy of the answer
tokens only, and makes one AdamW update (warm-up, then constant or cosine; global-norm clipping).

Bookkeeping, all through the workspace (:mod:`tinylens.store`):

* every ``log_every`` steps: training loss overall and per answer position (averaged over the
  interval) and the learning rate;
* every ``eval_every`` steps, and at the first and last: loss and accuracy on a fixed held-out set,
  overall, per answer position, per task token group and per question group;
* model checkpoints at log-spaced steps (plus init and last), for analyses across training;
* the full training state (weights, optimizer, data RNG, partial log sums) every ``save_every``
  steps, at the end and on Ctrl-C. A run killed at any moment resumes from that state and ends with
  weights bit-identical to an uninterrupted run: nothing random happens outside the saved state.
  Ctrl-C saves only that state, so an interrupted and resumed run has exactly the checkpoints of an
  uninterrupted one. A run that lost files resuming cannot write again (its state, or checkpoints
  before it) is refused with a :class:`CheckpointError`, never rebuilt in part;
  ``fit(restart=True)`` starts it over from step 0.

One trainer works on a run at a time: a second one (another ``tinylens train`` of the same config)
waits for the first, then finds the run finished. A loss or weight that becomes NaN or infinite stops
training with a :class:`DivergenceError` before anything non-finite is saved, so the run keeps its
last good state.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from tinylens.config import RunConfig, TrainConfig, derive_seed
from tinylens.errors import CheckpointError, ConfigError, TinylensError
from tinylens.evaluation import EvalResult, answer_logits, evaluate, masked_mean
from tinylens.model import build_model, model_metadata, model_tensors
from tinylens.store import Run, load_tensors
from tinylens.tasks import make_task
from tinylens.tasks.base import Tokens
from tinylens.train_data import TrainBatches, default_data_workers
from tinylens.train_forward import (
    check_direct_forward,
    direct_forward,
    shared_prefix_forward,
    split_shared_prefix,
)

STATE_KIND = "tinylens.train_state"


class DivergenceError(TinylensError):
    """Training diverged: the loss (or a weight) became NaN or infinite."""


@dataclass(frozen=True)
class TrainResult:
    """How a call to :meth:`Trainer.fit` ended."""

    run: str
    step: int
    """Steps completed."""
    status: str
    """``"done"`` or ``"interrupted"``."""
    final_eval: EvalResult | None
    """Held-out scores at the last step (None if interrupted)."""
    elapsed_s: float
    """Training wall-clock seconds, summed over resumed sessions."""
    trained_steps: int = 0
    """Optimizer steps this call took (0 when the run had already finished)."""


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate for update number ``step`` (1-based)."""
    if step <= cfg.warmup_steps:
        return cfg.lr * step / max(1, cfg.warmup_steps)
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def training_device(cfg: TrainConfig) -> torch.device:
    """The device ``cfg.device`` names, if this torch can use it.

    Raises:
        ConfigError: ``cuda`` was asked for and torch sees no CUDA device.
    """
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device = 'cuda', but torch {torch.__version__} sees no CUDA device; "
            "set train.device = 'cpu', or train on a machine with a GPU and a CUDA build of torch"
        )
    return torch.device(cfg.device)


def checkpoint_steps(cfg: TrainConfig) -> set[int]:
    """Init, last, and ``n_checkpoints`` log-spaced steps in between."""
    spaced = np.unique(np.round(np.geomspace(1, cfg.steps, max(cfg.n_checkpoints, 1))))
    return {0, cfg.steps} | {int(s) for s in spaced if cfg.n_checkpoints}


def lost_progress(
    run: Run, *, steps: int, save_every: int, summary: str = "train_summary"
) -> str | None:
    """What shows that ``run`` (trained to ``steps``, its state saved every ``save_every``, its
    end recorded as ``results/SUMMARY.json``) once saved a training state past step 0, or None.

    Asked when the state file is missing. A trainer killed before its first save leaves
    checkpoints, and perhaps metrics, up to that save only, which a start from step 0 writes again
    identically; a step recorded in ``status.json``, a training summary, or a checkpoint or metric
    past the first save can only come after a saved state (which is gone, then).
    """
    first_save = min(save_every, steps)
    recorded = run.state().step
    if recorded > 0:
        return f"its status.json records step {recorded}"
    if run.has_result(summary):
        return f"it finished training (results/{summary}.json)"
    late = [s for s in run.checkpoint_steps() if s > first_save]
    if late:
        return f"it has checkpoints up to step {max(late)}"
    logged = max((step for step, _, _ in run.metric_rows()), default=0)
    if logged > first_save:
        return f"its metrics.jsonl runs to step {logged}"
    return None


def start_over_hint(name: str) -> str:
    """How to get a whole run back when resuming cannot (the end of a :class:`CheckpointError`)."""
    return (
        f"start it over with `tinylens resume {name} --restart` (deletes its checkpoints, metrics "
        "and results), or train the config again under another --name"
    )


def refuse_missing_checkpoints(run: Run, written: set[int], step: int, who: str, hint: str) -> None:
    """Refuse to resume ``run`` from its state at ``step`` if it lacks a checkpoint that training
    wrote before it (``written``: every checkpoint step of the run's schedule): resuming would not
    write it again.

    Args:
        who: the run as messages name it (``run 'x'``, ``decoder run 'x'``).
        hint: how to get a whole run back (:func:`start_over_hint`).

    Raises:
        CheckpointError: saying which steps are missing and ``hint``.
    """
    saved = set(run.checkpoint_steps())
    missing = sorted(s for s in written if s <= step and s not in saved)
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (", …" if len(missing) > 8 else "")
        raise CheckpointError(
            f"{who} lacks the checkpoints of steps {shown}, which were written before its saved "
            f"state at step {step} (deleted?); resuming cannot write them again: {hint}"
        )


def prepare_fresh_start(
    run: Run, *, steps: int, save_every: int, who: str, hint: str, summary: str = "train_summary"
) -> None:
    """With no saved state, make ``run`` ready to train from step 0, or refuse if it got further
    (:func:`lost_progress`; arguments as there and in :func:`refuse_missing_checkpoints`).

    A trainer killed while writing its first state may have logged metrics up to it: they are
    dropped (steps start at 0), or they would be logged twice; its checkpoints are rewritten alike.

    Raises:
        CheckpointError: the run lost its state; nothing is changed.
    """
    lost = lost_progress(run, steps=steps, save_every=save_every, summary=summary)
    if lost is not None:
        raise CheckpointError(
            f"{who} has lost its training state: {run.state_path()} is missing, but {lost}; "
            f"resuming would rebuild a partial run: {hint}"
        )
    run.workspace.delete_metrics_after(run.name, -1)


@runtime_checkable
class Stoppable(Protocol):
    """A training loop that checks ``_stop_requested`` between steps."""

    _stop_requested: bool


@contextmanager
def interrupt_requests_stop(loop: Stoppable) -> Iterator[None]:
    """While active, the first Ctrl-C sets ``loop._stop_requested`` (the loop finishes its step,
    saves and stops); a second one raises KeyboardInterrupt at once. Off the main thread, where
    signals cannot be handled, it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if loop._stop_requested:
            raise KeyboardInterrupt
        loop._stop_requested = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Trainer:
    """Trains (or resumes) one run. ``Trainer(run, cfg).fit()``."""

    def __init__(
        self, run: Run, cfg: RunConfig, *, progress: bool = True, data_workers: int | None = None
    ) -> None:
        """``data_workers``: processes that build batches ahead (None: :func:`default_data_workers`
        for the run's device); they never change the batches."""
        self.run = run
        self.cfg = cfg
        self.show_progress = progress
        self.device = training_device(cfg.train)
        self.task = make_task(cfg.task, cfg.task_options)
        # drawn on the CPU, so a GPU run starts from the same weights as a CPU run
        self.model = build_model(cfg.model, seed=derive_seed(cfg.seed, "init"))
        if self.device.type != "cpu":
            self.model.to(self.device, print_details=False)
        if cfg.train.forward == "direct":
            check_direct_forward(self.model)
        self.optimizer = self._make_optimizer()
        self.data_rng = torch.Generator().manual_seed(derive_seed(cfg.seed, "train-data"))
        if data_workers is None:
            data_workers = default_data_workers(self.device)
        self.data_workers = data_workers
        self._batches: TrainBatches | None = None  # made on the first step, after any resume
        eval_rng = torch.Generator().manual_seed(derive_seed(cfg.train.eval_seed, "eval-data"))
        self.eval_tokens = self.task.sample(cfg.train.eval_size, eval_rng)
        self.step = 0
        self.elapsed_s = 0.0
        n_answer = len(self.task.answer_positions)
        self._log_sum = torch.zeros(n_answer, dtype=torch.float64)  # summed per-position loss
        self._log_count = 0
        self._pending: list[tuple[int, str, float]] = []
        self._stop_requested = False
        # Recorded in every checkpoint, so loading it can tell whether config.json was edited since.
        self._run_config_hash = run.config_hash

    # -- public --

    def fit(self, *, restart: bool = False) -> TrainResult:
        """Train to ``cfg.train.steps`` (resuming the run's saved state), holding the run's lock.

        Args:
            restart: first delete everything the run saved (checkpoints, metrics, results) and
                train it from step 0.

        Raises:
            CheckpointError: the saved state is damaged, or the run lost files that resuming
                cannot write again (its state, or checkpoints before it; see
                :func:`lost_progress`): the run is left as it was, never rebuilt in part.
            DivergenceError: the loss or the weights became non-finite; the run is marked
                ``failed`` and keeps its last saved (finite) state.
        """
        with self.run.lock(on_wait=self._say_waiting):
            self.run.workspace.remove_stale_files()
            self.run.remove_stale_files()
            if restart:
                self.run.discard_training()
            return self._fit()

    def _say_waiting(self) -> None:
        print(
            f"run {self.run.name} is being trained by another process; waiting for it to finish",
            file=sys.stderr,
            flush=True,
        )

    def _fit(self) -> TrainResult:
        tc = self.cfg.train
        self._restore()
        first_step = self.step
        ckpt_steps = checkpoint_steps(tc)
        self.run.set_status("running", self.step)
        started = time.perf_counter()
        elapsed_before = self.elapsed_s
        final_eval: EvalResult | None = None
        try:
            with self._sigint_sets_flag(), self._progress() as (bar, task_id):
                if self.step == 0:
                    final_eval = self._evaluate()
                    self._save_checkpoint()
                while self.step < tc.steps:
                    if self._stop_requested:
                        break
                    self.train_step()
                    if self.step % tc.log_every == 0 or self.step == tc.steps:
                        self._flush_train_log(bar, task_id)
                    if self.step % tc.eval_every == 0 or self.step == tc.steps:
                        final_eval = self._evaluate()
                        bar.update(task_id, acc=f"{final_eval.exact:.2%}")
                    if self.step in ckpt_steps:
                        self._save_checkpoint()
                    self.elapsed_s = elapsed_before + time.perf_counter() - started
                    if self.step % tc.save_every == 0 or self.step == tc.steps:
                        self._save_state()
                    bar.update(task_id, completed=self.step)
        except KeyboardInterrupt:  # a second Ctrl-C: the last saved state is still good
            self.run.set_status("interrupted")
            raise
        except BaseException:
            self.run.set_status("failed")
            raise
        finally:
            self.close()
        self.elapsed_s = elapsed_before + time.perf_counter() - started
        if self.step < tc.steps:  # stopped by Ctrl-C: keep everything needed to resume
            self._save_state()  # and no step checkpoint: an uninterrupted run would lack it
            self.run.set_status("interrupted", self.step)
            return TrainResult(
                self.run.name, self.step, "interrupted", None, self.elapsed_s, self.step - first_step
            )
        if final_eval is None:  # resumed a finished run
            final_eval = evaluate(self.model.eval(), self.task, self.eval_tokens)
        self.run.write_result(
            "train_summary",
            {"step": self.step, "elapsed_s": self.elapsed_s, "eval": final_eval.to_dict()},
        )
        self.run.set_status("done", self.step)
        return TrainResult(
            self.run.name, self.step, "done", final_eval, self.elapsed_s, self.step - first_step
        )

    # -- one step --

    def train_step(self) -> None:
        """One optimizer update on a fresh batch (public so benchmarks time exactly this)."""
        tc = self.cfg.train
        self.step += 1
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, tc)
        self.model.train()
        if self._batches is None:
            self._batches = TrainBatches(
                self.task, tc.batch_size, tc.queries_per_prompt, self.data_rng,
                workers=self.data_workers,
            )  # fmt: skip
        batch = self._batches.next().to(self.device)
        bf16 = tc.precision == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = self._answer_logits(batch)  # [batch, answer, d_vocab]
        target = batch[:, self.task.answer_positions]  # [batch, answer]
        token_loss = F.cross_entropy(pred.float().transpose(1, 2), target, reduction="none")
        valid = self.task.answer_valid(batch)  # [batch, answer]; all True for fixed-length answers
        loss = masked_mean(token_loss, valid)
        if not bool(torch.isfinite(loss)):  # before the update: the weights are still good
            value = float(loss.detach())
            raise self._diverged(f"loss became {'NaN' if math.isnan(value) else value}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.optimizer.step()
        if bool(valid.all()):
            self._log_sum += token_loss.detach().mean(0).double().cpu()
        else:  # per-slot mean over the examples that use the slot
            used = valid.sum(0).clamp(min=1)
            self._log_sum += ((token_loss.detach() * valid).sum(0) / used).double().cpu()
        self._log_count += 1

    def _answer_logits(self, batch: Tokens) -> Float[torch.Tensor, "batch answer d_vocab"]:
        """The logits predicting each answer slot, by the configured forward pass."""
        tc = self.cfg.train
        if tc.queries_per_prompt > 1:
            prefix_len = self.task.shared_prefix_len
            assert prefix_len is not None  # checked by RunConfig
            shared = split_shared_prefix(
                batch, tc.queries_per_prompt, prefix_len, self.task.answer_positions,
                self.task.answer_valid(batch),
            )  # fmt: skip
            return shared.answer_logits(shared_prefix_forward(self.model, shared))
        if tc.forward == "direct":
            return answer_logits(direct_forward(self.model, batch), self.task)
        return answer_logits(self.model(batch), self.task)

    def _flush_train_log(self, bar: Progress, task_id: int) -> None:
        per_position = self._log_sum / max(1, self._log_count)
        rows = [(self.step, "train/loss", float(per_position.mean()))]
        rows.append((self.step, "train/lr", lr_at(self.step, self.cfg.train)))
        rows += [
            (self.step, f"train/loss/{name}", float(v))
            for name, v in zip(self.task.answer_names, per_position, strict=True)
        ]
        self._pending += rows
        self._log_sum.zero_()
        self._log_count = 0
        bar.update(task_id, loss=f"{rows[0][2]:.4f}")

    def _evaluate(self) -> EvalResult:
        result = evaluate(self.model.eval(), self.task, self.eval_tokens)
        self._pending += [(self.step, k, v) for k, v in result.as_metrics("eval").items()]
        return result

    # -- persistence --

    def _diverged(self, what: str) -> DivergenceError:
        saved = self.run.state_file()
        kept = "its last saved state is kept" if saved else "nothing was saved"
        return DivergenceError(
            f"{what} at step {self.step}; lower the learning rate (train.lr = {self.cfg.train.lr:g}) "
            f"or keep gradient clipping on, and train a new run ({kept})"
        )

    def _finite_weights(self) -> dict[str, torch.Tensor]:
        """The model's weights; a non-finite one stops training before it is saved."""
        tensors = model_tensors(self.model)
        for name, value in tensors.items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise self._diverged(f"weight {name} became NaN or infinite")
        return tensors

    def _save_checkpoint(self) -> None:
        meta = model_metadata(
            self.cfg.model, {"step": str(self.step), "run_config_hash": self._run_config_hash}
        )
        self.run.save_checkpoint(self.step, self._finite_weights(), meta)

    def _save_state(self) -> None:
        """Flush metrics, then write weights + optimizer + RNG + log sums as one atomic file."""
        weights = self._finite_weights()
        self.run.log_metrics(self._pending)
        self._pending = []
        opt = self.optimizer.state_dict()
        tensors = {f"model.{k}": v for k, v in weights.items()}
        for idx, state in opt["state"].items():
            tensors.update({f"optim.{idx}.{k}": v.cpu() for k, v in state.items()})
        tensors["rng.data"] = self.data_rng.get_state()
        tensors["log.sum"] = self._log_sum.clone()
        meta = model_metadata(self.cfg.model)
        meta.update(
            kind=STATE_KIND,
            step=str(self.step),
            elapsed_s=repr(self.elapsed_s),
            log_count=str(self._log_count),
            param_groups=json.dumps(opt["param_groups"]),
            config_identity=self.cfg.identity,
        )
        self.run.save_state(tensors, meta)
        self.run.set_status("running", self.step)

    def _restore(self) -> None:
        path = self.run.state_file()
        if path is None:
            self._start_from_scratch()
            return
        tensors, meta = load_tensors(path, kind=STATE_KIND)
        if meta.get("config_identity") != self.cfg.identity:
            raise CheckpointError(
                f"{path} was saved by a different config; start a new run (another --name)"
            )
        model_state = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        optim_state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                optim_state.setdefault(int(idx), {})[name] = value
        try:
            self.model.load_state_dict(model_state, strict=True)
            self.optimizer.load_state_dict(
                {"state": optim_state, "param_groups": json.loads(meta["param_groups"])}
            )
            self.data_rng.set_state(tensors["rng.data"])
            self.step = int(meta["step"])
            self.elapsed_s = float(meta["elapsed_s"])
            self._log_sum = tensors["log.sum"].clone()
            self._log_count = int(meta["log_count"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{path} does not hold a usable training state: {err}") from None
        refuse_missing_checkpoints(
            self.run, checkpoint_steps(self.cfg.train), self.step, f"run {self.run.name!r}",
            start_over_hint(self.run.name),
        )  # fmt: skip
        # metrics logged after the saved state will be recomputed, identically
        self.run.workspace.delete_metrics_after(self.run.name, self.step)

    def _start_from_scratch(self) -> None:
        """No saved state: train from step 0, unless the run got further (then it was lost)."""
        tc = self.cfg.train
        prepare_fresh_start(
            self.run, steps=tc.steps, save_every=tc.save_every, who=f"run {self.run.name!r}",
            hint=start_over_hint(self.run.name),
        )  # fmt: skip

    # -- plumbing --

    def close(self) -> None:
        """Stop the data worker processes, if any (:meth:`fit` does so itself; a caller that
        drives :meth:`train_step` directly calls this when done)."""
        if self._batches is not None:
            self._batches.close()
            self._batches = None

    def _make_optimizer(self) -> torch.optim.AdamW:
        tc = self.cfg.train
        params = list(self.model.named_parameters())
        # Decay matrices only: decaying norm gains and biases toward 0 has no regularising purpose.
        groups = [
            {"params": [p for _, p in params if p.ndim >= 2], "weight_decay": tc.weight_decay},
            {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=tc.lr, betas=(tc.beta1, tc.beta2))

    def _sigint_sets_flag(self) -> contextlib.AbstractContextManager[None]:
        return interrupt_requests_stop(self)

    def _progress(self) -> contextlib.AbstractContextManager[tuple[Progress, int]]:
        return progress_bar(
            self.run.name, self.cfg.train.steps, self.step, {"loss": "loss", "acc": "acc"},
            show=self.show_progress,
        )  # fmt: skip


@contextmanager
def progress_bar(
    name: str, total: int, done: int, fields: dict[str, str], *, show: bool = True
) -> Iterator[tuple[Progress, int]]:
    """A training progress bar on stderr: steps done of ``total``, elapsed and remaining time, and
    one ``label value`` pair per entry of ``fields`` (field name → label), each ``-`` until set."""
    shown = "  ".join(f"{label} {{task.fields[{key}]}}" for key, label in fields.items())
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn(shown),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not show,
    )
    with bar:
        yield bar, bar.add_task(name, total=total, completed=done, **dict.fromkeys(fields, "-"))
