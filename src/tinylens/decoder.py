"""InversionView's conditional decoder: a small GPT-2-style model that writes an input given an
activation of the probed model and the site it was read at.

Background:
    Huang, Panwar, Goyal and Hahn (2024) condition a decoder on (activation, site) and sample
    inputs from it; the samples whose own activation at that site lies within ε of the query show
    what the activation encodes. The conditioning path: the activation, concatenated with a
    learned embedding of its site, passes a stack of residual MLP blocks (LN → Linear → ReLU →
    Linear) and a final LN; in every decoder layer a projection of it becomes one extra key/value
    slot that every position can attend to (not a prefix token: it takes no position and is never
    predicted).

    Written in plain PyTorch, nanoGPT-style, rather than as a TransformerLens model: the extra
    key/value slot per layer is not an architecture TransformerLens builds, and the decoder is a
    tool we train and sample, never a model we take apart.

Usage:
    cfg = DecoderConfig(d_vocab=39, n_ctx=32, d_act=64, n_sites=9)
    decoder = InversionDecoder(cfg, seed=0)
    logits = decoder(tokens, acts, sites)          # [batch, pos, d_vocab]: next-token logits
    samples = decoder.sample(acts, sites, temperature=1.0, generator=g)   # [batch, n_ctx]

References:
    Huang, Panwar, Goyal and Hahn, "InversionView", NeurIPS 2024 (arXiv:2405.17653), appendix on
    the decoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from jaxtyping import Float, Int
from torch import nn
from torch.nn import functional as F

from tinylens.errors import ConfigError, TinylensError

_LIMITS = {"d_model": 2048, "n_layers": 24, "n_heads": 64, "n_cond_blocks": 64}
"""Upper bounds on the decoder's own size: far beyond any use here, well below what fails to
allocate (a request that cannot be met is a clear error, not an allocator traceback)."""


@dataclass(frozen=True)
class DecoderConfig:
    """The decoder's shape: the probed model's vocabulary, length and width, and its own size."""

    d_vocab: int
    """The probed model's vocabulary (the decoder writes its tokens)."""
    n_ctx: int
    """Length of the inputs it writes."""
    d_act: int
    """Width of the activations it is conditioned on (the probed model's d_model)."""
    n_sites: int
    """How many sites it is trained on (each gets a learned embedding)."""
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    n_cond_blocks: int = 6
    """Residual MLP blocks on the conditioning path."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            top = _LIMITS.get(f.name, 10**6)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ConfigError(f"decoder {f.name} must be an integer in 1–{top}, got {value!r}")
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"decoder d_model {self.d_model} must be divisible by n_heads {self.n_heads}"
            )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class _ResidualMLP(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.up = nn.Linear(d, 4 * d)
        self.down = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.relu(self.up(self.ln(x))))


class _Layer(nn.Module):
    """Pre-LN attention (with the conditioning slot) and MLP."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.slot_kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def _heads(self, z: torch.Tensor) -> torch.Tensor:
        b, t, d = z.shape
        return z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)

    def _finish(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        b, _, t, _ = z.shape
        x = x + self.out(z.transpose(1, 2).reshape(b, t, x.shape[-1]))
        return x + self.mlp(self.ln2(x))

    def slot(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditioning slot's key and value, ``[b, head, 1, d_head]`` each."""
        slot_k, slot_v = self.slot_kv(cond).split(cond.shape[-1], dim=-1)
        return self._heads(slot_k[:, None]), self._heads(slot_v[:, None])

    def forward(self, x: torch.Tensor, cond: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        slot_k, slot_v = self.slot(cond)
        k = torch.cat([slot_k, self._heads(k)], dim=2)  # the slot first, then the tokens
        v = torch.cat([slot_v, self._heads(v)], dim=2)
        return self._finish(x, F.scaled_dot_product_attention(self._heads(q), k, v, attn_mask=mask))

    def step(
        self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One new position ``x`` ``[b, 1, d]`` attending to the cached keys and values (the slot
        and every earlier position) and itself; returns its output and the grown cache."""
        q, k, v = self.qkv(self.ln1(x)).split(x.shape[-1], dim=-1)
        keys = torch.cat([cache[0], self._heads(k)], dim=2)
        values = torch.cat([cache[1], self._heads(v)], dim=2)
        z = F.scaled_dot_product_attention(self._heads(q), keys, values)
        return self._finish(x, z), (keys, values)


class InversionDecoder(nn.Module):
    """Writes an input of the probed model, conditioned on one of its activations and the site."""

    def __init__(self, cfg: DecoderConfig, *, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            d = cfg.d_model
            self.start = cfg.d_vocab  # an extra token id that only ever begins the input
            self.tok = nn.Embedding(cfg.d_vocab + 1, d)
            self.pos = nn.Embedding(cfg.n_ctx, d)
            self.site = nn.Embedding(cfg.n_sites, cfg.d_act)
            self.cond_in = nn.Linear(2 * cfg.d_act, d)
            self.cond = nn.Sequential(
                *(_ResidualMLP(d) for _ in range(cfg.n_cond_blocks)), nn.LayerNorm(d)
            )
            self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.n_layers))
            self.ln_f = nn.LayerNorm(d)
            self.unembed = nn.Linear(d, cfg.d_vocab)

    def condition(
        self, acts: Float[torch.Tensor, "batch d_act"], sites: Int[torch.Tensor, " batch"]
    ) -> Float[torch.Tensor, "batch d_model"]:
        """The conditioning vector each layer's slot is projected from."""
        return self.cond(self.cond_in(torch.cat([acts, self.site(sites)], dim=-1)))

    def forward(
        self,
        tokens: Int[torch.Tensor, "batch pos"],
        acts: Float[torch.Tensor, "batch d_act"],
        sites: Int[torch.Tensor, " batch"],
    ) -> Float[torch.Tensor, "batch pos d_vocab"]:
        """Logits for each position of ``tokens`` from the tokens before it (position 0 from the
        conditioning alone): teacher forcing over the whole input."""
        b, t = tokens.shape
        if t > self.cfg.n_ctx:
            raise ConfigError(f"the decoder writes at most {self.cfg.n_ctx} tokens, got {t}")
        shifted = torch.cat([torch.full((b, 1), self.start, device=tokens.device), tokens[:, :-1]], 1)
        return self._logits(shifted, self.condition(acts, sites))

    def _logits(self, inputs: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        t = inputs.shape[1]
        x = self.tok(inputs) + self.pos(torch.arange(t, device=inputs.device))
        causal = torch.ones(t, t, dtype=torch.bool, device=inputs.device).tril()
        mask = torch.cat([torch.ones(t, 1, dtype=torch.bool, device=inputs.device), causal], dim=1)
        for layer in self.layers:
            x = layer(x, cond, mask)
        return self.unembed(self.ln_f(x))

    @torch.no_grad()
    def sample(
        self,
        acts: Float[torch.Tensor, "batch d_act"],
        sites: Int[torch.Tensor, " batch"],
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        cache: bool = True,
    ) -> Int[torch.Tensor, "batch n_ctx"]:
        """One input per row, written token by token at ``temperature`` (0: greedy).

        Each step runs only the new position, attending to the keys and values cached from the
        earlier ones (``cache=False`` recomputes the whole prefix each step: the reference the
        cached path is tested against).
        """
        if not temperature >= 0:
            raise ConfigError(f"temperature must be ≥ 0, got {temperature!r}")
        cond = self.condition(acts, sites)
        b = acts.shape[0]
        inputs = torch.full((b, 1), self.start, dtype=torch.int64, device=acts.device)
        caches = [layer.slot(cond) for layer in self.layers]
        for position in range(self.cfg.n_ctx):
            if cache:
                x = self.tok(inputs[:, -1:]) + self.pos.weight[position]
                for i, layer in enumerate(self.layers):
                    x, caches[i] = layer.step(x, caches[i])
                logits = self.unembed(self.ln_f(x))[:, -1]
            else:
                logits = self._logits(inputs, cond)[:, -1]
            if not bool(torch.isfinite(logits).all()):
                raise TinylensError(
                    "the decoder's outputs are not finite: its weights diverged; train a new "
                    "decoder with a lower learning rate"
                )
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                probs = (logits / temperature).softmax(-1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            inputs = torch.cat([inputs, nxt[:, None]], dim=1)
        return inputs[:, 1:]
