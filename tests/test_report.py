"""The report (``trustdiff report``) and the staged demo (``trustdiff demo``).

The smoke preset of the real demo runs once per session (~1 minute on 2 cores); its report must
have every section with its images, in a headless Chromium too where one is installed.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from trustdiff.errors import InputError
from trustdiff.report import SECTIONS, build_report, find_runs
from trustdiff.cli import stages as demo_mod
from trustdiff.cli.stages import demo_stages, run_demo, stage_key

EXPECTED_IMAGES = {"diffusion": 1, "watermark": 4, "t2i": 4, "certify": 1, "purify": 1, "advtrain": 1}


def sections_of(html: str) -> dict[str, str]:
    parts = re.split(r'(?=<section id=")', html)
    return {re.match(r'<section id="(\w+)"', p).group(1): p for p in parts if p.startswith("<section")}


# ---- units -----------------------------------------------------------------------------------

def test_find_runs_reads_only_command_folders(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text(json.dumps({"command": "certify", "config": {"sigma": 0.25}}))
    (tmp_path / "a" / "checkpoints").mkdir()
    (tmp_path / "a" / "checkpoints" / "config.json").write_text(json.dumps({"command": "train"}))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text(json.dumps({"format": "trustdiff-model"}))   # a model folder
    runs = find_runs(tmp_path)
    assert [(r.name, r.command, r.finished) for r in runs] == [("a", "certify", False)]


def test_report_of_an_empty_folder_names_every_section_missing(tmp_path):
    html = build_report(tmp_path)
    secs = sections_of(html)
    assert list(secs) == list(SECTIONS)
    assert all("no finished run" in s for s in secs.values())


def test_report_refuses_a_missing_folder(tmp_path):
    with pytest.raises(InputError, match="expected a folder of trustdiff runs"):
        build_report(tmp_path / "nope")


def test_stage_key_follows_arguments_and_upstream():
    stages = {s.name: s for s in demo_stages(Path("out"), "smoke")}
    train, gen = stages["diffusion-train"], stages["diffusion-generate"]
    k_train = stage_key(train, {})
    k_gen = stage_key(gen, {"diffusion-train": k_train})
    assert stage_key(gen, {"diffusion-train": k_train}) == k_gen
    assert stage_key(gen, {"diffusion-train": "other"}) != k_gen          # upstream changed → rerun
    stages_quick = {s.name: s for s in demo_stages(Path("out"), "quick")}
    assert stage_key(stages_quick["diffusion-train"], {}) != k_train      # arguments changed → rerun
    assert stage_key(stages["classifier"], {"diffusion-train": "other"}) == stage_key(stages["classifier"], {})


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(InputError, match="expected one of smoke, quick, full, got 'huge'"):
        demo_stages(Path("out"), "huge")


def _fake_command(fail: set[str], calls: list):
    """A stand-in for the CLI: writes config.json + metrics.json into the stage's --out."""
    def run(argv):
        out = Path(argv[argv.index("--out") + 1])
        calls.append(out.name)
        if out.name in fail:
            raise RuntimeError("boom")
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"command": argv[0], "config": {}}))
        (out / "metrics.json").write_text("{}")
    return run


def test_failed_stage_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(demo_mod, "_run_command", _fake_command({"classifier"}, calls))
    rec = run_demo(tmp_path, "smoke", echo=lambda s: None)
    status = {s["name"]: s["status"] for s in rec["stages"]}
    assert status["classifier"] == "failed"
    # the stages that read the classifier are skipped; the ones that don't still ran
    for name in ("certify-smoothed", "certify-denoised", "purify"):
        assert status[name] == "failed" and "needs classifier" in next(s for s in rec["stages"] if s["name"] == name)["error"]
    for name in ("diffusion-train", "watermark-recipe", "classifier-noise", "certify-noise-trained", "advtrain-eval-real-only"):
        assert status[name] == "ok"
    assert "stage classifier failed: RuntimeError: boom" in sections_of((tmp_path / "report.html").read_text())["certify"]


def test_the_scheduler_starts_the_longest_remaining_chain_first():
    stages = demo_stages(Path("out"), "quick")
    level = demo_mod._bottom_levels(stages, demo_mod.COST_HINTS)
    by = {s.name: s for s in stages}
    for st in stages:                           # a stage's level is its cost plus its costliest dependent's
        after = [level[d.name] for d in stages if st.name in d.needs]
        assert level[st.name] == pytest.approx(demo_mod.COST_HINTS[st.name] + max(after, default=0))
        assert all(level[n] > level[st.name] for n in st.needs if n in by)
    assert set(demo_mod.COST_HINTS) == set(by)   # every stage has a hint
    ready = [s.name for s in stages if not s.needs]
    assert max(ready, key=level.get) == "diffusion-train"    # the recipe's chain goes first


def test_default_jobs_is_two_on_a_multicore_cpu_and_one_on_a_gpu(monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert demo_mod.default_jobs("cpu") == 2
    assert demo_mod.default_jobs("cuda:0") == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert demo_mod.default_jobs("cpu") == 1


@pytest.mark.slow
def test_parallel_stages_run_in_worker_processes_and_log_there(tmp_path):
    only = ["audit-subset", "classifier", "classifier-noise"]
    rec = run_demo(tmp_path, "smoke", echo=lambda s: None, only=only, jobs=2)
    assert [s["name"] for s in rec["stages"]] == ["classifier", "classifier-noise", "audit-subset"]   # the list's order
    assert all(s["status"] == "ok" and not s.get("cached") for s in rec["stages"]), rec["stages"]
    for name in only:
        assert (tmp_path / "logs" / f"{name}.log").stat().st_size > 0
    rec = run_demo(tmp_path, "smoke", echo=lambda s: None, only=only, jobs=2)
    assert all(s.get("cached") for s in rec["stages"])


def test_rerun_reuses_finished_stages_and_reruns_a_failed_one(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(demo_mod, "_run_command", _fake_command({"classifier"}, calls))
    run_demo(tmp_path, "smoke", echo=lambda s: None)
    calls.clear()
    monkeypatch.setattr(demo_mod, "_run_command", _fake_command(set(), calls))
    rec = run_demo(tmp_path, "smoke", echo=lambda s: None)
    assert sorted(calls) == sorted(["classifier", "smoothed", "denoised", "purify"])
    assert all(s["status"] == "ok" for s in rec["stages"])
    assert {s["name"] for s in rec["stages"] if s.get("cached")} == \
        {s.name for s in demo_stages(tmp_path, "smoke")} - {"classifier", "certify-smoothed", "certify-denoised", "purify"}


# ---- the real smoke demo -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke_demo(installed_smoke_demo):
    """(out, stages record) of the session's one smoke demo: ``trustdiff demo --preset smoke`` run
    from the installed wheel's console script (tests/conftest.py; tests/test_install.py checks the
    command itself), so the suite runs the demo once, not twice."""
    out, rec, proc = installed_smoke_demo
    assert rec is not None, f"the smoke demo wrote no stages.json (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    return out, rec


@pytest.mark.slow
def test_smoke_demo_runs_every_stage_and_reports_every_section(smoke_demo):
    out, rec = smoke_demo
    assert [s["name"] for s in rec["stages"] if s["status"] != "ok"] == []
    secs = sections_of((out / "report.html").read_text())
    assert list(secs) == list(SECTIONS)
    for key, n_img in EXPECTED_IMAGES.items():
        assert secs[key].count("<img") >= n_img, key
        assert "no finished run" not in secs[key], key
    assert "FD-digits" in secs["diffusion"] and "detected at FPR" in secs["watermark"]
    assert "worst case over attacks" in secs["purify"] and "real only" in secs["advtrain"]
    assert "denoised smoothing" in secs["certify"] and "noise-trained" in secs["certify"]
    assert "trigger match" in secs["t2i"] and "before: the original model" in secs["t2i"]


@pytest.mark.slow
def test_smoke_demo_report_renders_in_chromium(smoke_demo, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (make test installs Debian's chromium where it can)")
    out, _ = smoke_demo
    url = (out / "report.html").resolve().as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, "--window-size=1200,3000", f"--screenshot={shot}", url],
                   check=True, capture_output=True, timeout=120)
    assert shot.stat().st_size > 10_000
    dom = subprocess.run([browser, *flags, "--virtual-time-budget=5000", "--dump-dom", url],
                         check=True, capture_output=True, timeout=120, text=True).stdout
    m = re.search(r'data-rendered="([^"]*)"', dom)
    assert m, "the page's load script did not run"
    rendered = json.loads(m.group(1).replace("&quot;", '"'))
    assert set(rendered) == set(SECTIONS)
    for key, n_img in EXPECTED_IMAGES.items():
        assert rendered[key]["images"] >= n_img and rendered[key]["rendered"] == rendered[key]["images"], (key, rendered[key])
