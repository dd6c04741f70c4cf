"""The documentation: the site builds strictly (links, anchors, API reference), and every example block marked
runnable runs as written.

A block is runnable when the line before its fence is ``<!-- runnable -->`` (run as shown) or
``<!-- runnable: tiny -->`` (``scripts/train.py`` on the synthetic dataset at 64 px for 2 iterations: the keys of
``TINY`` replace the command's own values or are added; docs/getting-started.md, "Runnable examples", says so to
readers). A block whose lines start with ``$ `` is a transcript: each command's output must equal the lines below
it, where a line ``...`` stands for any number of lines the page leaves out. Commands run in a temporary folder
(relative paths land there) with the repository's scripts.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pytest

from tests.helpers import REPO, needed

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^<!-- runnable(?:: (?P<mode>\w+))? -->\n```[^\n]*\n(?P<body>.*?)^```", re.M | re.S)
TINY = {"scripts/train.py": {"train.iters": "2", "train.eval_every": "2", "train.ckpt_every": "2",
                             "train.crop_size": "64", "train.batch_size": "2", "train.num_workers": "0",
                             "dataset.image_size": "64", "dataset.num_train": "8", "dataset.num_val": "3",
                             "device": "cpu"}}


def runnable_blocks():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 2
            yield pytest.param(match.group("mode"), match.group("body"), id=f"{page.name}:{line}")


def commands(body: str) -> List[Tuple[str, Optional[str]]]:
    """``(command, expected output or None)`` in order: a transcript's ``$`` lines with the lines under each, or a
    script's lines (``\\`` continuations joined, comments and blank lines dropped)."""
    if body.startswith("$ "):
        parts = re.split(r"^\$ ", body, flags=re.M)[1:]
        return [(part.split("\n", 1)[0], part.split("\n", 1)[1] if "\n" in part else "") for part in parts]
    joined = body.replace("\\\n", " ")
    return [(line, None) for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def transcript_matches(got: List[str], expected: List[str]) -> bool:
    """``got`` equals ``expected``, where each ``...`` line of ``expected`` stands for any lines (none included)."""
    pieces, at = [], []
    for line in expected:
        if line == "...":
            pieces.append(at)
            at = []
        else:
            at.append(line)
    pieces.append(at)
    if len(pieces) == 1:
        return got == expected
    first, *middle, last = pieces
    if got[:len(first)] != first or (last and got[-len(last):] != last) or len(got) < len(first) + len(last):
        return False
    position, end = len(first), len(got) - len(last)
    for piece in middle:
        found = next((i for i in range(position, end - len(piece) + 1) if got[i:i + len(piece)] == piece), None)
        if found is None:
            return False
        position = found + len(piece)
    return True


def substituted(args: List[str], values: dict) -> List[str]:
    keys = {arg.split("=", 1)[0] for arg in args if "=" in arg}
    replaced = [f"{arg.split('=', 1)[0]}={values[arg.split('=', 1)[0]]}"
                if "=" in arg and arg.split("=", 1)[0] in values else arg for arg in args]
    return replaced + [f"{key}={value}" for key, value in values.items() if key not in keys]


def run(command: str, mode: Optional[str], cwd: Path) -> subprocess.CompletedProcess:
    tokens = shlex.split(command, comments=True)
    assert tokens[:1] == ["python"] and tokens[1].startswith("scripts/"), f"not a script command: {command}"
    script, args = tokens[1], tokens[2:]
    if mode == "tiny":
        args = substituted(args, TINY.get(script, {}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "SEG_CACHE": str(cwd / "cache")}
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("mode,body", list(runnable_blocks()))
def test_runnable_block(mode, body, tmp_path):
    assert mode in (None, "tiny"), f"unknown runnable mode {mode!r}"
    (tmp_path / "docs").mkdir()  # transcripts that write a figure next to the page
    for command, expected in commands(body):
        result = run(command, mode, tmp_path)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        if expected is not None:
            got = [line.rstrip() for line in result.stdout.strip("\n").splitlines()]
            assert transcript_matches(got, [line.rstrip() for line in expected.strip("\n").splitlines()]), (
                f"{command}: the page shows\n{expected}\nthe command printed\n{result.stdout}")


def test_some_blocks_are_runnable():
    """The marker is spelled right somewhere: a typo would silently leave every example untested."""
    assert len(list(runnable_blocks())) >= 5


def test_transcript_elision():
    assert transcript_matches(["a", "x", "y", "b"], ["a", "...", "b"])
    assert transcript_matches(["a", "b"], ["a", "...", "b"])
    assert not transcript_matches(["a", "x"], ["a", "...", "b"])
    assert not transcript_matches(["a", "b", "c"], ["a", "b"])
    assert transcript_matches(["a", "x", "m", "y", "b"], ["a", "...", "m", "...", "b"])
    assert not transcript_matches(["a", "x", "b"], ["a", "...", "m", "...", "b"])


def test_substitution_replaces_and_adds():
    args = substituted(["backbone=resnet50", "train.iters=600"], {"train.iters": "2", "device": "cpu"})
    assert args == ["backbone=resnet50", "train.iters=2", "device=cpu"]


def test_site_builds_strictly(tmp_path):
    needed("mkdocs")
    needed("material")
    needed("mkdocstrings_handlers.python")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(REPO / "mkdocs.yml"),
                             "-d", str(tmp_path / "site")], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-5000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert "build_model" in api and "model_from_file" in api  # mkdocstrings rendered the docstrings
    home = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "Quick start" in home and 'href="getting-started/' in home  # README, links made relative to docs/


def test_readme_figure(tmp_path, data_root):
    """Rows of image | label | prediction for the checkpoint's validation images; its own figure is replaced,
    any other file is refused."""
    from PIL import Image

    from tests.helpers import run_script, tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "model.pt", data_root)
    out = tmp_path / "figure.png"
    for _ in range(2):  # the second run replaces its own figure without overwrite=true
        run_script("make_readme_figure.py", [f"ckpt={ckpt}", f"out={out}", "n=2", "scale=1"])
    with Image.open(out) as image:
        size = 64  # tiny_overrides' synthetic images
        assert image.size == (3 * size + 2 * 4, 2 * size + 4)
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels[:, size:size + 4] == 255).all()  # the white gap between image and label
    other = tmp_path / "notes.png"
    other.write_bytes(b"not mine")
    refused = run_script("make_readme_figure.py", [f"ckpt={ckpt}", f"out={other}"], check=False)
    assert refused.returncode != 0 and "overwrite=true" in refused.stderr and other.read_bytes() == b"not mine"
