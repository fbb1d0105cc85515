"""The CLI: train → generate on the embedded digits, same seed → same images, and every wrong
input ends in one line on stderr, exit code 2, with nothing on disk harmed."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trustdiff.cli import main

TINY = ["--data", "digits", "--resolution", "8", "--size", "tiny", "--steps", "4", "--batch", "16",
        "--checkpoint-every", "2", "--warmup", "1"]


def _tree_hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "log.txt"}


def _one_line_error(capsys, code):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out


def test_train_writes_model_checkpoints_and_metrics(trained):
    assert (trained / "model" / "trustdiff.json").is_file()
    assert (trained / "model" / "unet" / "config.json").is_file()
    assert (trained / "checkpoints" / "latest.json").is_file()
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["command"] == "train" and cfg["config"]["train"]["steps"] == 4
    lines = (trained / "metrics.jsonl").read_text().splitlines() if (trained / "metrics.jsonl").exists() else []
    assert all("loss" in json.loads(l) for l in lines)


def test_trained_model_opens_in_diffusers(trained):
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(trained / "model" / "unet", local_files_only=True)
    assert unet.config.num_class_embeds == 11       # 10 digits + the null class


def test_generate_same_seed_same_images(trained, tmp_path):
    args = ["generate", "--model", str(trained), "-n", "6", "--sample-steps", "3", "--seed", "5"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--batch", "4", "--out", str(tmp_path / "b")]) == 0     # batching must not matter
    assert main([*args[:-1], "6", "--out", str(tmp_path / "c")]) == 0
    a, b, c = (np.load(tmp_path / k / "images-00000.npz") for k in "abc")
    assert a["images"].shape == (6, 8, 8, 1) and a["images"].dtype == np.uint8
    assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
    assert not np.array_equal(a["images"], c["images"])
    assert (tmp_path / "a" / "grid.png").is_file()
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert m["nfe"] == 5 and m["num_images"] == 6


def test_dry_run_prints_config_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "dry"
    assert main(["train", *TINY, "--out", str(out), "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["config"]["precond"] == "edm" and cfg["config"]["train"]["batch_size"] == 16
    assert not out.exists()


def test_missing_data_path(tmp_path, capsys):
    code = main(["train", *TINY, "--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "r")])
    assert "nope.npz" in _one_line_error(capsys, code)
    assert not (tmp_path / "r").exists()


def test_resolution_the_network_cannot_take(tmp_path, capsys):
    args = [a if a != "8" else "9" for a in TINY]
    code = main(["train", *args, "--out", str(tmp_path / "r")])
    assert "divisible" in _one_line_error(capsys, code)
    assert not (tmp_path / "r").exists()


def test_resume_with_another_architecture_harms_nothing(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = _tree_hashes(run)
    args = [a if a != "tiny" else "small" for a in TINY]
    code = main(["train", *args, "--out", str(run), "--resume"])
    assert "--size 'tiny' → 'small'" in _one_line_error(capsys, code)        # refused: the saved flags differ
    assert _tree_hashes(run) == before
    code = main(["train", *args, "--out", str(run), "--resume", "--force"])  # forced: the checkpoint does not fit
    notice, err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "changed flags: --size 'tiny' → 'small'" in notice and "architecture" in err
    assert _tree_hashes(run) == before


def test_corrupted_safetensors(trained, tmp_path, capsys):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained / "model", model)
    f = model / "unet" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    code = main(["generate", "--model", str(model), "-n", "2", "--sample-steps", "2", "--out", str(tmp_path / "g")])
    assert "diffusion_pytorch_model.safetensors" in _one_line_error(capsys, code)
    assert not (tmp_path / "g").exists()


def test_corrupted_checkpoint_on_resume(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    latest = json.loads((run / "checkpoints" / "latest.json").read_text())
    state = run / "checkpoints" / latest["path"] / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[-5] ^= 0xFF
    state.write_bytes(bytes(data))
    before = _tree_hashes(run)
    code = main(["train", "--out", str(run), "--resume"])                    # the saved flags
    assert "state.safetensors" in _one_line_error(capsys, code)
    assert _tree_hashes(run) == before


def test_console_script_exit_code(tmp_path):
    r = subprocess.run([sys.executable, "-m", "trustdiff.cli", "generate", "--model", str(tmp_path / "none"),
                        "--out", str(tmp_path / "g")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "none" in r.stderr


def test_train_nproc_2_runs_the_same_command_in_two_processes(tmp_path):
    out = tmp_path / "np2"
    assert main(["train", *TINY, "--nproc", "2", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train_run"]["world_size"] == 2
    assert (out / "model" / "trustdiff.json").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.is_dir()) == ["step-00000002", "step-00000004"]


def test_purify_eval_writes_a_checked_report(tmp_path, trained, capsys):
    clf_run = tmp_path / "clf"
    assert main(["train-classifier", "--resolution", "8", "--steps", "3", "--width", "4", "--out", str(clf_run)]) == 0
    out = tmp_path / "purify"
    code = main(["purify", "eval", "--classifier", str(clf_run), "--denoiser", str(trained), "--t-star", "0.1",
                 "--sample-steps", "2", "--attack", "pgd-eot", "--attack", "bpda", "--attack-steps", "2", "--eot", "2",
                 "-n", "6", "--n-check", "4", "--n-evals", "3", "--votes", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    d = m["diffpure"]
    assert d["randomized"] and d["n"] == 6 and len(d["attacks"]) == 2
    assert m["purifier"]["votes"] == 2 and m["purifier"]["nfe"] == 4
    assert {c["name"].split(" ")[0] for c in d["checks"]} >= {"randomness", "gradients", "bounds", "eps0", "convergence",
                                                               "protocols", "fixed"}
    # the three protocols side by side: worst of 3 at most one evaluation; fixed randomness reruns PGD without EOT, not BPDA
    assert d["n_evals"] == 3 and d["worst_case_of_n"]["value"] <= d["worst_case"]["value"]
    assert d["attacks"][0]["select"] == "most_fooled"
    assert [a["eot"] for a in d["fixed"]["attacks"]] == [1] and d["fixed"]["not_rerun"] == [d["attacks"][1]["name"]]
    assert "worst of 3" in said and "fixed randomness" in said
    report = (out / "report.md").read_text()
    assert "Verdict" in report and "worst of 3" in report and "Fixed randomness" in report
    code = main(["purify", "eval", "--classifier", str(clf_run), "--denoiser", str(trained), "--t-star", "2",
                 "--out", str(tmp_path / "bad")])
    assert "--t-star" in _one_line_error(capsys, code) and not (tmp_path / "bad").exists()
