"""Builders for tests: tiny model and run configs with overridable fields."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformer_lens.config import TransformerBridgeConfig
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from tinylens.config import RunConfig, make_run_config
from tinylens.model import ModelConfig
from tinylens.train import Trainer


def model_cfg(**overrides: object) -> ModelConfig:
    """A tiny architecture sized for 5-digit addition; override any field."""
    base = {"n_layers": 1, "n_heads": 2, "d_model": 16, "d_head": 8, "d_mlp": 32}
    return ModelConfig(**{**base, **overrides}).sized(d_vocab=12, n_ctx=18)  # type: ignore[arg-type]


def run_cfg(steps: int = 40, seed: int = 0, **train: object) -> RunConfig:
    """The tiny preset, shortened: a few seconds of training."""
    defaults = {"eval_every": 20, "eval_size": 128, "save_every": 20, "log_every": 5}
    return make_run_config(
        "addition",
        "tiny",
        seed=seed,
        steps=steps,
        overrides={"train": {**defaults, **train}},
    )


def save_tiny_gpt2(folder, words: list[str], seed: int = 0) -> None:
    """A random 2-layer GPT-2 and a word-level tokenizer over ``words`` (plus <|endoftext|>),
    saved like ``save_pretrained`` would save a downloaded GPT-2 (safetensors weights)."""
    vocab = {word: i for i, word in enumerate(["<|endoftext|>", "[UNK]", *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="[UNK]"
    )
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=len(vocab), n_positions=64)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def native_cfg(d_vocab: int, **overrides: object) -> TransformerBridgeConfig:
    """A small ``boot_native`` config (2 layers, 3 heads of 8, d_model 24) for analysis tests."""
    base: dict[str, object] = {
        "n_layers": 2,
        "n_heads": 3,
        "d_model": 24,
        "d_head": 8,
        "d_mlp": 40,
        "d_vocab": d_vocab,
        "n_ctx": 12,
        "act_fn": "gelu",
        "seed": 4,
    }
    return TransformerBridgeConfig(**{**base, **overrides})


def stop_every_trainer_at(monkeypatch, step: int) -> None:
    """Make every Trainer (also those made out of reach, e.g. inside a sweep) stop after ``step``,
    as the first Ctrl-C does."""
    original = Trainer.train_step

    def step_then_ctrl_c(self: Trainer) -> None:
        original(self)
        if self.step == step:
            self._stop_requested = True

    monkeypatch.setattr(Trainer, "train_step", step_then_ctrl_c)


def stop_after(trainer: Trainer, step: int) -> None:
    """Make ``trainer`` stop after ``step`` as a Ctrl-C between that step and the next would."""
    take_step = trainer.train_step

    def step_then_maybe_stop() -> None:
        take_step()
        trainer._stop_requested = trainer.step >= step

    trainer.train_step = step_then_maybe_stop  # type: ignore[method-assign]


# Rounding relative to the largest value a forward pass sums: ε (float32 1.2e-7, float64 2.2e-16)
# times a small factor for depth and sum length. A real bug (a wrong sign, a missing term, a
# position off by one) moves values by a sizeable part of that scale, many orders above these.
SCALE_REL = {torch.float32: 1e-5, torch.float64: 1e-12}


def assert_close_at_scale(
    actual: torch.Tensor, expected: torch.Tensor, *, rel: float | None = None, msg: str | None = None
) -> None:
    """Assert ``|actual − expected| ≤ rel · max(max|expected|, 1)`` everywhere (``rel`` from the
    dtype; the scale is floored at 1, the order of a model's own activations).

    For two code paths of one computation (a forward from weights against the hooked model,
    batched against one at a time): their rounding differs by a few ε of the largest values summed
    (the residual stream, the logits), so an element near 0 carries the same absolute error as a
    large one, and a per-element ``rtol`` under a fixed ``atol`` is the wrong shape of bound.
    """
    rel = SCALE_REL[expected.dtype] if rel is None else rel
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, atol=rel * max(scale, 1.0), rtol=0, msg=msg)
