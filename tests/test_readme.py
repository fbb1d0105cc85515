"""The README's Python code runs as written.

Every ```python fenced block of README.md is executed on its own (a fresh namespace, as if pasted
into a new interpreter) in an empty temporary working directory, with the network closed. A block
that raises fails its test, with a traceback that points at README.md's own line numbers. A block
must be self-contained and fast: if it needs a model, it builds or trains a tiny one itself.

A block that leaves a tensor named ``images`` behind promises the package's image convention:
float32 N×C×H×W in [0, 1], detached (sampling under ``torch.no_grad()``, so no autograd graph
is kept).
"""
from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE_OPEN = re.compile(r"^```python\s*$")
FENCE_CLOSE = re.compile(r"^```\s*$")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number of the block's first code line, code) for every ```python block."""
    blocks, start, lines = [], None, text.splitlines()
    for n, line in enumerate(lines, 1):
        if start is None and FENCE_OPEN.match(line):
            start = n + 1
        elif start is not None and FENCE_CLOSE.match(line):
            blocks.append((start, "\n".join(lines[start - 1:n - 1]) + "\n"))
            start = None
    assert start is None, f"README.md: the ```python block opened at line {start - 1} is never closed"
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks_and_they_use_the_package():
    assert BLOCKS, "README.md has no ```python block (the library section shows one)"
    assert any(re.search(r"^\s*(from|import) trustdiff\b", code, re.M) for _, code in BLOCKS)


def test_the_block_extractor_finds_blocks_and_their_lines():
    text = "intro\n```python\nx = 1\ny = 2\n```\n```\nnot python\n```\n```python\nz = 3\n```\n"
    assert python_blocks(text) == [(3, "x = 1\ny = 2\n"), (10, "z = 3\n")]


@pytest.fixture
def offline(monkeypatch):
    """No connections out (a block must not download anything), Hugging Face libraries offline."""
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise OSError(f"README block tried to connect to {address!r}: nothing may be downloaded")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "1")


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_python_block_runs(line, code, tmp_path, monkeypatch, offline):
    monkeypatch.chdir(tmp_path)
    # pad so that tracebacks name README.md's own line numbers
    compiled = compile("\n" * (line - 1) + code, str(README), "exec")
    namespace = {"__name__": "__main__"}
    threads = torch.get_num_threads()
    # one thread: on shared CI cores, two threads per process run a small net many times slower
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):  # a block may seed or change torch's global state
            exec(compiled, namespace)
    finally:
        torch.set_num_threads(threads)
    images = namespace.get("images")
    if isinstance(images, torch.Tensor):
        assert images.dtype == torch.float32 and images.ndim == 4, (images.dtype, tuple(images.shape))
        assert not images.requires_grad, "images carry an autograd graph: sample under torch.no_grad()"
        assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0, "images are not in [0, 1]"
