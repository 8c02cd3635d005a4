"""Models: TransformerLens 4 ``TransformerBridge``s built from a small config, saved as safetensors.

Our own models are ``boot_native`` bridges (TransformerLens's from-scratch transformer behind the full
hook interface); pretrained ones are local Hugging Face checkpoint directories opened through
``boot_transformers``. Either way every analysis sees the same hook names.

Usage:
    cfg = MODEL_PRESETS["cpu"].sized(d_vocab=12, n_ctx=18)
    model = build_model(cfg, seed=0)
    save_model(model, cfg, Path("m.safetensors"))
    model = load_model(Path("m.safetensors"))
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args, no_type_check

import torch
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.sources.native import boot as boot_native

from tinylens.errors import CheckpointError, ConfigError, unknown_name
from tinylens.store import load_tensors, save_tensors

ActFn = Literal["relu", "gelu", "gelu_new", "silu"]
Norm = Literal["LN", "LNPre", "RMS", "RMSPre"]
Positions = Literal["standard", "rotary"]
MODEL_KIND = "tinylens.model"


# Validated by __post_init__ with our own errors; runtime type-checkers (the test suite's
# jaxtyping hook) would pre-empt those with their own, so they skip this class.
@no_type_check
@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder-only transformer (GPT-2 style, pre-norm)."""

    n_layers: int
    """Transformer blocks."""
    n_heads: int
    """Attention heads per block."""
    d_model: int
    """Residual stream width."""
    d_head: int
    """Width of each head's query, key and value."""
    d_mlp: int
    """Hidden width of each MLP; 0 makes an attention-only model."""
    act_fn: ActFn = "relu"
    """MLP non-linearity."""
    normalization_type: Norm | None = "LN"
    """Norm before attention, MLP and unembedding; None for none."""
    positional_embedding: Positions = "standard"
    """``standard``: learned absolute positions added to the embedding (GPT-2); ``rotary``: rotary
    embeddings of the queries and keys over the whole head (no position weights)."""
    d_vocab: int | None = None
    """Vocabulary size; None until sized for a task with :meth:`sized`."""
    n_ctx: int | None = None
    """Context length in tokens; None until sized for a task."""

    def __post_init__(self) -> None:
        for f in ("n_layers", "n_heads", "d_model", "d_head"):
            value = getattr(self, f)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"model {f} must be a positive integer, got {value!r}")
        if not isinstance(self.d_mlp, int) or self.d_mlp < 0:
            raise ConfigError(f"model d_mlp must be a non-negative integer, got {self.d_mlp!r}")
        if self.act_fn not in get_args(ActFn):
            raise ConfigError(f"model act_fn {self.act_fn!r} is not one of {get_args(ActFn)}")
        if self.positional_embedding not in get_args(Positions):
            raise ConfigError(
                f"model positional_embedding {self.positional_embedding!r} is not one of "
                f"{get_args(Positions)}"
            )
        if self.normalization_type not in (*get_args(Norm), None):
            raise ConfigError(
                f"model normalization_type {self.normalization_type!r} is not one of "
                f"{get_args(Norm)} or None"
            )
        for f in ("d_vocab", "n_ctx"):
            value = getattr(self, f)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"model {f} must be a positive integer or None, got {value!r}")

    def sized(self, *, d_vocab: int, n_ctx: int) -> ModelConfig:
        """This architecture with the vocabulary and context of a task."""
        return replace(self, d_vocab=d_vocab, n_ctx=n_ctx)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown model fields {unknown}; valid fields: {sorted(known)}")
        return cls(**data)


MODEL_PRESETS: dict[str, ModelConfig] = {
    # Quirke & Barez's 1-layer model: 3 heads of 170, d_mlp 4 × d_model.
    "quirke": ModelConfig(n_layers=1, n_heads=3, d_model=510, d_head=170, d_mlp=2040),
    # Chosen by measurement on a 2-core CPU (see the README): at this width the step is ~28/s
    # (d_model 192 with 3 heads: ~17/s) and 4 heads of 32 learn the task far sooner, so 5-digit
    # addition passes 99% exact match in a few minutes.
    "cpu": ModelConfig(n_layers=1, n_heads=4, d_model=128, d_head=32, d_mlp=512),
    # InversionView's counting model (Huang, Panwar, Goyal and Hahn 2024): 2 layers, 1 head,
    # d_model 64.
    "inversion": ModelConfig(n_layers=2, n_heads=1, d_model=64, d_head=64, d_mlp=256),
    # For tests and smoke runs: seconds, not minutes.
    "tiny": ModelConfig(n_layers=1, n_heads=2, d_model=32, d_head=16, d_mlp=64),
}


def model_preset(name: str) -> ModelConfig:
    if name not in MODEL_PRESETS:
        raise unknown_name("model preset", name, MODEL_PRESETS)
    return MODEL_PRESETS[name]


def build_model(cfg: ModelConfig, *, seed: int) -> TransformerBridge:
    """A randomly initialised ``boot_native`` bridge; the same config and seed give the same weights.

    Construction runs under TransformerLens's own ``fork_rng``, so the caller's RNG is untouched.
    """
    if cfg.d_vocab is None or cfg.n_ctx is None:
        raise ConfigError("model config needs d_vocab and n_ctx; call cfg.sized(...) for a task")
    bridge_cfg = TransformerBridgeConfig(
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        d_model=cfg.d_model,
        d_head=cfg.d_head,
        d_mlp=cfg.d_mlp if cfg.d_mlp > 0 else None,
        attn_only=cfg.d_mlp == 0,
        act_fn=cfg.act_fn,
        normalization_type=cfg.normalization_type,
        d_vocab=cfg.d_vocab,
        n_ctx=cfg.n_ctx,
        positional_embedding_type=cfg.positional_embedding,
        seed=seed,
        device="cpu",
    )
    return boot_native(bridge_cfg)


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as a flat name → tensor dict (CPU copies, safe to write)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def save_model(
    model: torch.nn.Module, cfg: ModelConfig, path: Path, extra: dict[str, str] | None = None
) -> None:
    """Write weights plus config as one safetensors file, atomically."""
    save_tensors(path, model_tensors(model), model_metadata(cfg, extra))


def model_metadata(cfg: ModelConfig, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"kind": MODEL_KIND, "model_config": json.dumps(asdict(cfg)), **(extra or {})}


def load_model(path: Path, expected: ModelConfig | None = None) -> TransformerBridge:
    """Rebuild a model saved by :func:`save_model` (or a run checkpoint) and load its weights.

    Args:
        path: the safetensors file.
        expected: the architecture the caller's config describes (e.g. a run's ``config.json``);
            the checkpoint's own stored config must equal it.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, damaged (checksum, or weights
            that are not finite), does not match its own config, or holds another architecture
            than ``expected``.
    """
    tensors, metadata = load_tensors(Path(path), kind=MODEL_KIND)
    cfg = config_from_metadata(metadata, path)
    if expected is not None and cfg != expected:
        raise CheckpointError(
            f"{path} holds a model with {_differences(cfg, expected)} than its run's config.json "
            "describes; restore the run's config.json, or train a new run with the new config"
        )
    broken = sorted(k for k, t in tensors.items() if t.is_floating_point() and not t.isfinite().all())
    if broken:
        # the trainer never saves non-finite weights, so this is damage the checksum did not catch
        # (a file written before checksums, or one whose checksum was stripped)
        raise CheckpointError(
            f"{path} holds non-finite weights ({', '.join(broken[:3])}); it is damaged: use "
            "another checkpoint of the run, or retrain"
        )
    model = build_model(cfg, seed=0)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not match its own model config: {err}") from None
    return model.eval()


def _differences(stored: ModelConfig, expected: ModelConfig) -> str:
    """E.g. "n_ctx 18 (config.json: 15)": the fields in which two configs differ."""
    parts = [
        f"{f.name} {getattr(stored, f.name)!r} (config.json: {getattr(expected, f.name)!r})"
        for f in fields(ModelConfig)
        if getattr(stored, f.name) != getattr(expected, f.name)
    ]
    return "other " + ", ".join(parts) if parts else "another config"


def config_from_metadata(metadata: dict[str, str], path: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(json.loads(metadata["model_config"]))
    except (KeyError, json.JSONDecodeError, ConfigError) as err:
        raise CheckpointError(f"{path} has no valid model config in its metadata ({err})") from None


SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
"""The weights file names ``save_pretrained`` writes (one file, or the index of shards)."""

PICKLED_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})
"""Files that hold pickles: a checkpoint folder with any of them is refused, not loaded."""


def check_pretrained_folder(path: Path | str) -> Path:
    """``path`` as a folder :func:`load_pretrained` will open, checked by its files alone (no
    loading): ``config.json`` and ``model.safetensors`` (or its shard index), and no pickles.

    Raises:
        CheckpointError: what is missing or refused, and how to re-save the model.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"{folder} is not a Hugging Face checkpoint directory (no config.json); pass the "
            "folder written by `model.save_pretrained(...)`"
        )
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLED_SUFFIXES)
    if pickled:
        # transformers may prefer or fall back to these files; unpickling one can run its code
        raise CheckpointError(
            f"{folder} holds pickled weights ({', '.join(pickled[:3])}); tinylens never unpickles "
            "a file it is handed. Move them out of the folder, keeping the .safetensors weights"
        )
    if not any((folder / name).is_file() for name in SAFETENSORS_WEIGHTS):
        raise CheckpointError(
            f"{folder} holds no model.safetensors (nor its shard index); tinylens loads safetensors "
            "weights only. Re-save the model with "
            "`model.save_pretrained(folder, safe_serialization=True)`"
        )
    return folder


def load_pretrained(path: Path | str, *, random_init: bool = False, seed: int = 0) -> TransformerBridge:
    """Open a local Hugging Face checkpoint directory (e.g. GPT-2 saved with ``save_pretrained``).

    Nothing is downloaded: the directory must hold ``config.json`` and ``model.safetensors`` (or its
    shard index), and no pickled weights at all (``pytorch_model.bin`` and the like are refused,
    not skipped: unpickling a file can run code, and transformers may pick one over safetensors).

    Args:
        path: the checkpoint directory.
        random_init: the same architecture with transformers' own random initialisation instead
            of the saved weights (a random-init control), seeded by ``seed``.
        seed: seeds the random initialisation; the caller's RNG is untouched.
    """
    folder = check_pretrained_folder(path)
    try:
        with torch.random.fork_rng(), _quiet_transformers():
            torch.manual_seed(seed)
            model = TransformerBridge.boot_transformers(
                str(folder), device="cpu", load_weights=not random_init
            )
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"could not load the checkpoint in {folder}: {err}") from None
    return model.eval()


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Without transformers' "Loading weights" progress bars on stderr (our CLI prints one line
    per error, and studies their own progress)."""
    from transformers.utils import logging as hf_logging  # noqa: PLC0415 (slow import)

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_pretrained_tokenizer(path: Path | str) -> Any:
    """The Hugging Face tokenizer saved in a local checkpoint directory (nothing is downloaded)."""
    from transformers import AutoTokenizer  # noqa: PLC0415 (slow import; few callers need it)

    folder = Path(path)
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"no usable tokenizer in {folder} ({err}); save it beside the model with "
            "`tokenizer.save_pretrained(folder)`"
        ) from None
