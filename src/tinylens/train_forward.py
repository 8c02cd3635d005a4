"""The training forward pass, computed directly from one of our models' weights, and shared prefixes.

Background:
    Training needs logits and gradients, not hooks. TransformerLens's native model computes attention
    the readable way (scores, ``masked_fill``, softmax, a second ``masked_fill``) and caps sequences
    at ``n_ctx``. :func:`direct_forward` computes the same function from the same parameters with one
    fused QKV projection and the mask added inside the score matmul: 1.3× the steps per second on
    the maze recipe (``benchmarks/train_speed.py --task maze``). It is tested equal to the bridge's
    forward on random inputs for every architecture option we build. Analyses never use it: they
    run the bridge, with its hooks.

    Shared prefixes (:func:`split_shared_prefix`, :func:`shared_prefix_forward`): k questions that
    start with the same tokens (k queries on one maze's adjacency list) are computed as the prefix
    once plus k segments. Each segment reads the prefix's keys and values and its own, causally, at
    the positions it would have alone. Under causal attention the prefix's activations do not depend
    on what follows, so every answer logit equals the one the ordinary sequence gives (tested), for
    prefix + k·segment tokens instead of k·(prefix + segment), and no attention between segments.

Usage:
    logits = direct_forward(model, tokens)                # == model(tokens), no hooks
    shared = split_shared_prefix(tokens, k=4, prefix_len=task.shared_prefix_len,
                                 answer_positions=task.answer_positions,
                                 valid=task.answer_valid(tokens))
    answer_logits = shared.answer_logits(shared_prefix_forward(model, shared))  # [rows, answer, vocab]

References:
    Prefix sharing for training: arXiv:2410.20305.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import nn

from tinylens.errors import ConfigError


@dataclass(frozen=True)
class SharedPrefixBatch:
    """Groups of k questions sharing a prefix: the prefix once per group, then each question's own
    tokens (its segment), cut after the last answer slot any question uses."""

    prefix: Int[torch.Tensor, "group prefix"]
    segments: Int[torch.Tensor, "group k seg"]
    answer_columns: Int[torch.Tensor, " answer"]
    """Per answer slot, the segment column whose logits predict it (slots past the segment point at
    column 0; no question uses them)."""

    def answer_logits(
        self, logits: Float[torch.Tensor, "group k seg d_vocab"]
    ) -> Float[torch.Tensor, "rows answer d_vocab"]:
        """The logits predicting each question's answer slots, one row per ordinary sequence, in
        the order of the sequences that were split."""
        picked = logits[:, :, self.answer_columns]  # [group, k, answer, d_vocab]
        return picked.reshape(-1, *picked.shape[2:])


def causal_mask(n: int, device: torch.device | str = "cpu") -> Float[torch.Tensor, "n n"]:
    """The additive causal mask of ``n`` tokens: 0 on and below the diagonal, -inf above."""
    return torch.full((n, n), float("-inf"), device=device).triu(1)


def split_shared_prefix(
    tokens: Int[torch.Tensor, "rows pos"],
    k: int,
    prefix_len: int,
    answer_positions: Int[torch.Tensor, " answer"],
    valid: Bool[torch.Tensor, "rows answer"],
) -> SharedPrefixBatch:
    """Split ordinary sequences, k consecutive rows per group with equal first ``prefix_len``
    tokens, into one prefix per group and one segment per row.

    Raises:
        ConfigError: the rows do not come in groups of k sharing their prefix, or an answer slot
            lies inside the prefix.
    """
    rows, seq = tokens.shape
    if k < 1 or rows % k:
        raise ConfigError(f"{rows} sequences cannot be packed in groups of {k}")
    if int(answer_positions.min()) <= prefix_len:
        raise ConfigError(f"answer slots must come after the shared prefix of {prefix_len} tokens")
    groups = tokens.reshape(rows // k, k, seq)
    if not bool((groups[:, :, :prefix_len] == groups[:, :1, :prefix_len]).all()):
        raise ConfigError(f"the {k} sequences of a group must share their first {prefix_len} tokens")
    used = valid.any(0).to(answer_positions.device)  # [answer]: slots any row uses
    last = int(answer_positions[used].max()) if bool(used.any()) else prefix_len
    seg = last + 1 - prefix_len  # a segment runs to the last used answer slot
    offset = answer_positions - 1 - prefix_len  # the column that predicts each slot
    columns = torch.where(offset < seg, offset, torch.zeros_like(offset))
    return SharedPrefixBatch(
        groups[:, 0, :prefix_len], groups[:, :, prefix_len : prefix_len + seg], columns
    )


def shared_prefix_forward(
    model: nn.Module, batch: SharedPrefixBatch
) -> Float[torch.Tensor, "group k seg d_vocab"]:
    """Logits of every segment of ``batch``, each computed as if its row were an ordinary sequence:
    segment tokens attend to their prefix and causally to their own segment, at the positions they
    would have alone. The prefix is computed once per group; each segment reads its keys and values
    (no segment × other-segment scores are formed)."""
    native = model.original_model  # type: ignore[attr-defined]
    groups, k, seg = batch.segments.shape
    p = batch.prefix.shape[1]
    device = batch.prefix.device
    positions = torch.cat([torch.arange(p), torch.arange(p, p + seg).repeat(k)]).to(device)
    tokens = torch.cat([batch.prefix, batch.segments.reshape(groups, k * seg)], dim=1)
    hidden = _embed(native, tokens, positions)
    prefix_mask, segment_mask = causal_mask(p, device), causal_mask(seg, device)
    rope_positions = positions[None].expand(groups, -1)
    for block in native.layers:
        attn = block.attn
        q, key, v = _qkv(attn, block.ln1(hidden), rope_positions)  # [group, head, pos, d_head]
        heads, d_head = attn.n_heads, attn.d_head
        prefix_out = _attend(q[:, :, :p], key[:, :, :p], v[:, :, :p], prefix_mask, attn.scale)
        q_s, k_s, v_s = (t[:, :, p:].reshape(groups, heads, k, seg, d_head) for t in (q, key, v))
        on_prefix = torch.matmul(q[:, :, p:], key[:, :, :p].transpose(-1, -2)) / attn.scale
        on_self = torch.matmul(q_s, k_s.transpose(-1, -2)) / attn.scale + segment_mask.to(q.dtype)
        scores = torch.cat([on_prefix.view(groups, heads, k, seg, p), on_self], dim=-1)
        pattern = scores.softmax(-1)  # [group, head, k, seg, p + seg]
        read_prefix = pattern[..., :p].reshape(groups, heads, k * seg, p)
        segment_out = torch.matmul(read_prefix, v[:, :, :p]) + torch.matmul(
            pattern[..., p:], v_s
        ).reshape(groups, heads, k * seg, d_head)
        mixed = torch.cat([prefix_out, segment_out], dim=2)  # [group, head, pos, d_head]
        hidden = hidden + attn.o(mixed.transpose(1, 2).reshape(groups, -1, heads * d_head))
        if not native.cfg.attn_only:
            hidden = hidden + block.mlp(block.ln2(hidden))
    logits = native.head(native.ln_out(hidden[:, p:]))
    return logits.view(groups, k, seg, -1)


def check_direct_forward(model: nn.Module) -> None:
    """Raise :class:`ConfigError` unless :func:`direct_forward` can run ``model``: one of our own
    models (a native TransformerLens bridge with causal, non-grouped, uncapped attention)."""
    native = getattr(model, "original_model", None)
    layers = getattr(native, "layers", None)
    cfg = getattr(native, "cfg", None)
    if native is None or layers is None or cfg is None or not hasattr(native, "tok_embed"):
        raise ConfigError(
            "train.forward = 'direct' needs one of tinylens's own models (a native bridge); "
            "use train.forward = 'bridge'"
        )
    unsupported = [
        cfg.attention_dir != "causal",
        float(getattr(cfg, "attn_scores_soft_cap", -1.0)) > 0,
        float(getattr(cfg, "output_logits_soft_cap", -1.0)) > 0,
        any(block.attn.kv_repeats != 1 for block in layers),
    ]
    if any(unsupported):
        raise ConfigError(
            "train.forward = 'direct' supports causal attention without soft caps or grouped "
            "keys; use train.forward = 'bridge'"
        )


def direct_forward(
    model: nn.Module, tokens: Int[torch.Tensor, "batch pos"]
) -> Float[torch.Tensor, "batch pos d_vocab"]:
    """Logits of one of our models (see :func:`check_direct_forward`) under causal attention, from
    its parameters: the bridge's ``model(tokens)`` without hooks."""
    native = model.original_model  # type: ignore[attr-defined]
    batch, seq = tokens.shape
    positions = torch.arange(seq, device=tokens.device)
    hidden = _embed(native, tokens, positions)
    mask = causal_mask(seq, tokens.device)
    rope_positions = positions[None].expand(batch, -1)
    for block in native.layers:
        attn = block.attn
        q, k, v = _qkv(attn, block.ln1(hidden), rope_positions)
        mixed = _attend(q, k, v, mask, attn.scale)
        hidden = hidden + attn.o(mixed.transpose(1, 2).reshape(batch, seq, -1))
        if not native.cfg.attn_only:
            hidden = hidden + block.mlp(block.ln2(hidden))
    return native.head(native.ln_out(hidden))


def _embed(
    native: nn.Module, tokens: Int[torch.Tensor, "batch pos"], positions: Int[torch.Tensor, " pos"]
) -> Float[torch.Tensor, "batch pos d_model"]:
    hidden = native.tok_embed(tokens)
    return hidden if native.pos is None else hidden + native.pos(positions)[None]


def _qkv(
    attn: nn.Module,
    x: Float[torch.Tensor, "batch pos d_model"],
    positions: Int[torch.Tensor, "batch pos"],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values, ``[batch, head, pos, d_head]`` each, from one fused projection
    (rotary applied where the model has it)."""
    batch, seq, _ = x.shape
    weight = torch.cat([attn.q.weight, attn.k.weight, attn.v.weight])
    bias = torch.cat([attn.q.bias, attn.k.bias, attn.v.bias])
    qkv = F.linear(x, weight, bias).view(batch, seq, 3, attn.n_heads, attn.d_head)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    if attn.rotary is not None:
        q, k = attn.rotary.apply_rope(q, k, position_ids=positions)
    return q, k, v


def _attend(
    q: Float[torch.Tensor, "batch head q d_head"],
    k: Float[torch.Tensor, "batch head k d_head"],
    v: Float[torch.Tensor, "batch head k d_head"],
    mask: Float[torch.Tensor, "q k"],
    scale: float,
) -> Float[torch.Tensor, "batch head q d_head"]:
    """Softmax attention with an additive mask; scores divided by ``scale`` as the native model does."""
    batch, heads, n_q, d_head = q.shape
    flat = batch * heads
    # baddbmm adds the mask in the score matmul: no separate masking pass over the scores.
    # (torch's scaled_dot_product_attention was measured slower here, on CPU with d_head 16.)
    scores = torch.baddbmm(
        mask.to(q.dtype).expand(flat, n_q, k.shape[2]),
        q.reshape(flat, n_q, d_head),
        k.reshape(flat, -1, d_head).transpose(1, 2),
        alpha=1.0 / scale,
    )
    mixed = torch.bmm(scores.softmax(-1), v.reshape(flat, -1, d_head))
    return mixed.view(batch, heads, n_q, d_head)
