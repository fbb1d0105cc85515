"""trustdiff installs as users install it.

A wheel built from the repository, installed (not editable) into a fresh virtual environment,
runs ``trustdiff demo --preset smoke`` from that environment's console script, outside the
repository (the fixtures are in tests/conftest.py). And every third-party package that src/
imports is declared in pyproject.toml.
"""
from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, repository_files

#: imported by src/ but deliberately not a dependency, with the reason
UNDECLARED = {
    "torchattacks": "declares torchvision, which would pull a CUDA torch; the Makefile installs it with --no-deps "
                    "(trustdiff.attacks.torchattacks_pgd, a cross-check, imports it lazily)",
}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level_modules(src: Path) -> dict[str, str]:
    """{top-level module: first file importing it} for the absolute imports under src/ that are
    neither the standard library nor trustdiff itself (imports inside functions included)."""
    found: dict[str, str] = {}
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("trustdiff", "__future__"):
                    found.setdefault(top, str(path.relative_to(REPO)))
    return found


def declared_dependencies() -> set[str]:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {_normal(re.match(r"[A-Za-z0-9._-]+", req).group(0)) for req in project["dependencies"]}


def test_every_imported_package_is_declared():
    modules = imported_top_level_modules(REPO / "src" / "trustdiff")
    assert {"torch", "diffusers", "transformers"} <= set(modules)           # the scan sees lazy imports too
    dists = importlib.metadata.packages_distributions()
    declared = declared_dependencies()
    missing = {}
    for module, where in modules.items():
        if module not in dists:
            missing[module] = f"{where}: no installed distribution provides it"
            continue
        names = {_normal(d) for d in dists[module]}
        if not names & declared and not names & {_normal(u) for u in UNDECLARED}:
            missing[module] = f"{where}: imports it; pyproject.toml declares none of {sorted(names)}"
    assert not missing, "third-party imports not declared in pyproject.toml's dependencies:\n" + \
        "\n".join(f"  {m}: {why}" for m, why in sorted(missing.items()))


@pytest.mark.slow
def test_the_wheel_holds_every_file_of_the_package(installed_trustdiff):
    """Every file of src/trustdiff in a clone (modules, and any data: templates, JSON, fonts) is
    in the wheel, and the wheel holds no tests and no benchmarks."""
    in_wheel = set(zipfile.ZipFile(installed_trustdiff.wheel).namelist())
    package_files = {r.relative_to("src").as_posix() for r in repository_files(REPO)
                     if r.parts[:2] == ("src", "trustdiff") and r.suffix not in (".pyc", ".pyo")}
    assert package_files, "no files under src/trustdiff"
    assert sorted(package_files - in_wheel) == [], "files of the package missing from the wheel"
    assert not [n for n in in_wheel if n.startswith(("tests/", "bench/"))]
    entry_points = next(n for n in in_wheel if n.endswith(".dist-info/entry_points.txt"))
    assert "trustdiff = trustdiff.cli:entry" in zipfile.ZipFile(installed_trustdiff.wheel).read(entry_points).decode()


@pytest.mark.slow
def test_the_fresh_venv_runs_the_wheel_not_the_source_tree(installed_trustdiff):
    inst = installed_trustdiff
    code = ("import json, sys, trustdiff, trustdiff.cli, importlib.metadata as m; "
            "d = m.distribution('trustdiff'); "
            "print(json.dumps({'file': trustdiff.__file__, 'path': sys.path, 'prefix': sys.prefix, "
            "'version': d.version, 'direct_url': d.read_text('direct_url.json')}))")
    info = json.loads(inst.run([inst.python, "-c", code], cwd=inst.root, timeout=300).stdout.strip().splitlines()[-1])
    assert Path(info["file"]).resolve().is_relative_to(inst.site_packages.resolve()), info["file"]
    assert Path(info["prefix"]).resolve() == inst.venv.resolve()
    assert [p for p in info["path"] if p and Path(p).resolve().is_relative_to(REPO.resolve())
            and not Path(p).resolve().is_relative_to((REPO / ".venv").resolve())] == [], \
        "the source tree is on the fresh venv's sys.path"
    assert "editable" not in (info["direct_url"] or "")
    assert inst.script.is_file()


@pytest.mark.slow
def test_smoke_demo_runs_from_the_installed_console_script(installed_smoke_demo, installed_trustdiff):
    out, rec, proc = installed_smoke_demo
    assert proc.returncode == 0, f"trustdiff demo exited with {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert (out / "report.html").is_file() and (out / "report.html").stat().st_size > 10_000
    assert rec is not None and [s["name"] for s in rec["stages"] if s["status"] != "ok"] == []
    assert "every stage ok" in proc.stdout
    print(f"install timings (s): {installed_trustdiff.seconds}")
