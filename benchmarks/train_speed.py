"""Training throughput of a preset beside this machine's fp32 matmul peak, in one process.

Prints tokens/s, steps/s and achieved GFLOP/s of tinylens's training step (the Trainer's own
`train_step`: fresh batch, bridge forward with hooks, answer-only loss, backward, clip, AdamW), the
same step in the other precision (fp32 vs bf16 autocast), then two anchors measured here and now:
the same model's bare PyTorch module trained with a minimal loop (the cost of tinylens's bookkeeping
and the bridge), and the best square fp32 matmul (the ceiling).

Then questions per second by training forward pass (``train.forward``: the bridge, or ``direct``
from the weights) and, for a task with a shared prefix (mazes), with k questions per prefix
(``train.queries_per_prompt``), each at the preset's precision, beside the bridge.

On a GPU (``--device cuda``) the matmul peak is left out, and one more row times the step with the
batches drawn in place instead of built ahead in worker processes (:mod:`tinylens.train_data`).

    python benchmarks/train_speed.py [--task addition|maze] [--preset cpu] [--steps 60] [--k 4,8]
        [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import torch

from tinylens.config import RunConfig, make_run_config
from tinylens.evaluation import answer_loss
from tinylens.model import ModelConfig
from tinylens.store import Workspace
from tinylens.tasks import make_task
from tinylens.train import Trainer


def matmul_peak_gflops(sizes: tuple[int, ...] = (512, 1024, 2048), repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of an n×n @ n×n matmul over a few sizes."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def train_flops_per_token(cfg: ModelConfig) -> float:
    """≈ 3 × forward matmul FLOPs per token (backward costs twice the forward)."""
    d, h = cfg.d_model, cfg.n_heads * cfg.d_head
    assert cfg.n_ctx is not None and cfg.d_vocab is not None
    per_layer = 2 * (4 * d * h + 2 * d * cfg.d_mlp) + 2 * 2 * cfg.n_ctx * h  # weights + QK, AV
    return 3 * (cfg.n_layers * per_layer + 2 * d * cfg.d_vocab)


def time_steps(step: Callable[[], None], steps: int) -> float:
    for _ in range(5):  # warm-up
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return (time.perf_counter() - start) / steps


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="addition")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--k", default="4,8", help="questions per shared prefix to time (mazes)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()

    recipe = make_run_config(args.task, args.preset, overrides={"train": {"device": args.device}})
    # Like with like against the bare loop and the FLOP count: the bridge on ordinary sequences.
    # The preset's own training forward (direct, shared prefixes) is compared in questions/s below.
    ordinary = {"forward": "bridge", "queries_per_prompt": 1, "device": args.device}
    cfg = make_run_config(args.task, args.preset, overrides={"train": ordinary})
    other = "bf16" if cfg.train.precision == "fp32" else "fp32"
    other_cfg = make_run_config(
        args.task, args.preset, overrides={"train": {**ordinary, "precision": other}}
    )
    with tempfile.TemporaryDirectory() as tmp:
        run = Workspace(tmp).create_run("bench", cfg.to_dict(), kind="train")
        trainer = Trainer(run, cfg, progress=False)
        ours = time_steps(trainer.train_step, args.steps)
        trainer.close()
        other_run = Workspace(tmp).create_run("bench-other", other_cfg.to_dict(), kind="train")
        other_trainer = Trainer(other_run, other_cfg, progress=False)
        other_time = time_steps(other_trainer.train_step, args.steps)
        other_trainer.close()

        in_place = None
        if args.device != "cpu":  # anchor for the batches built ahead in worker processes
            in_place_run = Workspace(tmp).create_run("bench-in-place", cfg.to_dict(), kind="train")
            in_place_trainer = Trainer(in_place_run, cfg, progress=False, data_workers=0)
            in_place = time_steps(in_place_trainer.train_step, args.steps)

        # Anchor: the bare native module under a minimal loop, same batch size and loss.
        bare = trainer.model.original_model
        opt = torch.optim.AdamW(bare.parameters(), lr=1e-4)
        task, rng = trainer.task, torch.Generator().manual_seed(0)
        batch = task.sample(cfg.train.batch_size, rng, train=True).to(args.device)

        def bare_step() -> None:
            logits = bare(batch)
            loss = answer_loss(logits, batch, task).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        anchor = time_steps(bare_step, args.steps)
    peak = matmul_peak_gflops() if args.device == "cpu" else None

    tokens = cfg.train.batch_size * task.seq_len
    flops = train_flops_per_token(cfg.model) * tokens
    print(f"task {args.task}, preset {args.preset}: {cfg.model}")
    print("(bridge forward, one question per sequence)")
    print(f"batch {cfg.train.batch_size} × {task.seq_len} tokens, {torch.get_num_threads()} threads")
    print(f"{'':34}{'steps/s':>10}{'tokens/s':>12}{'GFLOP/s':>10}")
    rows = (
        (f"tinylens train_step ({cfg.train.precision})", ours),
        (f"tinylens train_step ({other})", other_time),
        ("bare module, minimal loop (fp32)", anchor),
    )
    if in_place is not None:
        rows += ((f"train_step, data in place ({cfg.train.precision})", in_place),)
    for label, t in rows:
        print(f"{label:34}{1 / t:10.1f}{tokens / t:12,.0f}{flops / t / 1e9:10.1f}")
    fp32_time, bf16_time = (ours, other_time) if other == "bf16" else (other_time, ours)
    print(f"ratio bf16 / fp32 steps/s:   {fp32_time / bf16_time:.2f}")
    print(f"ratio ours / bare loop:      {anchor / ours:.2f}  (bare loop is fp32)")
    if in_place is not None:
        print(f"ratio workers / in place:    {in_place / ours:.2f}  (data workers on the {args.device})")
    if peak is not None:
        print(f"{'fp32 matmul peak':34}{'':22}{peak:10.1f}")
        print(f"ratio ours / matmul peak:    {flops / ours / 1e9 / peak:.3f}")
    forward_variants(args, recipe)


def forward_variants(args: argparse.Namespace, cfg: RunConfig) -> None:
    """Questions/s of the bridge, the direct forward and shared prefixes, at one precision."""
    batch = cfg.train.batch_size
    variants: list[tuple[str, dict]] = [
        ("bridge forward", {"forward": "bridge", "queries_per_prompt": 1}),
        ("direct forward", {"forward": "direct", "queries_per_prompt": 1}),
    ]
    if make_task(args.task, cfg.task_options).shared_prefix_len is not None:
        for k in (int(v) for v in args.k.split(",")):
            size = max(batch, 16 * k)  # at least 16 prefixes per step
            size -= size % k
            label = f"shared prefix, k = {k}, batch {size}"
            variants.append((label, {"forward": "direct", "queries_per_prompt": k, "batch_size": size}))
    print(f"\ntraining forward ({cfg.train.precision}){'questions/s':>28}{'× bridge':>10}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, train_over) in enumerate(variants):
            over = {**cfg.to_dict()["train"], **train_over}
            variant = RunConfig.from_dict({**cfg.to_dict(), "train": over})
            run = Workspace(tmp).create_run(f"v{i}", variant.to_dict(), kind="train")
            variant_trainer = Trainer(run, variant, progress=False)
            t = time_steps(variant_trainer.train_step, args.steps)
            variant_trainer.close()
            rate = variant.train.batch_size / t
            base = base or rate
            print(f"{label:44}{rate:12,.0f}{rate / base:10.2f}")


if __name__ == "__main__":
    main()
