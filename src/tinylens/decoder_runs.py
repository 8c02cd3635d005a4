"""InversionView decoders as runs: train one for any trained run, resume it, open it again.

A decoder run is an ordinary run folder of kind ``decoder`` in the workspace. Its ``config.json``
names the probed run, the checkpoint step and config hash it reads, the sites and positions it is
trained on, the decoder's shape and the training settings. Training pairs are made on the fly
from the probed model (:func:`tinylens.analysis.decoder_batch`): a fresh batch of task inputs, a
site drawn by weight, an allowed position, and a small share given the site's "no information"
activation (:func:`tinylens.analysis.null_activations`) so the decoder also learns the prior.

Every ``eval_every`` steps the decoder inverts a fixed set of evaluation queries (held out where the
task has a split) at every site (the paper's four temperature/noise settings) and logs, per site,
the share of its samples inside the ε-preimage; with ``reweight`` on, the sites that land inside
least often are then drawn more often (the paper's reweighting). Like the model trainer, it saves
its whole state (weights, optimizer, data generator, site weights) every ``save_every`` steps and on
Ctrl-C, and a killed run resumes to bit-identical weights. As there, a run that lost files resuming
cannot write again (its state, or checkpoints before it) is refused with a :class:`CheckpointError`,
never rebuilt in part; ``train_decoder(..., restart=True)`` starts it over from step 0.

Usage:
    probed = runs.load_trained(workspace, "counting-cpu-s0-48d85b6e")
    cfg = decoder_run_config(probed, sites=["L0.head0", "L1.resid_post"], positions=(-3, -2))
    result = train_decoder(workspace, probed, cfg)
    trained = load_decoder(workspace, probed)           # the probed run's decoder, checked
"""

from __future__ import annotations

import json
import math
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from rich.progress import Progress
from torch.nn import functional as F

from tinylens.analysis.inversion import (
    EPSILON,
    SETTINGS,
    ProbeSite,
    all_sites,
    check_epsilon,
    decoder_batch,
    invert,
    null_activations,
    parse_site,
    site_activations,
)
from tinylens.config import MAX_SEED, derive_seed
from tinylens.decoder import DecoderConfig, InversionDecoder
from tinylens.errors import CheckpointError, ConfigError, TinylensError
from tinylens.runs import TrainedModel
from tinylens.store import Run, Workspace, config_hash, load_tensors, read_metadata
from tinylens.train import (
    DivergenceError,
    interrupt_requests_stop,
    prepare_fresh_start,
    progress_bar,
    refuse_missing_checkpoints,
)

DECODER_KIND = "tinylens.decoder"
STATE_KIND = "tinylens.decoder_state"
RUN_KIND = "decoder"
"""The run index's ``kind`` for decoder runs."""
TRAIN_HINT = "`tinylens invert train RUN`"
"""How to train a decoder, in messages that do not know the probed run."""


@dataclass(frozen=True)
class DecoderTrainConfig:
    """How a decoder is trained (defaults: a CPU budget of minutes, not the paper's GPU days)."""

    steps: int = 3000
    batch_size: int = 256
    lr: float = 2e-3
    warmup_steps: int = 200
    """Linear warm-up, then cosine decay to 0."""
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    null_frac: float = 0.01
    """Share of pairs given the site's no-information activation (the paper: 1%)."""
    eval_every: int = 1000
    eval_queries: int = 16
    """Held-out queries inverted per site at each evaluation."""
    eval_per_setting: int = 16
    """Samples per (temperature, noise) setting and query at each evaluation."""
    epsilon: float = EPSILON
    reweight: bool = True
    """After each evaluation, draw each site with weight 0.5 + (1 − its share inside ε)."""
    precision: str = "bf16"
    """``bf16`` (autocast on the decoder's forward; ≈ 2.7× faster on this CPU) or ``fp32``."""
    log_every: int = 50
    save_every: int = 250
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_queries", "eval_per_setting"):
            _positive_int(name, getattr(self, name))
        for name in ("log_every", "save_every"):
            _positive_int(name, getattr(self, name))
        for name, top in (("warmup_steps", 10**8), ("seed", MAX_SEED)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
                raise ConfigError(
                    f"decoder training {name} must be an integer in 0–{top}, got {value!r}"
                )
        for name, top in (
            ("steps", 10**8),
            ("batch_size", 8192),
            ("eval_queries", 10_000),
            ("eval_per_setting", 4096),
        ):
            if getattr(self, name) > top:
                raise ConfigError(
                    f"decoder training {name} must be at most {top}, got {getattr(self, name)}"
                )
        for name in ("lr", "grad_clip"):
            value = getattr(self, name)
            if not _number(value) or not 0 < value < math.inf:
                raise ConfigError(f"decoder training {name} must be a number > 0, got {value!r}")
        if not _number(self.weight_decay) or not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"weight_decay must be a number ≥ 0, got {self.weight_decay!r}")
        if not _number(self.null_frac) or not 0 <= self.null_frac <= 1:
            raise ConfigError(f"null_frac must be in [0, 1], got {self.null_frac!r}")
        check_epsilon(self.epsilon)
        if not isinstance(self.reweight, bool):
            raise ConfigError(f"reweight must be true or false, got {self.reweight!r}")
        if self.precision not in ("bf16", "fp32"):
            raise ConfigError(f"precision must be 'bf16' or 'fp32', got {self.precision!r}")


@dataclass(frozen=True)
class DecoderRunConfig:
    """Everything a decoder run depends on; its hash names the run."""

    probed_run: str
    probed_step: int
    probed_config_hash: str
    """The probed run's config hash when the decoder was trained: a retrained probed model is
    another model, and its decoder no longer fits."""
    sites: tuple[str, ...]
    positions: tuple[int, ...] | None
    """Positions activations are read at (negative counts from the end); None: every position."""
    decoder: DecoderConfig
    train: DecoderTrainConfig = field(default_factory=DecoderTrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": RUN_KIND,
            "probed_run": self.probed_run,
            "probed_step": self.probed_step,
            "probed_config_hash": self.probed_config_hash,
            "sites": list(self.sites),
            "positions": None if self.positions is None else list(self.positions),
            "decoder": self.decoder.to_dict(),
            "train": asdict(self.train),
        }

    @classmethod
    def from_dict(cls, data: Any) -> DecoderRunConfig:
        """Parse a stored config, or a ConfigError saying which field is wrong."""
        try:
            if not isinstance(data, dict) or data.get("kind") != RUN_KIND:
                raise ConfigError("it is not a decoder run's config")
            train_fields = {f.name for f in fields(DecoderTrainConfig)}
            unknown = set(data["train"]) - train_fields
            if unknown:
                raise ConfigError(f"unknown training fields {sorted(unknown)}")
            positions = data["positions"]
            return cls(
                probed_run=str(data["probed_run"]),
                probed_step=int(data["probed_step"]),
                probed_config_hash=str(data["probed_config_hash"]),
                sites=tuple(str(s) for s in data["sites"]),
                positions=None if positions is None else tuple(int(p) for p in positions),
                decoder=DecoderConfig(**data["decoder"]),
                train=DecoderTrainConfig(**data["train"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError, TinylensError) as err:
            raise ConfigError(f"not a usable decoder config ({err})") from None

    def default_name(self) -> str:
        return f"{self.probed_run}-decoder-{config_hash(self.to_dict())[:8]}"


def decoder_run_config(
    probed: TrainedModel,
    *,
    sites: list[str] | tuple[str, ...] | None = None,
    positions: tuple[int, ...] | None = None,
    train: DecoderTrainConfig | None = None,
    d_model: int = 128,
    n_layers: int = 2,
    n_heads: int = 4,
    n_cond_blocks: int = 6,
) -> DecoderRunConfig:
    """The config of a decoder for ``probed`` at the given sites (default: every site).

    Raises:
        ConfigError: an unknown site, a position outside the sequence, or a bad setting.
    """
    model = probed.model
    names = tuple(s.name for s in all_sites(model)) if sites is None else tuple(sites)
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"a decoder needs one or more distinct sites, got {list(names)}")
    for name in names:
        parse_site(name, model)
    seq_len = probed.task.seq_len
    if positions is not None:
        if not positions:
            raise ConfigError("positions must name at least one position (or be left out: all)")
        for p in positions:
            if isinstance(p, bool) or not isinstance(p, int) or not -seq_len <= p < seq_len:
                raise ConfigError(
                    f"position {p!r} is outside the task's {seq_len} positions "
                    f"(use {-seq_len}…{seq_len - 1})"
                )
        positions = tuple(sorted({p % seq_len for p in positions}))
    shape = DecoderConfig(
        d_vocab=probed.task.d_vocab,
        n_ctx=seq_len,
        d_act=int(model.cfg.d_model),
        n_sites=len(names),
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_cond_blocks=n_cond_blocks,
    )
    return DecoderRunConfig(
        probed_run=probed.run.name,
        probed_step=probed.step,
        probed_config_hash=probed.run.config_hash,
        sites=names,
        positions=positions,
        decoder=shape,
        train=train or DecoderTrainConfig(),
    )


def allowed_positions(cfg: DecoderRunConfig, tokens: torch.Tensor) -> torch.Tensor:
    """``[batch, pos]`` bool: where the decoder's activations are read (and candidates matched)."""
    if cfg.positions is None:
        return torch.ones(tokens.shape, dtype=torch.bool)
    mask = torch.zeros(tokens.shape, dtype=torch.bool)
    mask[:, list(cfg.positions)] = True
    return mask


@dataclass(frozen=True)
class DecoderTrainResult:
    run: str
    step: int
    status: str
    """``"done"`` or ``"interrupted"``."""
    inside: dict[str, float]
    """Per site, the share of samples inside ε at the last evaluation (evaluation queries: held-out
    combinations where the task has a split, fresh random ones otherwise)."""
    elapsed_s: float


class DecoderTrainer:
    """Trains (or resumes) one decoder run for its probed model. ``DecoderTrainer(...).fit()``."""

    def __init__(
        self, run: Run, cfg: DecoderRunConfig, probed: TrainedModel, *, progress: bool = True
    ) -> None:
        check_fits(cfg, probed, what=f"decoder run {run.name!r}")
        self.run, self.cfg, self.probed = run, cfg, probed
        self.show_progress = progress
        self.model = probed.model.eval()
        self.task = probed.task
        self.sites: list[ProbeSite] = [parse_site(n, self.model) for n in cfg.sites]
        tc = cfg.train
        self.decoder = InversionDecoder(cfg.decoder, seed=derive_seed(tc.seed, "decoder-init"))
        params = list(self.decoder.named_parameters())
        self.optimizer = torch.optim.AdamW(
            [
                {"params": [p for _, p in params if p.ndim >= 2], "weight_decay": tc.weight_decay},
                {"params": [p for _, p in params if p.ndim < 2], "weight_decay": 0.0},
            ],
            lr=tc.lr,
        )
        self.data_rng = torch.Generator().manual_seed(derive_seed(tc.seed, "decoder-data"))
        null_rng = torch.Generator().manual_seed(derive_seed(tc.seed, "decoder-null"))
        reference = self.task.sample(1024, null_rng, train=True)
        self.null_acts = null_activations(
            self.model, reference, self.sites, allowed_positions(cfg, reference)
        )
        eval_rng = torch.Generator().manual_seed(derive_seed(tc.seed, "decoder-eval"))
        self.eval_tokens = self.task.sample(tc.eval_queries, eval_rng, train=False)
        self.site_weights = torch.ones(len(self.sites), dtype=torch.float64)
        self.step = 0
        self.elapsed_s = 0.0
        self._log_sum = torch.zeros((), dtype=torch.float64)
        self._log_count = 0
        self._pending: list[tuple[int, str, float]] = []
        self._stop_requested = False
        self.inside: dict[str, float] = {}

    def fit(self, *, restart: bool = False) -> DecoderTrainResult:
        """Train to ``train.steps``, resuming the run's saved state, holding the run's lock.

        Args:
            restart: first delete everything the run saved (checkpoints, metrics, results) and
                train it from step 0.

        Raises:
            CheckpointError: the saved state is damaged or another config's, or the run lost files
                that resuming cannot write again (its state, or checkpoints before it): the run is
                left as it was, never rebuilt in part.
            DivergenceError: the loss or the weights became non-finite.
        """
        with self.run.lock(on_wait=self._say_waiting):
            self.run.workspace.remove_stale_files()
            self.run.remove_stale_files()
            if restart:
                self.run.discard_training()
            return self._fit()

    def _say_waiting(self) -> None:
        print(
            f"decoder run {self.run.name} is being trained by another process; waiting for it",
            file=sys.stderr,
            flush=True,
        )

    def _fit(self) -> DecoderTrainResult:
        tc = self.cfg.train
        self._restore()
        self.run.set_status("running", self.step)
        started, before = time.perf_counter(), self.elapsed_s
        try:
            with interrupt_requests_stop(self), self._progress() as (bar, task_id):
                while self.step < tc.steps and not self._stop_requested:
                    self.train_step()
                    if self.step % tc.log_every == 0 or self.step == tc.steps:
                        self._flush_log(bar, task_id)
                    if self.step % tc.eval_every == 0 or self.step == tc.steps:
                        self._evaluate()
                        bar.update(task_id, inside=f"{_mean(self.inside):.0%}")
                        self._save_checkpoint()
                    self.elapsed_s = before + time.perf_counter() - started
                    if self.step % tc.save_every == 0 or self.step == tc.steps:
                        self._save_state()
                    bar.update(task_id, completed=self.step)
        except KeyboardInterrupt:
            self.run.set_status("interrupted")
            raise
        except BaseException:
            self.run.set_status("failed")
            raise
        self.elapsed_s = before + time.perf_counter() - started
        if self.step < tc.steps:
            self._save_state()
            self.run.set_status("interrupted", self.step)
            return DecoderTrainResult(self.run.name, self.step, "interrupted", {}, self.elapsed_s)
        if not self.inside:  # a finished run, opened again
            self.inside = self.run.read_result("decoder_summary")["inside"]
        else:
            summary = {"step": self.step, "elapsed_s": self.elapsed_s, "inside": self.inside}
            self.run.write_result("decoder_summary", summary)
        self.run.set_status("done", self.step)
        return DecoderTrainResult(self.run.name, self.step, "done", self.inside, self.elapsed_s)

    def train_step(self) -> None:
        """One update on a fresh batch of pairs (public so benchmarks time exactly this)."""
        tc = self.cfg.train
        self.step += 1
        for group in self.optimizer.param_groups:
            group["lr"] = _lr_at(self.step, tc)
        tokens = self.task.sample(tc.batch_size, self.data_rng, train=True)
        batch = decoder_batch(
            self.model,
            tokens,
            self.sites,
            self.data_rng,
            positions=allowed_positions(self.cfg, tokens),
            site_weights=self.site_weights,
            null_acts=self.null_acts,
            null_frac=tc.null_frac,
        )
        self.decoder.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.precision == "bf16"):
            logits = self.decoder(batch.tokens, batch.acts, batch.sites)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch.tokens.flatten())
        if not bool(torch.isfinite(loss)):  # before the update: the weights are still good
            raise self._diverged(f"the loss became {float(loss)}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.decoder.parameters(), tc.grad_clip)
        self.optimizer.step()
        # a step can leave finite but huge weights whose outputs overflow: checked before any
        # evaluation or save, so the run keeps its last good state
        with torch.no_grad():
            probe = self.decoder(batch.tokens[:4], batch.acts[:4], batch.sites[:4])
        if not all(bool(torch.isfinite(p).all()) for p in self.decoder.parameters()) or not bool(
            torch.isfinite(probe).all()
        ):
            raise self._diverged("the weights or outputs became NaN or infinite")
        self._log_sum += float(loss.detach())
        self._log_count += 1

    def _diverged(self, what: str) -> DivergenceError:
        kept = "its last saved state is kept" if self.run.state_file() else "nothing was saved"
        return DivergenceError(
            f"decoder training diverged at step {self.step}: {what}; lower the learning rate "
            f"(--lr, now {self.cfg.train.lr:g}) and train a new decoder run ({kept})"
        )

    def _flush_log(self, bar: Progress, task_id: int) -> None:
        loss = float(self._log_sum) / max(1, self._log_count)
        self._pending += [
            (self.step, "train/loss", loss),
            (self.step, "train/lr", _lr_at(self.step, self.cfg.train)),
        ]
        self._log_sum.zero_()
        self._log_count = 0
        bar.update(task_id, loss=f"{loss:.3f}")

    def _evaluate(self) -> None:
        """Invert the evaluation queries at every site; log and (optionally) reweight."""
        self.inside = evaluate_decoder(
            self.model, self.decoder, self.cfg, self.sites, self.eval_tokens, seed=self.cfg.train.seed
        )
        self._pending += [(self.step, f"eval/inside/{k}", v) for k, v in self.inside.items()]
        self._pending.append((self.step, "eval/inside", _mean(self.inside)))
        if self.cfg.train.reweight:
            rates = torch.tensor([self.inside[s.name] for s in self.sites], dtype=torch.float64)
            self.site_weights = 0.5 + (1.0 - rates.nan_to_num(0.5))

    # -- persistence --

    def _meta(self) -> dict[str, str]:
        return {
            "decoder_config": json.dumps(self.cfg.decoder.to_dict()),
            "sites": json.dumps(list(self.cfg.sites)),
            "probed_run": self.cfg.probed_run,
            "probed_config_hash": self.cfg.probed_config_hash,
            "run_config_hash": self.run.config_hash,
        }

    def _save_checkpoint(self) -> None:
        tensors = {f"decoder.{k}": v for k, v in self.decoder.state_dict().items()}
        tensors["null_acts"] = self.null_acts
        meta = {"kind": DECODER_KIND, "step": str(self.step), **self._meta()}
        self.run.save_checkpoint(self.step, tensors, meta)

    def _save_state(self) -> None:
        self.run.log_metrics(self._pending)
        self._pending = []
        opt = self.optimizer.state_dict()
        tensors = {f"decoder.{k}": v for k, v in self.decoder.state_dict().items()}
        for idx, state in opt["state"].items():
            tensors.update({f"optim.{idx}.{k}": v for k, v in state.items()})
        tensors["rng.data"] = self.data_rng.get_state()
        tensors["site_weights"] = self.site_weights.clone()
        tensors["log.sum"] = self._log_sum.clone()
        meta = {
            "kind": STATE_KIND,
            "step": str(self.step),
            "elapsed_s": repr(self.elapsed_s),
            "log_count": str(self._log_count),
            "inside": json.dumps(self.inside),
            "param_groups": json.dumps(opt["param_groups"]),
            **self._meta(),
        }
        self.run.save_state(tensors, meta)
        self.run.set_status("running", self.step)

    def _restore(self) -> None:
        path = self.run.state_file()
        if path is None:
            self._start_from_scratch()
            return
        tensors, meta = load_tensors(path, kind=STATE_KIND)
        if meta.get("run_config_hash") != self.run.config_hash:
            raise CheckpointError(f"{path} was saved by another decoder config; train a new run")
        optim: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                optim.setdefault(int(idx), {})[name] = value
        try:
            self.decoder.load_state_dict(_strip(tensors, "decoder."), strict=True)
            self.optimizer.load_state_dict(
                {"state": optim, "param_groups": json.loads(meta["param_groups"])}
            )
            self.data_rng.set_state(tensors["rng.data"])
            self.site_weights = tensors["site_weights"].clone()
            self._log_sum = tensors["log.sum"].clone()
            self._log_count = int(meta["log_count"])
            self.step = int(meta["step"])
            self.elapsed_s = float(meta["elapsed_s"])
            self.inside = json.loads(meta["inside"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{path} does not hold a usable decoder state: {err}") from None
        refuse_missing_checkpoints(
            self.run, _checkpoint_steps(self.cfg.train), self.step,
            f"decoder run {self.run.name!r}", _start_over_hint(self.run, self.cfg),
        )  # fmt: skip
        # metrics logged after the saved state will be recomputed, identically
        self.run.workspace.delete_metrics_after(self.run.name, self.step)

    def _start_from_scratch(self) -> None:
        """No saved state: train from step 0, unless the run got further (then it was lost)."""
        tc = self.cfg.train
        prepare_fresh_start(
            self.run, steps=tc.steps, save_every=tc.save_every,
            who=f"decoder run {self.run.name!r}", hint=_start_over_hint(self.run, self.cfg),
            summary="decoder_summary",
        )  # fmt: skip

    def _progress(self) -> AbstractContextManager[tuple[Progress, int]]:
        fields = {"loss": "loss", "inside": "inside ε"}
        return progress_bar(
            self.run.name, self.cfg.train.steps, self.step, fields, show=self.show_progress
        )


def evaluate_decoder(
    model: Any,
    decoder: InversionDecoder,
    cfg: DecoderRunConfig,
    sites: list[ProbeSite],
    queries: torch.Tensor,
    *,
    seed: int,
) -> dict[str, float]:
    """Per site, the share of samples inside ε, over ``queries`` read at a random allowed position
    each (the same positions for every site), with the paper's four settings."""
    tc = cfg.train
    rng = torch.Generator().manual_seed(derive_seed(seed, "decoder-eval-sampling"))
    mask = allowed_positions(cfg, queries)
    keys = torch.rand(mask.shape, generator=rng).masked_fill(~mask, -1.0)
    where = keys.argmax(1)
    decoder.eval()
    inside = {}
    for index, site in enumerate(sites):
        acts = site_activations(model, queries, site)[torch.arange(len(queries)), where]
        shares = []
        for query in acts:
            if float(query.norm()) == 0.0:
                continue  # D is undefined for an all-zero activation
            samples = invert(
                model,
                decoder,
                query.float(),
                site,
                index,
                rng,
                per_setting=tc.eval_per_setting,
                settings=SETTINGS,
                epsilon=tc.epsilon,
                allowed=lambda t: allowed_positions(cfg, t),
            )
            shares.append(samples.share_inside)
        inside[site.name] = sum(shares) / len(shares) if shares else math.nan
    return inside


@dataclass(frozen=True)
class TrainedDecoder:
    """A decoder run's decoder at one checkpoint, with its config and no-information activations."""

    run: Run
    config: DecoderRunConfig
    decoder: InversionDecoder
    null_acts: torch.Tensor
    """``[site, d_model]``: each site's no-information activation."""
    step: int

    def site_index(self, name: str) -> int:
        """The decoder's index of site ``name``, or a ConfigError naming the trained sites."""
        if name not in self.config.sites:
            raise ConfigError(
                f"decoder {self.run.name!r} was not trained on site {name!r}; it knows "
                f"{', '.join(self.config.sites)} (train another with `tinylens invert train "
                f"{self.config.probed_run} --sites {name}`)"
            )
        return self.config.sites.index(name)


def train_decoder(
    workspace: Workspace,
    probed: TrainedModel,
    cfg: DecoderRunConfig,
    name: str | None = None,
    *,
    progress: bool = True,
    restart: bool = False,
) -> DecoderTrainResult:
    """Train ``cfg``'s decoder to the end, resuming (or reusing) the run of the same config.

    ``restart``: delete what the run saved (checkpoints, metrics, results) and train it from step
    0 instead, e.g. when it lost its state and resuming is refused (:meth:`DecoderTrainer.fit`).
    """
    name = cfg.default_name() if name is None else name
    if not name:
        raise ConfigError("decoder run name must not be empty; leave --name out for the default")
    if workspace.has_run(name):
        run = workspace.run(name)
        stored = read_decoder_config(run)
        if stored != cfg:
            raise ConfigError(f"run {name!r} already exists with another config; pick another --name")
    else:
        run = workspace.create_run(name, cfg.to_dict(), kind=RUN_KIND)
    return DecoderTrainer(run, cfg, probed, progress=progress).fit(restart=restart)


def decoder_runs_for(workspace: Workspace, probed_run: str) -> list[str]:
    """Names of the decoder runs trained for ``probed_run``, oldest first (a decoder run whose
    ``config.json`` cannot be read is left out: which run it decodes cannot be told)."""
    return [
        name
        for name, cfg in _decoder_configs(workspace)
        if isinstance(cfg, DecoderRunConfig) and cfg.probed_run == probed_run
    ]


def _decoder_configs(
    workspace: Workspace, train: str = TRAIN_HINT
) -> list[tuple[str, DecoderRunConfig | ConfigError]]:
    """Every decoder run in the workspace, oldest first, with its config or why it is unreadable
    (``train``: as for :func:`read_decoder_config`)."""
    found: list[tuple[str, DecoderRunConfig | ConfigError]] = []
    for info in sorted(workspace.runs(), key=lambda i: i.created):
        if info.kind == RUN_KIND:
            try:
                found.append((info.name, read_decoder_config(workspace.run(info.name), train)))
            except ConfigError as err:
                found.append((info.name, err))
    return found


def read_decoder_config(run: Run, train: str = TRAIN_HINT) -> DecoderRunConfig:
    """The decoder run's config.

    Args:
        run: the decoder run.
        train: the command that trains a new decoder, for the message of an unreadable config.

    Raises:
        ConfigError: ``run`` is not a decoder run, or it is one whose ``config.json`` is unreadable
            (the message says which, and how to fix it).
    """
    decoder = run.kind == RUN_KIND
    try:
        data = run.config
    except ConfigError as err:  # not JSON, or not an object: the message names the file
        if not decoder:
            raise ConfigError(f"run {run.name!r} is not a decoder run: {err}") from None
        raise ConfigError(
            f"decoder run {run.name!r} has an unreadable config.json: {err}, or train a new "
            f"decoder with {train}"
        ) from None
    try:
        return DecoderRunConfig.from_dict(data)
    except ConfigError as err:
        if not decoder:
            raise ConfigError(f"run {run.name!r} is not a decoder run: {err}") from None
        raise ConfigError(
            f"decoder run {run.name!r} has an unreadable config.json ({err}); restore it, or "
            f"delete the run folder {run.path} and train a new decoder with {train}"
        ) from None


def load_decoder(
    workspace: Workspace, probed: TrainedModel, name: str | None = None, step: int | None = None
) -> TrainedDecoder:
    """The decoder run ``name`` (default: the newest one for ``probed``'s run) at ``step``.

    Raises:
        ConfigError: no decoder for the run, ``name`` is not a decoder run, or its config.json
            is unreadable.
        CheckpointError: the decoder does not fit the probed model (another run, a retrained or
            reshaped model), or its checkpoint is missing or damaged.
    """
    if name is None:
        name = _newest_usable(workspace, probed)
    run = workspace.run(name)
    cfg = read_decoder_config(run, f"`tinylens invert train {probed.run.name}`")
    check_fits(cfg, probed, what=f"decoder {name!r}")
    path = run.checkpoint_file(step)
    if read_metadata(path).get("run_config_hash") != run.config_hash:
        raise CheckpointError(f"{path} was written under another config.json; restore it")
    tensors, meta = load_tensors(path, kind=DECODER_KIND)
    decoder = InversionDecoder(cfg.decoder)
    try:
        decoder.load_state_dict(_strip(tensors, "decoder."), strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not hold this decoder's weights: {err}") from None
    null_acts = tensors.get("null_acts")
    if null_acts is None or null_acts.shape != (len(cfg.sites), cfg.decoder.d_act):
        raise CheckpointError(f"{path} lacks the sites' no-information activations")
    return TrainedDecoder(run, cfg, decoder.eval(), null_acts, int(meta["step"]))


def _newest_usable(workspace: Workspace, probed: TrainedModel) -> str:
    """The newest decoder run for ``probed`` that fits it and has a checkpoint.

    Raises:
        ConfigError: there is none; if a decoder run's config.json is unreadable (it may be the
            one wanted), the message names it and says how to fix it.
    """
    train = f"`tinylens invert train {probed.run.name} --checkpoint {probed.step}`"
    configs = _decoder_configs(workspace, train)
    found = [
        (name, cfg)
        for name, cfg in configs
        if isinstance(cfg, DecoderRunConfig) and cfg.probed_run == probed.run.name
    ]
    for name, cfg in reversed(found):
        try:
            check_fits(cfg, probed, what=name)
        except TinylensError:
            continue
        if workspace.run(name).checkpoint_steps():
            return name
    # a decoder run whose config.json is unreadable may be the one wanted: say so
    unreadable = [str(err) for _, err in configs if isinstance(err, ConfigError)]
    note = unreadable[-1] if unreadable else ""
    if len(unreadable) > 1:
        note += f" ({len(unreadable) - 1} more decoder runs are unreadable too)"
    if not found and note:
        raise ConfigError(f"run {probed.run.name!r} has no usable decoder: {note}")
    if not found:
        raise ConfigError(f"run {probed.run.name!r} has no decoder; train one with {train}")
    raise ConfigError(
        f"none of the {len(found)} decoders of run {probed.run.name!r} fits its checkpoint at step "
        f"{probed.step} with a saved checkpoint of its own; train one with {train}, or name one "
        "with --decoder" + (f"; also, {note}" if note else "")
    )


def check_fits(cfg: DecoderRunConfig, probed: TrainedModel, *, what: str) -> None:
    """A CheckpointError unless the decoder was trained for exactly this probed model."""
    model = probed.model
    problems = []
    if cfg.probed_run != probed.run.name:
        problems.append(f"it was trained for run {cfg.probed_run!r}, not {probed.run.name!r}")
    elif cfg.probed_config_hash != probed.run.config_hash:
        problems.append("the probed run's config.json changed since (a different model)")
    elif cfg.probed_step != probed.step:
        problems.append(f"it reads checkpoint step {cfg.probed_step}, not step {probed.step}")
    shape = cfg.decoder
    if (shape.d_act, shape.d_vocab, shape.n_ctx) != (
        int(model.cfg.d_model),
        probed.task.d_vocab,
        probed.task.seq_len,
    ):
        problems.append(
            f"it reads d_model {shape.d_act} and writes {shape.n_ctx} tokens of a {shape.d_vocab}-token "
            f"vocabulary; the model has d_model {int(model.cfg.d_model)}, {probed.task.seq_len} "
            f"tokens of {probed.task.d_vocab}"
        )
    if problems:
        raise CheckpointError(
            f"{what} does not match the probed model: {'; '.join(problems)}; train a decoder for "
            f"it with `tinylens invert train {probed.run.name}`"
        )


def _checkpoint_steps(tc: DecoderTrainConfig) -> set[int]:
    """The steps decoder training writes a checkpoint at: each evaluation's, and the last."""
    return set(range(tc.eval_every, tc.steps + 1, tc.eval_every)) | {tc.steps}


def _start_over_hint(run: Run, cfg: DecoderRunConfig) -> str:
    """How to get a whole decoder run back when resuming cannot (the end of a CheckpointError)."""
    return (
        f"start it over with the same `tinylens invert train {cfg.probed_run} …` and --restart "
        f"(deletes decoder run {run.name!r}'s checkpoints, metrics and results), or train the "
        "decoder under another --name"
    )


def _strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _lr_at(step: int, tc: DecoderTrainConfig) -> float:
    if step <= tc.warmup_steps:
        return tc.lr * step / max(1, tc.warmup_steps)
    progress = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
    return tc.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _mean(values: dict[str, float]) -> float:
    finite = [v for v in values.values() if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"decoder training {name} must be a positive integer, got {value!r}")


__all__ = [
    "DecoderRunConfig",
    "DecoderTrainConfig",
    "DecoderTrainResult",
    "DecoderTrainer",
    "TrainedDecoder",
    "allowed_positions",
    "decoder_run_config",
    "decoder_runs_for",
    "evaluate_decoder",
    "load_decoder",
    "read_decoder_config",
    "train_decoder",
]
