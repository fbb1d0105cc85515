"""Session fixtures shared by several test modules.

``installed_trustdiff``: trustdiff as a user gets it. A wheel is built from the repository's own
files (tracked and untracked-but-not-ignored, copied out of the tree first, so nothing is written
into the checkout), installed (not editable) into a fresh virtual environment, whose Python then
finds trustdiff in its own site-packages only. The third-party dependencies are not downloaded
again: a ``.pth`` file puts this interpreter's site-packages after the fresh venv's own (as a
plain path, so the ``.pth`` files there, the editable install's among them, are not run).

``installed_smoke_demo``: ``trustdiff demo --preset smoke`` run once per session from that
environment's console script, in a working directory outside the repository. tests/test_install.py
checks the installation; tests/test_report.py reads the demo's report (one smoke run, not two).
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Installed:
    """A fresh virtual environment with the trustdiff wheel installed into it."""
    root: Path                   # the session's scratch folder
    wheel: Path
    venv: Path
    python: Path
    script: Path                 # the console script, venv/bin/trustdiff
    site_packages: Path          # the fresh venv's own
    env: dict                    # the environment to run its commands in
    seconds: dict = field(default_factory=dict)

    def run(self, argv, *, cwd, timeout, check=True) -> subprocess.CompletedProcess:
        p = subprocess.run([str(a) for a in argv], cwd=cwd, env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, argv))} exited with {p.returncode}\n"
                                 f"--- stdout ---\n{p.stdout[-4000:]}\n--- stderr ---\n{p.stderr[-4000:]}")
        return p


def repository_files(repo: Path) -> list[Path]:
    """What a clone holds: the files git tracks plus the untracked ones it does not ignore
    (relative paths); without git, everything but caches, build outputs and virtual envs."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True, timeout=60).stdout
        rels = [Path(p) for p in out.decode().split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        skip = {".git", ".venv", "build", "dist", "__pycache__", "runs", ".pytest_cache"}
        rels = [p.relative_to(repo) for p in repo.rglob("*")
                if p.is_file() and not skip & set(p.relative_to(repo).parts) and ".egg-info" not in str(p)]
    return [r for r in rels if (repo / r).is_file()]        # a deleted, not yet staged file is gone


def build_wheel(root: Path) -> Path:
    """Copy the repository's top-level files and src/ (what the build reads) out of the tree and
    build a wheel there with this interpreter's setuptools (no build isolation: no download)."""
    source = root / "source"
    for rel in repository_files(REPO):
        if len(rel.parts) == 1 or rel.parts[0] == "src":
            (source / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, source / rel)
    wheels = root / "wheels"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "--disable-pip-version-check", "-q", "-w", str(wheels), str(source)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"pip wheel failed:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    (wheel,) = wheels.glob("trustdiff-*.whl")
    return wheel


def fresh_env(venv: Path) -> dict:
    """The environment of a user who activated ``venv``: no PYTHONPATH, no user site, the venv's
    bin first on PATH (this interpreter's own bin removed from it)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "PYTHONEXECUTABLE")}
    own_bin = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != own_bin]
    env |= {"PATH": os.pathsep.join([str(venv / "bin"), *path]), "VIRTUAL_ENV": str(venv),
            "PYTHONNOUSERSITE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return env


@pytest.fixture(scope="session")
def installed_trustdiff(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("install")
    seconds = {}
    t = time.time()
    wheel = build_wheel(root)
    seconds["wheel"] = round(time.time() - t, 1)

    t = time.time()
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True, timeout=60).stdout.strip())
    # the dependencies: this interpreter's site-packages, after the venv's own, as plain paths
    deps = [p for p in dict.fromkeys(site.getsitepackages()) if Path(p).is_dir() and Path(p) != purelib]
    (purelib / "_trustdiff_test_dependencies.pth").write_text("".join(f"{p}\n" for p in deps))
    env = fresh_env(venv)
    p = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                        "--no-cache-dir", "--disable-pip-version-check", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert p.returncode == 0, f"pip install of the wheel failed:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    seconds["venv+install"] = round(time.time() - t, 1)
    return Installed(root=root, wheel=wheel, venv=venv, python=python, script=venv / "bin" / "trustdiff",
                     site_packages=purelib, env=env, seconds=seconds)


@pytest.fixture(scope="session")
def installed_smoke_demo(installed_trustdiff):
    """(out, stages record, completed process) of ``trustdiff demo --preset smoke --out OUT`` run
    from the installed console script in a working directory outside the repository. The command
    writes OUT/stages.json (the record ``run_demo`` returns) and OUT/report.html."""
    inst = installed_trustdiff
    cwd = inst.root / "user"
    cwd.mkdir()
    out = inst.root / "demo"
    t = time.time()
    proc = inst.run([inst.script, "demo", "--preset", "smoke", "--out", out], cwd=cwd, timeout=1800, check=False)
    inst.seconds["smoke demo"] = round(time.time() - t, 1)
    rec = json.loads((out / "stages.json").read_text()) if (out / "stages.json").is_file() else None
    return out, rec, proc
