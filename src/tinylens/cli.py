"""The ``tinylens`` command line: train, resume, list, evaluate and query runs.

Errors a user can cause print one line (``error: …``) to stderr and exit with code 2, no traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import click
import torch
import typer
from rich.console import Console
from rich.table import Table

from tinylens import runs as runs_api
from tinylens.config import PRESETS, derive_seed, make_run_config, read_overrides
from tinylens.errors import TinylensError
from tinylens.evaluation import EvalResult, evaluate, greedy_answer
from tinylens.store import DEFAULT_WORKSPACE, Workspace
from tinylens.studies import run_study
from tinylens.tasks import TASKS

app = typer.Typer(
    name="tinylens",
    help="Train small transformers on algorithmic tasks and take them apart.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

WorkspaceOpt = Annotated[
    Path, typer.Option("--workspace", "-w", help="Folder holding the runs and tinylens.db.")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@app.command()
def train(
    task: Annotated[str, typer.Argument(help=f"Task to train on: {', '.join(TASKS)}.")],
    preset: Annotated[str, typer.Option(help=f"Model + recipe: {', '.join(PRESETS)}.")] = "cpu",
    steps: Annotated[int | None, typer.Option(help="Override the preset's step count.")] = None,
    seed: Annotated[int, typer.Option(help="Seeds the weights and the data stream.")] = 0,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    name: Annotated[str | None, typer.Option(help="Run name (default: from the config).")] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="TOML/JSON file overriding fields by section: task, model, train."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a model (or resume the run with the same config) and print the run's name."""
    overrides = read_overrides(config) if config is not None else None
    cfg = make_run_config(task, preset, seed=seed, steps=steps, overrides=overrides)
    result = runs_api.train(Workspace(workspace), cfg, name, progress=progress)
    _report_training(result)
    out.print(result.run, highlight=False)


@app.command()
def resume(
    run: Annotated[str, typer.Argument(help="Name of the run to continue.")],
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Continue an interrupted or killed run from its last saved state."""
    result = runs_api.resume(Workspace(workspace), run, progress=progress)
    _report_training(result)
    out.print(result.run, highlight=False)


@app.command("runs")
def list_runs(workspace: WorkspaceOpt = DEFAULT_WORKSPACE, as_json: JsonOpt = False) -> None:
    """List the runs in the workspace."""
    infos = Workspace(workspace).runs()
    if as_json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return
    table = Table("name", "kind", "status", "step")
    for info in infos:
        table.add_row(info.name, info.kind, info.status, str(info.step))
    out.print(table)


@app.command("eval")
def eval_run(
    run: Annotated[str, typer.Argument(help="Run to evaluate.")],
    n: Annotated[int, typer.Option(help="Fresh random questions to score.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the fresh questions.")] = 0,
    checkpoint: Annotated[int | None, typer.Option(help="Step (default: the last).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    as_json: JsonOpt = False,
) -> None:
    """Exact-match accuracy on fresh questions: overall, per answer digit and per class."""
    if n < 1:
        raise TinylensError(f"--n must be at least 1, got {n}")
    trained = runs_api.load_trained(Workspace(workspace), run, checkpoint)
    rng = torch.Generator().manual_seed(derive_seed(seed, "cli-eval"))
    tokens = trained.task.sample(n, rng)
    result = evaluate(trained.model, trained.task, tokens)
    generated: dict[str, float] = {}
    if trained.task.generation_metric_names:  # decode for real: judge what the model writes
        prompt = tokens[:, : trained.task.prompt_len]
        answer = greedy_answer(trained.model, trained.task, prompt)
        generated = trained.task.generation_metrics(prompt, answer)
    if as_json:
        payload = {"run": run, "step": trained.step, "seed": seed, **result.to_dict()}
        print(json.dumps({**payload, "generation": generated}, indent=2))
        return
    _print_eval(run, trained.step, result)
    for name, value in generated.items():
        out.print(f"{name.replace('_', ' ')} (greedy decoding): {value:.2%}", highlight=False)


@app.command()
def predict(
    run: Annotated[str, typer.Argument(help="Run whose model answers.")],
    text: Annotated[str, typer.Argument(help="A question, e.g. 12345+67890=")],
    checkpoint: Annotated[int | None, typer.Option(help="Step (default: the last).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
) -> None:
    """Print the model's answer to one question, and the true answer."""
    trained = runs_api.load_trained(Workspace(workspace), run, checkpoint)
    task = trained.task
    prompt = task.parse_prompt(text)[None]  # [1, prompt]
    answer = greedy_answer(trained.model, task, prompt)[0]
    truth = task.solve(prompt)[0, task.prompt_len :]
    verdict = "[green]correct[/]" if torch.equal(answer, truth) else "[red]wrong[/]"
    # decode whole sequences: a task's text format may put separators between prompt and answer
    model_text = task.decode(torch.cat([prompt[0], answer]))
    true_text = task.decode(torch.cat([prompt[0], truth]))
    out.print(f"{model_text}  model", highlight=False, soft_wrap=True)
    out.print(f"{true_text}  true  {verdict}", highlight=False, soft_wrap=True)


@app.command()
def study(
    name: Annotated[str, typer.Argument(help="Study to run: addition, maze, seqcont.")],
    preset: Annotated[
        str, typer.Option(help="quick (CPU, minutes), paper (GPU-sized) or tiny (a smoke run).")
    ] = "quick",
    model: Annotated[
        Path | None,
        typer.Option(
            help="seqcont only: a local Hugging Face checkpoint folder (e.g. GPT-2, with its "
            "tokenizer) to study instead of training a model."
        ),
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Run a study end to end (training its models if needed) and print its report's path."""
    run = run_study(name, Workspace(workspace), preset, progress=progress, model=model)
    out.print(str(run.report_path), highlight=False, soft_wrap=True)


def _report_training(result: runs_api.TrainResult) -> None:
    if result.status == "interrupted":
        err.print(f"interrupted at step {result.step}; continue with `tinylens resume {result.run}`")
        return
    ev = result.final_eval
    acc = f", held-out exact match {ev.exact:.2%}" if ev is not None else ""
    err.print(f"trained {result.run} for {result.step} steps in {result.elapsed_s:.0f} s{acc}")


def _print_eval(run: str, step: int, result: EvalResult) -> None:
    out.print(f"[bold]{run}[/] at step {step}: {result.n} fresh questions", highlight=False)
    out.print(f"exact match {result.exact:.4%}   loss {result.loss:.4g}", highlight=False)
    table = Table("answer", "accuracy", "loss", "count", title="per answer position (teacher-forced)")
    for name, score in result.positions.items():
        acc = f"{score.acc:.4%}" if score.count else "-"  # a slot no question uses (short paths)
        loss = f"{score.loss:.4g}" if score.count else "-"
        table.add_row(name, acc, loss, str(score.count))
    out.print(table)
    if result.question_groups:
        table = Table("class", "questions", "exact match", "loss", title="per question class")
        for name, score in result.question_groups.items():
            acc = f"{score.acc:.4%}" if score.count else "-"
            loss = f"{score.loss:.4g}" if score.count else "-"
            table.add_row(name, str(score.count), acc, loss)
        out.print(table)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning user errors into one line and exit code 2."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="tinylens", standalone_mode=False)
    except TinylensError as error:
        err.print(f"error: {error}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print("aborted")
        sys.exit(130)
    except click.ClickException as error:  # usage errors: bad option, missing argument
        error.show()
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
