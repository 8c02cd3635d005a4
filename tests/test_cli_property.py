"""Property-based tests of the command line: whatever the arguments, config file or damage to the
workspace, ``tinylens`` exits 0 or 2 (130 is kept for Ctrl-C), never prints a traceback, and leaves
the workspace as it was whenever it fails.

Each example runs ``cli.main`` in-process on a fresh copy of one small trained workspace.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import io
import json
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinylens.cli import main

RUN = "r"
SETTINGS = settings(
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure here is reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace holding one run ``r``: the tiny preset, 20 steps."""
    root = tmp_path_factory.mktemp("pristine")
    code, _, err = cli("train", "addition", "--preset", "tiny", "--steps", "20", "--name", RUN,
                       "--no-progress", "-w", str(root))  # fmt: skip
    assert code == 0, err
    # the command's index connection closes when collected: do it now, not during a later copy
    # (closing checkpoints the -wal file into tinylens.db and deletes it under copytree's feet)
    gc.collect()
    assert not (root / "tinylens.db-wal").exists()
    return root


def cli(*argv: str) -> tuple[int, str, str]:
    """Run ``tinylens argv`` in-process: (exit code, stdout, stderr)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main(list(argv))
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, stdout.getvalue(), stderr.getvalue()


@contextlib.contextmanager
def workspace_copy(pristine: Path) -> Iterator[Path]:
    """A fresh copy of the pristine workspace, also the working directory (relative paths that a
    command may create land there, not in the repository)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        shutil.copytree(pristine, root)
        with contextlib.chdir(tmp):
            yield root


def state(root: Path) -> dict[str, object]:
    """Every file's bytes, and the index's rows read without writing (to prove a failed command
    changed nothing). The database files themselves are left out: opening SQLite may touch them."""
    files: dict[str, object] = {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith("tinylens.db")
    }
    db = root / "tinylens.db"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            files["index"] = con.execute("SELECT * FROM runs ORDER BY name").fetchall()
            files["metrics"] = con.execute("SELECT COUNT(*) FROM metrics").fetchall()
    except sqlite3.Error as err:
        files["index"] = f"unreadable: {type(err).__name__}"
    return files


def check(code: int, out: str, err: str, before: dict[str, object], root: Path) -> None:
    """The contract: exit 0 or 2; no traceback; on error one line and no change on disk."""
    assert code in (0, 2), (code, out[-2000:], err[-2000:])
    assert "Traceback" not in out + err, err[-3000:]
    if code == 2:
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err[-2000:]
        assert state(root) == before, err


# --- arguments ---------------------------------------------------------------------------------


def _not_midsize(text: str) -> bool:
    """False for text that reads as a number a valid option could take and that would be slow
    (``--steps 5000``, ``--n 300000``): drawn values are small, or refused as too large."""
    try:
        return not 3 < abs(int(text)) < 10**8
    except ValueError:
        return True


JUNK_WORDS = ["", " ", "-", "--", "-1", "-1+2=", "1e20", "1.5", "nan", "inf", "0x10", "é", "１２",
              "\x00", "12345+67890=", "1+1=", "99999999999999999999", "-0", "%s", "{run}", "../x",
              "/", "tinylens.db", "r\n", "a" * 300, "9" * 500 + "+1=", "--bogus", "-x", "--help",
              "addition", "maze", "seqcont", "tiny", "cpu", "huge", RUN]  # fmt: skip
JUNK = st.one_of(
    st.text(max_size=12).filter(_not_midsize),
    st.sampled_from(JUNK_WORDS),
    st.one_of(st.integers(-(10**30), -1), st.integers(10**8, 10**30)).map(str),
)
"""Anything a user might type: text, numbers, unicode, option-like and over-long strings."""
SMALL = st.integers(-3, 3).map(str)
"""Values a valid option may take here: small, so that a command that runs is quick."""

NUMBER_OPTIONS = ["--steps", "--checkpoint", "--seed", "--n"]
NAME_OPTIONS = ["--preset", "--name", "--config", "--model"]
FLAGS = ["--json", "--no-progress", "--progress"]
OPTIONS = {
    "train": ["--preset", "--steps", "--seed", "--name", "--config", "--progress", "--no-progress"],
    "resume": ["--progress", "--no-progress"],
    "runs": ["--json"],
    "eval": ["--n", "--seed", "--checkpoint", "--json"],
    "predict": ["--checkpoint"],
    "study": ["--preset", "--model", "--progress", "--no-progress"],
}
"""Each command's own options (drawn most often), besides the options of all the others."""


@st.composite
def options(draw: st.DrawFn, command: str) -> list[str]:
    own = OPTIONS.get(command, [])
    name = draw(st.sampled_from(own) if own and draw(st.integers(0, 4)) else st.sampled_from(
        NUMBER_OPTIONS + NAME_OPTIONS + FLAGS))  # fmt: skip
    if name in FLAGS:
        return [name]
    if name in NUMBER_OPTIONS:
        return [name, draw(st.one_of(SMALL, JUNK))]
    return [name, draw(st.one_of(st.just("tiny"), JUNK))]


FIRST_ARGUMENT = {
    "train": st.sampled_from(["addition", "maze", "seqcont"]),
    "resume": st.just(RUN),
    "eval": st.just(RUN),
    "predict": st.just(RUN),
}
QUESTIONS = st.sampled_from(["1+1=", "12345+67890=", "-1+2=", "1+1", "1234567+1=", "0+0="])


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    """``COMMAND -w WS ARGS…``: often a valid start, then drawn arguments and options."""
    command = draw(st.sampled_from(["train", "resume", "runs", "eval", "predict", "study",
                                    "reindex", "Train", "", "frobnicate"]))  # fmt: skip
    positional = []
    if command in FIRST_ARGUMENT and draw(st.booleans()):
        positional.append(draw(FIRST_ARGUMENT[command]))
        if command == "predict":
            positional.append(draw(st.one_of(QUESTIONS, JUNK)))
    positional += draw(st.lists(JUNK, max_size=2))
    drawn = draw(st.lists(options(command), max_size=3))
    rest = positional[1:] + [token for option in drawn for token in option]
    draw(st.randoms()).shuffle(rest)
    tokens = positional[:1] + rest
    if command == "train":  # keep any training short: the last --steps wins
        tokens += ["--steps", draw(st.sampled_from(["1", "2", "0", "abc", str(10**20)]))]
    if command == "study":  # only ever a wrong study or preset: a real one trains for minutes
        tokens = [draw(st.sampled_from(["nope", "addition", ""])), "--preset", "junk", *tokens]
    # the workspace is always the copy: no drawn option may point elsewhere
    tokens = [t for t in tokens if not t.startswith(("-w", "--workspace", "--w"))]
    return [command, "-w", "WS", *tokens] if command else tokens


@settings(SETTINGS, max_examples=60)
@given(argv=command_lines())
def test_any_command_line(pristine: Path, argv: list[str]) -> None:
    with workspace_copy(pristine) as root:
        argv = [str(root) if a == "WS" else a for a in argv]
        before = state(root)
        check(*cli(*argv), before, root)


# --- config files ------------------------------------------------------------------------------

FIELDS = {
    "task": ["n_digits", "enrich_sum9", "grid", "n_items", "families", "bogus"],
    "model": ["n_layers", "n_heads", "d_model", "d_head", "d_mlp", "act_fn", "normalization_type",
              "positional_embedding", "d_vocab", "n_ctx", "bogus"],
    "train": ["steps", "batch_size", "lr", "weight_decay", "beta1", "beta2", "warmup_steps",
              "schedule", "grad_clip", "log_every", "eval_every", "eval_size", "eval_seed",
              "save_every", "n_checkpoints", "precision", "bogus"],
}  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(
        [
            0,
            1,
            2,
            -1,
            True,
            False,
            0.5,
            1e30,
            -1e30,
            1e-3,
            10**20,
            -(10**20),
            "relu",
            "LN",
            "rotary",
            "cosine",
            "bf16",
            "fp16",
            "",
            "abc",
            "x" * 200,
        ]
    ),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(0, 2), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(0, 2), max_size=2),
)
"""Field values: every valid number here is small, so a config that passes trains in a second."""


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"inf": "inf", "-inf": "-inf", "nan": "nan"}.get(str(value), repr(value))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # strings and integers


@st.composite
def config_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """(file suffix, bytes): TOML or JSON of drawn sections and fields, or raw bytes."""
    sections = {
        section: draw(st.dictionaries(st.sampled_from(names), VALUES, max_size=3))
        for section, names in draw(
            st.lists(st.sampled_from([*FIELDS.items(), *FIELDS.items(), ("junk", ["x"])]), max_size=3)
        )
    }
    kind = draw(st.sampled_from(["toml", "toml", "toml", "json", "json", "bytes", "bad-utf8"]))
    if kind == "json":
        return ".json", json.dumps(sections).encode()
    if kind == "bytes":
        return draw(st.sampled_from([".toml", ".json"])), draw(st.binary(max_size=64))
    toml = "".join(
        f"[{section}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in fields.items())
        for section, fields in sections.items()
    )
    if kind == "bad-utf8":
        return ".toml", toml.encode() + b"# \xff\xfe\n"
    return ".toml", toml.encode()


@settings(SETTINGS, max_examples=40)
@given(config=config_files(), task=st.sampled_from(["addition", "maze", "seqcont"]))
def test_any_config_file(pristine: Path, config: tuple[str, bytes], task: str) -> None:
    suffix, content = config
    with workspace_copy(pristine) as root:
        path = root.parent / f"c{suffix}"
        path.write_bytes(content)
        before = state(root)
        result = cli("train", task, "--preset", "tiny", "--steps", "2", "--config", str(path),
                     "--name", "cfg", "--no-progress", "-w", str(root))  # fmt: skip
        check(*result, before, root)


# --- damaged workspaces ------------------------------------------------------------------------

TARGETS = ["config.json", "checkpoints/latest", "checkpoints/step-last", "checkpoints/step-0",
           "status.json", "metrics.jsonl", "results", "tinylens.db"]  # fmt: skip
COMMANDS = [["runs"], ["runs", "--json"], ["eval", RUN, "--n", "16"], ["predict", RUN, "1+1="],
            ["eval", RUN, "--n", "8", "--checkpoint", "0"], ["resume", RUN, "--no-progress"],
            ["train", "addition", "--preset", "tiny", "--steps", "20", "--name", RUN,
             "--no-progress"], ["reindex"]]  # fmt: skip


def _target_files(root: Path, target: str) -> list[Path]:
    run = root / RUN
    checkpoints = sorted(
        (run / "checkpoints").glob("step-*.safetensors"), key=lambda p: int(p.stem.split("-")[1])
    )
    found = {
        "config.json": [run / "config.json"],
        "checkpoints/latest": [p for p in run.rglob("latest*") if p.is_file()],
        "checkpoints/step-last": checkpoints[-1:],
        "checkpoints/step-0": checkpoints[:1],
        "status.json": [run / "status.json"],
        "metrics.jsonl": [run / "metrics.jsonl"],
        "results": sorted((run / "results").glob("*")) if (run / "results").is_dir() else [],
        "tinylens.db": [root / "tinylens.db"],
    }[target]
    return [p for p in found if p.is_file()]


@st.composite
def damage(draw: st.DrawFn) -> tuple[str, str, int, bytes]:
    """(target, how, position as a fraction in 1/1000, bytes to write)."""
    how = draw(st.sampled_from(["truncate", "garble", "delete", "empty", "junk-json", "zeros"]))
    return (
        draw(st.sampled_from(TARGETS)),
        how,
        draw(st.integers(0, 999)),
        draw(st.binary(min_size=1, max_size=64)),
    )


def _apply(path: Path, how: str, where: int, noise: bytes) -> None:
    data = path.read_bytes()
    at = len(data) * where // 1000
    if how == "truncate":
        path.write_bytes(data[:at])
    elif how == "garble":
        path.write_bytes(data[:at] + noise + data[at + len(noise) :])
    elif how == "delete":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "junk-json":
        path.write_text(json.dumps(noise.decode("latin-1")))
    else:
        path.write_bytes(data[:at] + bytes(min(4096, len(data) - at)) + data[at + 4096 :])


@settings(SETTINGS, max_examples=40)
@given(damages=st.lists(damage(), min_size=1, max_size=2), command=st.sampled_from(COMMANDS))
def test_any_damaged_workspace(
    pristine: Path, damages: list[tuple[str, str, int, bytes]], command: list[str]
) -> None:
    with workspace_copy(pristine) as root:
        for target, how, where, noise in damages:
            for path in _target_files(root, target):
                _apply(path, how, where, noise)
        before = state(root)
        check(*cli(*command, "-w", str(root)), before, root)
