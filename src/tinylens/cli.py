"""The ``tinylens`` command line: train, resume, list, evaluate and query runs, run studies.

Exit codes: 0 done; 2 an error the user can fix (a bad option, config, run name, token or file),
printed as one line ``error: …`` on stderr with no traceback; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import json
import math
import re
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table
from typer._click import exceptions as click_errors  # Typer's own copy of click, not `click`

from tinylens import runs as runs_api
from tinylens.analysis import interpolate
from tinylens.cli_invert import invert_app
from tinylens.config import PRESETS, make_run_config, read_overrides
from tinylens.errors import Interrupted, TinylensError, TokenError
from tinylens.evaluation import EvalResult, evaluate_fresh, greedy_answer
from tinylens.model import load_pretrained
from tinylens.store import DEFAULT_WORKSPACE, Workspace, finite_values
from tinylens.studies import STUDIES, run_study
from tinylens.studies.regions import read_prompts, tokenize_prompts
from tinylens.studies.regions_analyses import BOUNDARY, SAME_REGION
from tinylens.sweep import SweepSpec, TrialResult, expand, read_spec, run_sweep, write_report
from tinylens.sweep.driver import TIME_METRICS
from tinylens.tasks import TASKS, Task

app = typer.Typer(
    name="tinylens",
    help="Train small transformers on algorithmic tasks and take them apart.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(invert_app, name="invert")
out = Console()
err = Console(stderr=True)

EXIT_USAGE = 2
"""Exit code of every error the user can fix."""
EXIT_INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT), as shells report a process killed by it."""
MAX_EVAL_QUESTIONS = 10**7
"""Most questions ``tinylens eval --n`` scores (in batches of :data:`EVAL_BATCH`)."""
MAX_MESSAGE = 1000
"""Longest error line printed; longer ones (a message quoting huge input) are cut."""


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
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="Delete the run's checkpoints, metrics and results, and train it from step 0.",
        ),
    ] = False,
) -> None:
    """Continue an interrupted or killed run from its last saved state (or start it over)."""
    result = runs_api.resume(Workspace(workspace), run, progress=progress, restart=restart)
    _report_training(result)
    out.print(result.run, highlight=False)


@app.command("runs")
def list_runs(workspace: WorkspaceOpt = DEFAULT_WORKSPACE, as_json: JsonOpt = False) -> None:
    """List the runs in the workspace."""
    infos = Workspace(workspace).runs()
    if as_json:
        print(_strict_json([info.__dict__ for info in infos]))
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
    if not 1 <= n <= MAX_EVAL_QUESTIONS:
        raise TinylensError(f"--n must be between 1 and {MAX_EVAL_QUESTIONS:_}, got {n}")
    trained = runs_api.load_trained(Workspace(workspace), run, checkpoint)
    fresh = evaluate_fresh(trained.model, trained.task, n, seed)
    result, generated = fresh.result, fresh.generation
    if as_json:
        payload = {"run": run, "step": trained.step, "seed": seed, **result.to_dict()}
        print(_strict_json({**payload, "generation": generated}))
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


def _prompt_line(task: Task, path: Path, index: int, text: str) -> torch.Tensor:
    """Prompt ``index`` of a prompt file (its line ``index + 1``: blank lines are refused before
    the last prompt) as the task's tokens, an error naming the line otherwise."""
    try:
        return task.parse_prompt(text)
    except TokenError as err:
        raise TokenError(f"prompt file {path}, line {index + 1}: {err}") from None


@app.command()
def regions(
    model: Annotated[
        str, typer.Argument(help="A run name, or a local Hugging Face checkpoint folder (e.g. GPT-2).")
    ],
    prompts: Annotated[
        Path,
        typer.Option(
            help="Text file, one prompt per line, all of one token length; consecutive lines are "
            "the pairs (A, B). For a run, each line is a prompt of its task."
        ),
    ],
    write_hook: Annotated[str, typer.Option(help="Where the path is written.")] = (
        "blocks.0.hook_resid_post"
    ),
    read_hook: Annotated[
        str | None, typer.Option(help="Where the output is read (default: after the final norm).")
    ] = None,
    steps: Annotated[int, typer.Option(help="α values from 0 to 1 (at least 2).")] = 11,
    mode: Annotated[str, typer.Option(help="linear, arc or slerp.")] = "linear",
    checkpoint: Annotated[int | None, typer.Option(help="Step of a run (default: the last).")] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    as_json: JsonOpt = False,
) -> None:
    """Stable regions of one model: interpolate between consecutive prompts' activations (last
    position) and print each pair's boundary sharpness (1 = a straight line; > 10 a boundary)."""
    texts = read_prompts(prompts)
    folder = Path(model)
    if (folder / "config.json").is_file():
        tokens = tokenize_prompts(folder, texts, prompts)
        lm = load_pretrained(folder)
    else:
        trained = runs_api.load_trained(Workspace(workspace), model, checkpoint)
        lm = trained.model
        tokens = torch.stack([_prompt_line(trained.task, prompts, i, t) for i, t in enumerate(texts)])
    curves = interpolate(
        lm,
        tokens[:-1],
        tokens[1:],
        write_hook=write_hook,
        read_hook=read_hook,
        steps=steps,
        mode=mode,  # type: ignore[arg-type]  # checked by interpolate, with a clear error
    )
    sharpness = [float(v) for v in curves.sharpness]
    summary = {
        "pairs": len(tokens) - 1,
        "dropped": curves.dropped,
        "median": float(torch.tensor(sharpness).median()) if sharpness else math.nan,
        "same_region": sum(v < SAME_REGION for v in sharpness),
        "boundary": sum(v > BOUNDARY for v in sharpness),
    }
    if as_json:
        print(
            _strict_json(
                {
                    **summary,
                    "write_hook": write_hook,
                    "read_hook": curves.read_hook,
                    "steps": steps,
                    "mode": mode,
                    "sharpness": sharpness,
                }
            )
        )
        return
    table = Table(
        "pairs",
        "dropped (d(1) ≈ 0)",
        "median sharpness",
        f"< {SAME_REGION} (one region)",
        f"> {BOUNDARY:g} (boundary)",
    )
    table.add_row(*(str(v) if not isinstance(v, float) else f"{v:.2f}" for v in summary.values()))
    out.print(f"{write_hook} → {curves.read_hook}, {mode} paths of {steps} steps")
    out.print(table)


_TAKERS = ", ".join(n for n, s in STUDIES.items() if s.takes_model)
_PROMPT_TAKERS = ", ".join(n for n, s in STUDIES.items() if s.takes_prompts)
_FAMILY_TAKERS = ", ".join(n for n, s in STUDIES.items() if s.takes_family)


@app.command()
def study(
    name: Annotated[
        str | None, typer.Argument(help=f"Study to run: {', '.join(STUDIES)}.", show_default=False)
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="quick (CPU, minutes; the default), paper (GPU-sized) or tiny (a smoke run)."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            help=f"{_TAKERS} only: a local Hugging Face checkpoint folder (e.g. GPT-2, with its "
            "tokenizer) to study instead of training a model."
        ),
    ] = None,
    prompts: Annotated[
        Path | None,
        typer.Option(
            help=f"{_PROMPT_TAKERS} only: a text file of prompts, one per line, for the --model "
            "checkpoint (each line tokenised by its tokenizer)."
        ),
    ] = None,
    sweep: Annotated[
        Path | None,
        typer.Option(
            help=f"{_FAMILY_TAKERS} only: a sweep spec whose trials are the model family to study "
            "(trained, or reused if the sweep ran them)."
        ),
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    list_: Annotated[
        bool, typer.Option("--list", help="List the studies, their presets and papers.")
    ] = False,
) -> None:
    """Run a study end to end (training its models if needed) and print its report's path."""
    if list_:
        _list_studies()
        return
    if name is None:
        raise TinylensError(
            f"name a study to run ({', '.join(STUDIES)}), or `tinylens study --list` to see them"
        )
    family = tuple(t.config for t in expand(read_spec(sweep))) if sweep is not None else None
    run = run_study(
        name,
        Workspace(workspace),
        preset,
        progress=progress,
        model=model,
        prompts=prompts,
        family=family,
    )
    out.print(str(run.report_path), highlight=False, soft_wrap=True)


def _list_studies() -> None:
    table = Table("study", "presets", "--model", "--prompts", "--sweep", "paper and question")
    for study_ in STUDIES.values():
        table.add_row(
            study_.name,
            ", ".join(study_.presets),
            "yes" if study_.takes_model else "",
            "yes" if study_.takes_prompts else "",
            "yes" if study_.takes_family else "",
            study_.summary,
        )
    out.print(table)


@app.command()
def sweep(
    spec: Annotated[Path, typer.Argument(help="The sweep's spec file (TOML; see the README).")],
    backend: Annotated[
        str, typer.Option(help="local: one trial after another here; ray: Ray tasks.")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster address (ray backend; default: start a local Ray)."),
    ] = None,
    cpus: Annotated[
        int | None, typer.Option(help="CPUs of the local Ray (ray backend; default: all).", min=1)
    ] = None,
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    report: Annotated[
        bool, typer.Option("--report", help="Also write report.html: a table and figures.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Train and measure every trial of a spec that is not done yet (a rerun trains nothing more),
    then print one row per trial."""
    for given, option in ((address, "--address"), (cpus, "--cpus")):
        if given is not None and backend != "ray":
            raise TinylensError(f"{option} is for the ray backend; add --backend ray")
    parsed = read_spec(spec)
    ws = Workspace(workspace)
    result = run_sweep(ws, parsed, backend=backend, address=address, num_cpus=cpus, progress=progress)
    report_path = write_report(result.run, parsed, result.trials) if report else None
    if as_json:
        print(_strict_json([t.to_dict() for t in result.trials]))
    else:
        _print_trials(parsed, result.trials)
        trained = sum(o.trained_steps for o in result.outcomes.values())
        err.print(
            f"{len(result.outcomes)} of {len(result.trials)} trials ran now ({trained} steps trained); "
            f"results in {result.run.path / 'results' / 'trials.json'}",
            highlight=False,
            soft_wrap=True,
        )
        if report_path is not None:
            out.print(str(report_path), highlight=False, soft_wrap=True)
    if result.failed:
        first = result.failed[0]
        raise TinylensError(
            f"{len(result.failed)} of {len(result.trials)} trials did not finish (run {first.run}: "
            f"{first.error or first.status}); fix the cause and run the sweep again: finished "
            "trials are kept"
        )


def _print_trials(spec: SweepSpec, trials: list[TrialResult]) -> None:
    metrics = [m for m in dict.fromkeys(k for t in trials for k in t.metrics) if m not in TIME_METRICS]
    table = Table("trial", *spec.axes, "status", *metrics, title=f"sweep {spec.name}")
    for t in trials:
        values = [
            f"{v:.4g}" if not math.isnan(v) else "-"
            for v in (t.metrics.get(m, math.nan) for m in metrics)
        ]
        table.add_row(str(t.trial), *(str(t.axes.get(a, "")) for a in spec.axes), t.status, *values)
    out.print(table, width=None if out.is_terminal else 240)  # a pipe or a log: do not squeeze


@app.command()
def explore(
    workspace: WorkspaceOpt = DEFAULT_WORKSPACE,
    port: Annotated[int, typer.Option(help="Port to serve on.", min=1, max=65535)] = 8765,
    host: Annotated[
        str | None,
        typer.Option(help="Address to bind (default 127.0.0.1: this machine only)."),
    ] = None,
) -> None:
    """Serve a local web app over the workspace (read-only): runs, curves, reports, live probing."""
    from tinylens import explorer  # noqa: PLC0415 (the web stack loads only for this command)

    chosen = host if host is not None else explorer.DEFAULT_HOST
    _check_port_free(chosen, port)
    err.print(f"tinylens explorer: http://{chosen}:{port}/  (Ctrl-C to stop)", highlight=False)
    explorer.serve(workspace, chosen, port)


def _check_port_free(host: str, port: int) -> None:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise TinylensError(
            f"cannot serve on {host}:{port}: {error.strerror or error}; pass another --port"
            + ("" if host == "127.0.0.1" else " or --host")
        ) from None


@app.command()
def reindex(workspace: WorkspaceOpt = DEFAULT_WORKSPACE) -> None:
    """Rebuild the run index (tinylens.db) from the run folders, e.g. after it was lost."""
    if not workspace.is_dir():
        raise TinylensError(f"no workspace folder {workspace}; nothing to index")
    names = Workspace(workspace).reindex()
    runs = "run" if len(names) == 1 else "runs"
    out.print(f"indexed {len(names)} {runs} in {workspace}", highlight=False, soft_wrap=True)


def _strict_json(obj: object) -> str:
    """Indented JSON that strict readers accept: NaN (an empty class's accuracy) becomes null."""

    return json.dumps(finite_values(obj), indent=2, allow_nan=False)


def _report_training(result: runs_api.TrainResult) -> None:
    """One line on stderr about a finished training; raises :class:`Interrupted` after Ctrl-C."""
    if result.status == "interrupted":
        raise Interrupted(
            f"interrupted at step {result.step}; continue with `tinylens resume {result.run}`"
        )
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


class _CtrlC:
    """The real process's SIGINT handler: Ctrl-C raises KeyboardInterrupt while a command runs and
    is ignored once it has returned, so a further Ctrl-C while the process reports and exits cannot
    change its exit code or print a traceback. A flag, not a handler swap: Python may run a pending
    handler between any two steps, including just before a swap."""

    accepted = True

    def handle(self, signum: int, frame: object) -> None:
        if self.accepted:
            raise KeyboardInterrupt


_ctrl_c = _CtrlC()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the command line ``argv`` (default: ``sys.argv[1:]``).

    Returns normally on success; otherwise exits with :data:`EXIT_USAGE` after a one-line
    ``error: …`` for anything the user can fix, or :data:`EXIT_INTERRUPTED` after Ctrl-C.
    """
    if argv is None:  # the real process (in-process callers, such as tests, keep their own)
        _ctrl_c.accepted = True
        signal.signal(signal.SIGINT, _ctrl_c.handle)
    try:
        code, message = _run(argv)
        _ctrl_c.accepted = False
    except KeyboardInterrupt:  # e.g. a second Ctrl-C while an error was being handled
        _ctrl_c.accepted = False
        code, message = EXIT_INTERRUPTED, "interrupted"
    if message:
        err.print(_one_line(message), highlight=False, markup=False, soft_wrap=True)
    if code:
        sys.exit(code)


def _run(argv: list[str] | None) -> tuple[int, str | None]:
    """Run the app; (exit code, message to print on stderr or None)."""
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        # standalone_mode=False: errors reach us as exceptions, and `Exit(code)` (Typer's answer to
        # --help, and to a KeyboardInterrupt inside a command: 130) comes back as the return value
        code = command.main(args=args, prog_name="tinylens", standalone_mode=False)
    except TinylensError as error:
        return EXIT_USAGE, f"error: {error}"
    except (Interrupted, typer.Abort, KeyboardInterrupt) as stop:
        return EXIT_INTERRUPTED, str(stop) if isinstance(stop, Interrupted) else "interrupted"
    except click_errors.NoArgsIsHelpError as error:  # plain `tinylens`: the help, as for --help
        out.print(error.format_message(), highlight=False, markup=False)
        return 0, None
    except typer.TyperException as error:  # bad option or value, missing argument, …
        return EXIT_USAGE, f"error: {_usage_message(error, args)}"
    if code == EXIT_INTERRUPTED:
        return EXIT_INTERRUPTED, "interrupted"
    return (code if isinstance(code, int) else 0), None


def _usage_message(error: typer.TyperException, args: list[str]) -> str:
    """Click's message, plus how to pass text that starts with '-' and where to find help."""
    message = error.format_message()
    if not isinstance(error, click_errors.UsageError):
        return message
    option = getattr(error, "option_name", "") or ""
    if isinstance(error, click_errors.NoSuchOption) and re.match(r"-[\d.+=]", option):
        # e.g. `predict RUN -1+2=`: a question starting with '-' reads as an option
        command = error.ctx.command_path if error.ctx is not None else "tinylens COMMAND"
        text = next((a for a in args if a.startswith(option)), option)
        example = text if len(text) <= 40 else option  # the whole argument, unless it is long
        return (
            f"{message}; to pass text that starts with '-', put it after `--`, "
            f"e.g. `{command} RUN -- {example}`"
        )
    if error.ctx is not None:
        message += f" (see `{error.ctx.command_path} --help`)"
    return message


def _one_line(message: str) -> str:
    """``message`` on one line of at most :data:`MAX_MESSAGE` characters."""
    line = re.sub(r"\s*[\r\n]+\s*", " ", message.strip())
    if len(line) > MAX_MESSAGE:
        line = f"{line[:MAX_MESSAGE]}… ({len(line)} characters)"
    return line


if __name__ == "__main__":
    main()
