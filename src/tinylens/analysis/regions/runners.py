"""The clean runs and the patched runs of an interpolation, three ways.

``HookedRunner`` runs the model with hooks: every point of every pair in one batched pass, or
(``per_step``) one pass per α as the paper's code does, the reference the others are tested
against. ``FastRunner`` computes from the weights, for residual sites of a model
:class:`~tinylens.analysis.forward.WeightForward` reproduces, only what a patch can change: with
causal attention nothing after the patched position changes what is read there, and the patch
changes only that position, so a patched run recomputes one position from the write site on,
attending to the keys and values A's clean run left at the earlier positions.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Literal, Protocol, get_args, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import nn

from tinylens.analysis.forward import WeightForward, original
from tinylens.analysis.protocol import HookedModel, check_token_ids
from tinylens.errors import ConfigError, unknown_name
from tinylens.hooks import check_hook_names

Mode = Literal["linear", "arc", "slerp"]
Method = Literal["fast", "batched", "reference"]

_RESID = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")
_FINAL = ("ln_final.hook_out", "ln_final.hook_normalized")
"""The final norm's output: a bridge's ``hook_out`` (its ``hook_normalized`` comes before the
norm's weight and bias), a ``HookedTransformer``'s ``hook_normalized`` (after them)."""


def default_read_hook(model: HookedModel) -> str:
    """The final residual after the final norm, or the last block's output without one."""
    for name in _FINAL:
        if name in model.hook_dict:
            return name
    return f"blocks.{int(model.cfg.n_layers) - 1}.hook_resid_post"


@dataclass(frozen=True)
class Clean:
    """Clean runs of some prompts, at the patched position."""

    tokens: Int[torch.Tensor, "row pos"]
    write: torch.Tensor
    """``[row, *act]``: the activation at the write site."""
    read: torch.Tensor
    """``[row, *read]``: the activation at the read site."""
    logits: Float[torch.Tensor, "row d_vocab"]
    keys: tuple[torch.Tensor, ...] = ()
    """Fast runner only: each layer's keys ``[row, head, earlier pos, d_head]``."""
    values: tuple[torch.Tensor, ...] = ()

    @classmethod
    def cat(cls, parts: list[Clean]) -> Clean:
        """The rows of ``parts``, in order, as one."""
        first = parts[0]
        if len(parts) == 1:
            return first
        return cls(
            tokens=torch.cat([p.tokens for p in parts]),
            write=torch.cat([p.write for p in parts]),
            read=torch.cat([p.read for p in parts]),
            logits=torch.cat([p.logits for p in parts]),
            keys=tuple(torch.cat(ks) for ks in zip(*(p.keys for p in parts), strict=True)),
            values=tuple(torch.cat(vs) for vs in zip(*(p.values for p in parts), strict=True)),
        )

    def rows(self, index: slice) -> Clean:
        return replace(
            self,
            tokens=self.tokens[index],
            write=self.write[index],
            read=self.read[index],
            logits=self.logits[index],
            keys=tuple(k[index] for k in self.keys),
            values=tuple(v[index] for v in self.values),
        )


@runtime_checkable
class Runner(Protocol):
    """Runs clean prompts, then patched points into those prompts' runs."""

    def clean(self, tokens: Int[torch.Tensor, "row pos"]) -> Clean: ...

    def patched(self, base: Clean, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Read and logits ``[pair, step, …]`` of ``base``'s runs with ``points`` ``[pair, step,
        *act]`` written at the write site and position."""
        ...


# --- checks ----------------------------------------------------------------------------------


def check_inputs(
    model: HookedModel,
    prompts_a: torch.Tensor,
    prompts_b: torch.Tensor | None,
    targets: torch.Tensor | None,
    hooks: list[str],
    steps: int,
    mode: str,
    method: str,
    position: int,
) -> int:
    """Check an interpolation's inputs with tinylens errors; returns the prompts' length."""
    d_vocab = int(model.cfg.d_vocab)
    check_token_ids(prompts_a, d_vocab, "prompts_a")
    if (prompts_b is None) == (targets is None):
        raise ConfigError("give the path's end as exactly one of prompts_b and targets")
    if targets is not None:
        if not isinstance(targets, torch.Tensor) or not targets.is_floating_point():
            raise ConfigError("targets must be a floating-point tensor [pair, *activation]")
    else:
        check_token_ids(prompts_b, d_vocab, "prompts_b")
    if prompts_b is not None and prompts_a.shape != prompts_b.shape:
        raise ConfigError(
            f"prompts_a has shape {list(prompts_a.shape)} and prompts_b {list(prompts_b.shape)}; "
            "interpolation pairs prompt i of A with prompt i of B, so they need the same shape"
        )
    if prompts_a.shape[0] == 0:
        raise ConfigError("no prompt pairs given (prompts_a is empty)")
    check_steps(steps)
    if mode not in get_args(Mode):
        raise unknown_name("interpolation mode", mode, get_args(Mode))
    check_method(method)
    check_hook_names(model, hooks)
    seq_len = int(prompts_a.shape[1])
    check_position(position, seq_len)
    return seq_len


def check_steps(steps: int, what: str = "steps") -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ConfigError(f"{what} must be an integer ≥ 2 (α = 0 and α = 1 at least), got {steps!r}")


def check_method(method: str) -> None:
    if method not in get_args(Method):
        raise unknown_name("interpolation method", method, get_args(Method))


def check_position(position: int, seq_len: int) -> None:
    if isinstance(position, bool) or not isinstance(position, int) or not -seq_len <= position < seq_len:
        raise ConfigError(
            f"position {position!r} is out of range for prompts of length {seq_len} "
            f"(valid: {-seq_len}–{seq_len - 1})"
        )


def order_error(write_hook: str, read_hook: str) -> ConfigError:
    return ConfigError(
        f"the write site {write_hook!r} runs after the read site {read_hook!r}: a patch "
        "there cannot change what is read; write earlier or read later"
    )


@contextmanager
def evaluating(model: HookedModel) -> Iterator[None]:
    """The model in eval mode and without gradients, restored after."""
    # switching a bridge's mode walks every submodule (~5 ms on a small model, as much as the
    # fast sweep's own work), so skip it where no module is training: eval() would change nothing
    training = model.training
    switch = any(module.training for module in model.modules())
    if switch:
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if switch:
            model.train(training)


def make_runner(model: HookedModel, write_hook: str, read_hook: str, pos: int, method: str) -> Runner:
    """The fast runner where it applies (``method="fast"``), else a hooked one."""
    if method == "fast":
        plan = _fast_plan(model, write_hook, read_hook)
        if plan is not None:
            return FastRunner(plan, pos)
    return HookedRunner(model, write_hook, read_hook, pos, per_step=method == "reference")


# --- hooked runs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class HookedRunner:
    """Runs through the model's hooks: any sites, any model."""

    model: HookedModel
    write_hook: str
    read_hook: str
    pos: int
    per_step: bool
    """One forward pass per α (the paper's way) instead of one for everything."""

    def clean(self, tokens: Int[torch.Tensor, "row pos"]) -> Clean:
        seen: dict[str, torch.Tensor] = {}
        order: list[str] = []

        def capture(key: str):
            def hook(act: torch.Tensor, *, hook: object) -> None:
                order.append(key)
                seen.setdefault(key, act.detach().clone())

            return hook

        logits = self.model.run_with_hooks(
            tokens, fwd_hooks=[(self.write_hook, capture("write")), (self.read_hook, capture("read"))]
        )
        if self.write_hook != self.read_hook and order.index("write") > order.index("read"):
            raise order_error(self.write_hook, self.read_hook)
        p = self.pos
        return Clean(tokens, seen["write"][:, p], seen["read"][:, p], logits[:, p])

    def patched(self, base: Clean, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        runner = run_reference if self.per_step else run_batched
        return runner(self.model, base.tokens, points, self.write_hook, self.read_hook, self.pos)


def _patch_hook(values: torch.Tensor, pos: int):
    """A hook writing ``values`` (``[rows, *act]``) at ``pos`` of a copy of the activation."""

    def hook(act: torch.Tensor, *, hook: object) -> torch.Tensor:
        out = act.clone()
        out[:, pos] = values.to(act.dtype)
        return out

    return hook


def run_reference(model, prompts, points, write_hook, read_hook, pos):
    """One hooked forward pass through the whole model per α (the paper's way)."""
    reads, logits = [], []
    for step in range(points.shape[1]):
        got: dict[str, torch.Tensor] = {}

        def read(act: torch.Tensor, *, hook: object, got=got) -> None:
            got["read"] = act.detach().clone()

        out = model.run_with_hooks(
            prompts, fwd_hooks=[(write_hook, _patch_hook(points[:, step], pos)), (read_hook, read)]
        )
        reads.append(got["read"][:, pos])
        logits.append(out[:, pos])
    return torch.stack(reads, 1), torch.stack(logits, 1)


def run_batched(model, prompts, points, write_hook, read_hook, pos):
    """One hooked forward pass of every pair × step."""
    n_pairs, n_steps = points.shape[:2]
    tokens = prompts.repeat_interleave(n_steps, 0)  # row = pair · steps + step
    got: dict[str, torch.Tensor] = {}

    def read(act: torch.Tensor, *, hook: object) -> None:
        got["read"] = act.detach().clone()

    out = model.run_with_hooks(
        tokens, fwd_hooks=[(write_hook, _patch_hook(points.flatten(0, 1), pos)), (read_hook, read)]
    )
    rd = got["read"][:, pos]
    return rd.reshape(n_pairs, n_steps, *rd.shape[1:]), out[:, pos].reshape(n_pairs, n_steps, -1)


# --- runs from the weights -----------------------------------------------------------------------


@dataclass(frozen=True)
class _FastPlan:
    """How the fast path runs a residual write site: the layers from ``start`` on, from weights."""

    fwd: WeightForward
    start: int
    """The first layer the patch passes through (the write site is that layer's ``resid_pre``)."""
    read_at: tuple[int, str] | None
    """``(layer, "pre" | "post")`` of a residual read site; None: the final norm's output."""


_VERIFIED: weakref.WeakKeyDictionary[nn.Module, bool] = weakref.WeakKeyDictionary()
"""Per model: whether :class:`WeightForward` reproduces it. Its constructor proves that with a probe
forward pass (and two train/eval switches), which cost as much as the whole sweep on a small
model, so it runs once per model; the verdict depends on the architecture, not on the weights."""


class _Probed(WeightForward):
    """A :class:`WeightForward` of a model that already passed the probe (see ``_VERIFIED``)."""

    def _check_equals_model(self) -> None:
        pass


def _weight_forward(model: HookedModel) -> WeightForward | None:
    """The model's :class:`WeightForward`, or None where it does not reproduce the model."""
    verdict = _VERIFIED.get(model)
    if verdict is not None:
        return _Probed(model) if verdict else None
    try:
        fwd = WeightForward(model)
    except ConfigError:
        _VERIFIED[model] = False
        return None
    _VERIFIED[model] = True
    return fwd


def _fast_plan(model: HookedModel, write_hook: str, read_hook: str) -> _FastPlan | None:
    """The fast path's plan for residual sites of a model the weights reproduce, else None; raises
    the hooked path's error for a write site after the read site (their order is in the names)."""
    write, read = _RESID.match(write_hook), _RESID.match(read_hook)
    if write is None or not (read is not None or read_hook == "ln_final.hook_out"):
        return None
    # hook order: blocks.L.hook_resid_pre, then blocks.L.hook_resid_post, then block L + 1's
    w_key = 2 * int(write.group(1)) + (write.group(2) == "post")
    r_key = math.inf if read is None else 2 * int(read.group(1)) + (read.group(2) == "post")
    if w_key > r_key:
        raise order_error(write_hook, read_hook)
    fwd = _weight_forward(model)
    if fwd is None:
        return None
    start = int(write.group(1)) + (write.group(2) == "post")
    read_at = None if read is None else (int(read.group(1)), read.group(2))
    return _FastPlan(fwd, start, read_at)


@dataclass(frozen=True)
class FastRunner:
    """Runs from the weights, stopping every run at the patched position (see the module doc)."""

    plan: _FastPlan
    pos: int

    def clean(self, tokens: Int[torch.Tensor, "row pos"]) -> Clean:
        """One clean pass ending at the patched position: the write and read activations and the
        logits there, and every layer's keys and values at the earlier positions."""
        plan, fwd = self.plan, self.plan.fwd
        x = fwd.embed(tokens[:, : self.pos + 1])
        write = read = None
        keys: list[torch.Tensor] = []
        values: list[torch.Tensor] = []
        for layer in range(fwd.n_layers):
            if layer == plan.start:
                write = x[:, -1]
            if plan.read_at == (layer, "pre"):
                read = x[:, -1]
            q, k, v = fwd.qkv(layer, x)
            keys.append(k[:, :, :-1])
            values.append(v[:, :, :-1])
            if layer == fwd.n_layers - 1:  # nothing reads the last layer's earlier positions
                x, z = x[:, -1:], fwd.attend(q[:, :, -1:], k, v, causal=False)
            else:
                z = fwd.attend(q, k, v)
            x = x + fwd.attention_output(layer, z)
            if fwd.has_mlp:
                x = x + fwd.mlp(layer, x)
            if plan.read_at == (layer, "post"):
                read = x[:, -1]
        if plan.start == fwd.n_layers:  # written at the last block's output
            write = x[:, -1]
        x = x[:, -1]
        if plan.read_at is None:
            read = _final_norm(fwd, x)
        assert write is not None and read is not None
        return Clean(tokens, write, read, fwd.unembed(x), tuple(keys), tuple(values))

    def patched(self, base: Clean, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The patched position's read and logits for every point, attending to ``base``'s clean
        keys and values at the earlier positions."""
        plan, fwd = self.plan, self.plan.fwd
        n, steps = points.shape[:2]
        x = points.flatten(0, 1)[:, None]  # [row, 1, d_model]: one position, kept as a sequence
        positions = torch.full((x.shape[0], 1), self.pos, device=x.device)  # where rotary puts it
        at_write = plan.read_at in ((plan.start - 1, "post"), (plan.start, "pre"))
        read = x if at_write else None
        for layer in range(plan.start, fwd.n_layers):
            if plan.read_at == (layer, "pre"):
                read = x
            q, k, v = fwd.qkv(layer, x, positions)
            z = _attend_at(fwd, q, k, v, base.keys[layer], base.values[layer], steps)
            x = x + fwd.attention_output(layer, z)
            if fwd.has_mlp:
                x = x + fwd.mlp(layer, x)
            if plan.read_at == (layer, "post"):
                read = x
        if plan.read_at is None:
            read = _final_norm(fwd, x)
        assert read is not None
        out_read, logits = read[:, 0], fwd.unembed(x[:, 0])
        return out_read.reshape(n, steps, *out_read.shape[1:]), logits.reshape(n, steps, -1)


def _attend_at(
    fwd: WeightForward,
    q: Float[torch.Tensor, "row head 1 d_head"],
    k: Float[torch.Tensor, "row head 1 d_head"],
    v: Float[torch.Tensor, "row head 1 d_head"],
    prefix_k: Float[torch.Tensor, "pair head pos d_head"],
    prefix_v: Float[torch.Tensor, "pair head pos d_head"],
    steps: int,
) -> Float[torch.Tensor, "row head 1 d_head"]:
    """Attention of the patched position: to its pair's clean earlier keys (shared by all of the
    pair's steps, so broadcast rather than copied) and to its own key."""
    n, heads, _, d_head = prefix_k.shape
    qs = q.reshape(n, steps, heads, d_head)
    earlier = torch.einsum("nshd,nhpd->nshp", qs, prefix_k)
    own = (q * k).sum(-1).reshape(n, steps, heads, 1)
    weights = (torch.cat([earlier, own], -1) / fwd.attn_scale).softmax(-1)
    z = torch.einsum("nshp,nhpd->nshd", weights[..., :-1], prefix_v)
    z = z + weights[..., -1:] * v.reshape(n, steps, heads, d_head)
    return z.reshape(n * steps, heads, 1, d_head)


def _final_norm(fwd: WeightForward, x: torch.Tensor) -> torch.Tensor:
    """``ln_final.hook_out``: the final norm's output (the residual itself without a norm)."""
    final = getattr(fwd.model, "ln_final", None)
    return x if final is None else original(final)(x)
