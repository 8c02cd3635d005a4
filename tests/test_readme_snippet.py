"""The README's "Use it on your own model" block runs as written, offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(
    r"<!-- readme-snippet: own-model -->\s*```python\n(?P<code>.*?)```\s*<!-- /readme-snippet -->",
    re.DOTALL,
)


def snippet() -> str:
    match = BLOCK.search(README.read_text(encoding="utf-8"))
    assert match, "README.md has no own-model snippet between its markers"
    return match["code"]


def test_the_own_model_snippet_runs_offline(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", snippet()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "torch.Size([2, 12, 4])"  # [layer, pos, head]
    assert lines[1].startswith("[(") and lines[1].count("(") == 5
    assert lines[2] == "torch.Size([8, 11]) torch.Size([8])"  # every pair kept: d(1) > 0
    assert lines[3] == "torch.Size([8])"
    assert lines[4] == "torch.Size([9, 9, 3])"
    assert (tmp_path / "tiny-gpt2" / "model.safetensors").is_file()
