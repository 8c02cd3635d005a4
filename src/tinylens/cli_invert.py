"""``tinylens invert``: train an InversionView decoder for any run, and read an activation with it.

    tinylens invert train RUN [--sites L0.head0,L1.resid_post] [--positions -3,-2] [--steps N]
    tinylens invert sample RUN TEXT --site S [--position P] [--epsilon 0.1]

Errors are :class:`~tinylens.errors.TinylensError`; the main command line turns them into one line
and exit code 2.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from tinylens import runs as runs_api
from tinylens.analysis.inversion import EPSILON, SETTINGS, check_epsilon, invert, parse_site
from tinylens.analysis.inversion import site_activations as read_site
from tinylens.config import MAX_SEED, derive_seed
from tinylens.decoder_runs import (
    DecoderTrainConfig,
    allowed_positions,
    decoder_run_config,
    load_decoder,
    train_decoder,
)
from tinylens.errors import ConfigError, Interrupted
from tinylens.store import DEFAULT_WORKSPACE, Workspace

invert_app = typer.Typer(
    help="Train an InversionView decoder for a run, and read activations with it.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)

WorkspaceOpt = Annotated[
    Path, typer.Option("--workspace", "-w", help="Folder holding the runs and tinylens.db.")
]


@invert_app.command("train")
def train_command(
    run: Annotated[str, typer.Argument(help="The trained run whose activations are read.")],
    sites: Annotated[
        str | None,
        typer.Option(help="Comma-separated sites, e.g. L0.head0,L1.resid_post (default: all)."),
    ] = None,
    positions: Annotated[
        str | None,
        typer.Option(help="Comma-separated positions to read, negative from the end (default: all)."),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps (default 3000).")] = None,
    d_model: Annotated[int, typer.Option(help="The decoder's width.")] = 128,
    batch_size: Annotated[int, typer.Option(help="Training pairs per step.")] = 256,
    lr: Annotated[float, typer.Option(help="Peak learning rate (warm-up, then cosine).")] = 2e-3,
    checkpoint: Annotated[int | None, typer.Option(help="The run's step (default: the last).")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the decoder and its training pairs.")] = 0,
    name: Annotated[
        str | None, typer.Option(help="Decoder run name (default: from the config).")
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="Delete the decoder run's checkpoints, metrics and results, and train it from 0.",
        ),
    ] = False,
) -> None:
    """Train (or resume) a decoder for RUN and print its run name and per-site share inside ε."""
    ws = Workspace(workspace)
    probed = runs_api.load_trained(ws, run, checkpoint)
    chosen = {"seed": seed, "batch_size": batch_size, "lr": lr}
    train = DecoderTrainConfig(**chosen, **({} if steps is None else {"steps": steps}))
    cfg = decoder_run_config(
        probed,
        sites=None if sites is None else _split(sites, "--sites"),
        positions=None if positions is None else tuple(_ints(positions, "--positions")),
        train=train,
        d_model=d_model,
    )
    result = train_decoder(ws, probed, cfg, name, progress=progress, restart=restart)
    if result.status == "interrupted":
        raise Interrupted(
            f"interrupted at step {result.step}; run the same `tinylens invert train` again to continue"
        )
    table = Table("site", "inside ε", title=f"evaluation queries, ε = {cfg.train.epsilon:g}")
    for site, share in result.inside.items():
        table.add_row(site, "-" if math.isnan(share) else f"{share:.0%}")
    err.print(table)
    err.print(f"trained {result.run} for {result.step} steps in {result.elapsed_s:.0f} s")
    out.print(result.run, highlight=False)


@invert_app.command("sample")
def sample_command(
    run: Annotated[str, typer.Argument(help="The trained run whose activation is read.")],
    text: Annotated[str, typer.Argument(help="A whole input of the run's task, e.g. vvzcc|v:3.")],
    site: Annotated[str, typer.Option(help="Where to read the activation, e.g. L1.resid_post.")],
    position: Annotated[
        int | None,
        typer.Option(
            help="Position to read (negative from the end; default: the last the decoder knows)."
        ),
    ] = None,
    epsilon: Annotated[float, typer.Option(help="The preimage's threshold on D.")] = EPSILON,
    per_setting: Annotated[int, typer.Option(help="Samples per temperature/noise setting.")] = 64,
    top: Annotated[int, typer.Option(help="Samples to print.")] = 20,
    decoder: Annotated[str | None, typer.Option(help="Decoder run (default: the run's newest).")] = None,
    checkpoint: Annotated[int | None, typer.Option(help="The run's step (default: the last).")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the sampling.")] = 0,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Invert TEXT's activation at SITE: samples nearest first, with D and whether inside ε."""
    epsilon = check_epsilon(epsilon)
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"--seed must be an integer in 0–{MAX_SEED}, got {seed}")
    if not 1 <= per_setting <= 4096 or top < 1:
        raise ConfigError("--per-setting must be 1–4096 and --top at least 1")
    ws = Workspace(workspace)
    probed = runs_api.load_trained(ws, run, checkpoint)
    tokens = probed.task.encode(text)[None]  # the user's text is checked first
    if tokens.shape[1] != probed.task.seq_len:
        raise ConfigError(
            f"{text!r} encodes to {tokens.shape[1]} tokens; the task's inputs have "
            f"{probed.task.seq_len}: give a whole input, answer included"
        )
    trained = load_decoder(ws, probed, decoder)
    index = trained.site_index(site)
    probe_site = parse_site(site, probed.model)
    cfg = trained.config
    seq_len = tokens.shape[1]
    known = [p for p in range(seq_len) if bool(allowed_positions(cfg, tokens)[0, p])]
    in_range = position is None or -seq_len <= position < seq_len
    at = known[-1] if position is None else position % seq_len
    if not in_range or at not in known:
        raise ConfigError(
            f"position {position} is not one the decoder was trained on; it reads "
            + ("every position" if len(known) == seq_len else f"positions {known}")
        )
    query = read_site(probed.model, tokens, probe_site)[0, at].float()
    if float(query.norm()) == 0.0:
        raise ConfigError(f"the activation at {site}, position {at} is all zeros: nothing to invert")
    samples = invert(
        probed.model,
        trained.decoder,
        query,
        probe_site,
        index,
        torch.Generator().manual_seed(derive_seed(seed, "invert-sample")),
        per_setting=per_setting,
        settings=SETTINGS,
        epsilon=epsilon,
        allowed=lambda t: allowed_positions(cfg, t),
    )
    rows = [
        {
            "text": probed.task.decode(samples.tokens[i]),
            "distance": float(samples.distances[i]),
            "inside": bool(samples.inside[i]),
            "count": int(samples.counts[i]),
        }
        for i in range(min(top, len(samples.distances)))
    ]
    summary = {
        "query": text,
        "site": site,
        "position": at,
        "epsilon": epsilon,
        "decoder": trained.run.name,
        "written": int(samples.counts.sum()),
        "distinct": len(samples.distances),
        "share_inside": samples.share_inside,
        "samples": rows,
    }
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table("D", "inside ε", "×", "sample", title=f"{text} at {site}, position {at}")
    for row in rows:
        mark = "[green]yes[/]" if row["inside"] else "no"
        table.add_row(f"{row['distance']:.3f}", mark, str(row["count"]), row["text"])
    out.print(table)
    out.print(
        f"{summary['written']} written, {summary['distinct']} distinct, "
        f"{samples.share_inside:.0%} inside ε = {epsilon:g} (decoder {trained.run.name})",
        highlight=False,
    )


def _split(value: str, option: str) -> list[str]:
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"{option} needs at least one comma-separated name")
    return parts


def _ints(value: str, option: str) -> list[int]:
    try:
        return [int(p) for p in _split(value, option)]
    except ValueError:
        raise ConfigError(f"{option} takes comma-separated integers, got {value!r}") from None
