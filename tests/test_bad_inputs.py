"""Bad input across every command: exit code 2, exactly one line on stderr, no traceback, and no
byte of any folder that existed changed (every file under the fixture tree is hashed before and
after each case), nor a folder left behind where the command was told to write.

The fixtures are tiny real runs of each command; each case names the folder it must not create.
"""
from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from trustdiff.cli import main

TRAIN = ["--data", "digits", "--resolution", "8", "--size", "tiny", "--steps", "2", "--batch", "8",
         "--checkpoint-every", "2", "--warmup", "1"]
CODEC = ["--resolution", "16", "--n-bits", "8", "--width", "4", "--enc-depth", "2", "--dec-depth", "2",
         "--codec-steps", "2", "--codec-batch", "8", "--l2-await", "0", "--l2-ramp", "2"]


def _ok(argv):
    assert main([str(a) for a in argv]) == 0, argv


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> Path:
    """A tree of finished tiny runs of the commands, plus folders and files a user might point at."""
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("fx")
    _ok(["train", *TRAIN, "--out", d / "m"])
    _ok(["train", *TRAIN, "--unconditional", "--out", d / "mu"])
    _ok(["generate", "--model", d / "m", "-n", "4", "--sample-steps", "2", "--out", d / "g"])
    _ok(["train-classifier", "--resolution", "8", "--steps", "2", "--width", "4", "--out", d / "clf"])
    _ok(["watermark", "train-codec", *CODEC, "--out", d / "codec"])
    _ok(["t2i", "train", "--size", "tiny", "--resolution", "8", "--steps", "2", "--batch", "4", "--warmup", "0",
         "--checkpoint-every", "2", "--out", d / "t2i"])
    (d / "user").mkdir()
    (d / "user" / "notes.txt").write_text("a user's own file\n")
    (d / "file.txt").write_text("not a folder\n")
    (d / "stranger.html").write_text("<html>someone's page</html>\n")
    # a model whose weights were altered after export, and one whose weights are a pickle
    shutil.copytree(d / "m" / "model", d / "flipped")
    w = d / "flipped" / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(w.read_bytes())
    for i in range(len(data) - 1000, len(data)):
        data[i] ^= 0xFF
    w.write_bytes(bytes(data))
    shutil.copytree(d / "m" / "model", d / "pickled")
    from safetensors.torch import load_file

    sd = load_file(d / "pickled" / "unet" / "diffusion_pytorch_model.safetensors")
    (d / "pickled" / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save(sd, d / "pickled" / "unet" / "diffusion_pytorch_model.bin")
    shutil.copytree(d / "t2i", d / "t2i-flipped")
    for f in sorted((d / "t2i-flipped" / "pipeline" / "unet").glob("*.safetensors")):
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(d / "tiny.png")     # not the pipeline's 8×8
    # 8×8 images to show a codec that takes 16×16
    np.savez(d / "small.npz", images=np.zeros((4, 8, 8, 1), np.uint8), labels=np.zeros(4, np.int64))
    # published-checkpoint look-alikes: a pickle whose payload would write a file, an unknown state dict
    (d / "payload.pkl").write_bytes(pickle.dumps(_Payload(d / "payload-ran")))
    torch.save({"w": torch.zeros(2)}, d / "unknown.pt")
    return d


class _Payload:
    """Pickles as ``os.system("touch MARKER")``: it must never run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _hashes(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*")) if p.name != "log.txt"}


# (case id, argv with {fx} for the fixture folder and {new} for a path that must not appear)
CASES = [
    # run folders: never into another run, a file, or a folder of other files; --resume only on a run
    ("train-into-own-run", "train {T} --seed 1 --out {fx}/m"),
    ("generate-into-train-run", "generate --model {fx}/m -n 2 --out {fx}/m"),
    ("generate-into-user-folder", "generate --model {fx}/m -n 2 --out {fx}/user"),
    ("generate-into-a-file", "generate --model {fx}/m -n 2 --out {fx}/file.txt"),
    ("train-under-a-file", "train {T} --out {fx}/file.txt/run"),
    ("resume-missing-folder", "train --resume --out {new}"),
    ("resume-user-folder", "train --resume --out {fx}/user"),
    ("resume-another-command", "train --resume --out {fx}/g"),
    ("resume-changed-flags", "train --resume --steps 99 --out {fx}/m"),
    ("classifier-into-own-run", "train-classifier --steps 2 --out {fx}/clf"),
    ("detect-into-classifier-run", "watermark detect --codec {fx}/codec --images digits --key-seed 1 --fpr 0.01 --out {fx}/clf"),
    ("certify-into-train-run", "certify --classifier {fx}/clf --sigma 0.25 --draws 10 --draws0 5 --max 1 --out {fx}/m"),
    ("report-out-a-folder", "report {fx}/g --out {fx}/user"),
    ("report-out-a-strangers-file", "report {fx}/g --out {fx}/stranger.html"),
    ("report-missing-folder", "report {new}"),
    ("report-of-no-runs", "report {fx}/user"),
    ("demo-into-user-folder", "demo --preset smoke --out {fx}/user"),
    ("demo-into-train-run", "demo --preset smoke --out {fx}/m"),
    ("demo-device-absent", "demo --preset smoke --device cuda:3 --out {new}"),
    ("t2i-embed-into-t2i-run", "watermark t2i embed --pipeline {fx}/t2i --target code --steps 1 --out {fx}/t2i"),
    ("t2i-train-into-user-folder", "t2i train --size tiny --steps 1 --out {fx}/user"),
    # counts
    ("generate-batch-0", "generate --model {fx}/m -n 2 --batch 0 --out {new}"),
    ("generate-n-0", "generate --model {fx}/m -n 0 --out {new}"),
    ("t2i-generate-n-0", "t2i generate --pipeline {fx}/t2i --prompt seven -n 0 --out {new}"),
    ("train-nproc-0", "train {T} --nproc 0 --out {new}"),
    ("train-steps-0", "train --size tiny --steps 0 --out {new}"),
    ("certify-draws-0", "certify --classifier {fx}/clf --sigma 0.25 --draws 0 --out {new}"),
    ("purify-n-0", "purify eval --classifier {fx}/clf --denoiser {fx}/m -n 0 --out {new}"),
    ("advtrain-generate-n-0", "advtrain generate --model {fx}/m -n 0 --out {new}"),
    ("detect-calib-images-0", "watermark detect --codec {fx}/codec --images digits --key-seed 1 --fpr 0.01 --calibrate digits --calib-images 0 --out {new}"),
    ("seed-negative", "generate --model {fx}/m -n 2 --seed -1 --out {new}"),
    # values out of range
    ("label-dropout-2", "train {T} --label-dropout 2 --out {new}"),
    ("t-star-0", "purify eval --classifier {fx}/clf --denoiser {fx}/m --t-star 0 --out {new}"),
    ("t-star-2", "purify eval --classifier {fx}/clf --denoiser {fx}/m --t-star 2 --out {new}"),
    ("eps-negative", "purify eval --classifier {fx}/clf --denoiser {fx}/m --eps -0.1 --out {new}"),
    ("sigma-0", "certify --classifier {fx}/clf --sigma 0 --out {new}"),
    ("alpha-1", "certify --classifier {fx}/clf --sigma 0.25 --alpha 1 --out {new}"),
    ("shard-out-of-range", "certify --classifier {fx}/clf --sigma 0.25 --shard 2/2 --out {new}"),
    ("fpr-0", "watermark detect --codec {fx}/codec --images digits --key-seed 1 --fpr 0 --out {new}"),
    ("guidance-unconditional", "generate --model {fx}/mu -n 2 --guidance 3 --out {new}"),
    ("class-unconditional", "generate --model {fx}/mu -n 2 --class 3 --out {new}"),
    ("class-out-of-range", "generate --model {fx}/m -n 2 --class 12 --out {new}"),
    ("lr-0", "train {T} --lr 0 --out {new}"),
    ("device-unknown", "certify --classifier {fx}/clf --sigma 0.25 --device tpu --out {new}"),
    ("device-cuda-absent", "certify --classifier {fx}/clf --sigma 0.25 --device cuda:7 --out {new}"),
    ("codec-n-bits-200", "watermark train-codec --n-bits 200 --out {new}"),
    ("codec-resolution-not-a-multiple", "watermark train-codec --resolution 15 --enc-depth 2 --dec-depth 2 --out {new}"),
    ("t2i-train-label-dropout", "t2i train --label-dropout 1.5 --out {new}"),
    ("advtrain-train-unknown-arch", "advtrain train --arch resnet --out {new}"),
    ("advtrain-train-holdout-too-large", "advtrain train --holdout 100000 --out {new}"),
    # wrong run types
    ("advtrain-eval-of-diffusion-run", "advtrain eval --run {fx}/m --out {new}"),
    ("certify-classifier-is-diffusion", "certify --classifier {fx}/m --sigma 0.25 --out {new}"),
    ("purify-denoiser-is-classifier", "purify eval --classifier {fx}/clf --denoiser {fx}/clf --out {new}"),
    ("generate-model-is-classifier", "generate --model {fx}/clf -n 2 --out {new}"),
    ("t2i-generate-of-diffusion-run", "t2i generate --pipeline {fx}/m --prompt seven --out {new}"),
    ("embed-codec-is-diffusion", "watermark embed --codec {fx}/m --key-seed 1 --out {new}"),
    ("advtrain-generate-unconditional", "advtrain generate --model {fx}/mu -n 4 --out {new}"),
    ("advtrain-sweep-unconditional-unlabelled", "advtrain sweep --model {fx}/mu -n 4 --out {new}"),
    ("advtrain-sweep-bad-steps", "advtrain sweep --model {fx}/m --sample-steps 0,2 -n 4 --out {new}"),
    ("certify-merge-no-shards", "certify-merge {fx}/user"),
    ("t2i-verify-missing-pipeline", "watermark t2i verify --pipeline {fx}/nope --original {fx}/t2i --target code --out {new}"),
    # corrupted and pickled model files
    ("generate-flipped-weights", "generate --model {fx}/flipped -n 2 --out {new}"),
    ("generate-pickled-weights", "generate --model {fx}/pickled -n 2 --out {new}"),
    ("t2i-generate-flipped", "t2i generate --pipeline {fx}/t2i-flipped --prompt seven -n 1 --out {new}"),
    # impossible statistics and mismatched images
    ("detect-8-bits-at-1e-6", "watermark detect --codec {fx}/codec --images digits --key-seed 1 --out {new}"),
    ("recipe-8-bits-at-1e-6", "watermark recipe --resolution 16 --n-bits 8 --out {new}"),
    ("detect-other-resolution", "watermark detect --codec {fx}/codec --images {fx}/small.npz --key-seed 1 --fpr 0.01 --out {new}"),
    ("detect-wrong-key-length", "watermark detect --codec {fx}/codec --images digits --key 0101 --fpr 0.01 --out {new}"),
    # missing files, bad data, unknown flags and choices
    ("train-missing-data", "train {T} --data {fx}/nope.npz --out {new}"),
    ("detect-missing-key-file", "watermark detect --codec {fx}/codec --images digits --key-file {fx}/nope.txt --fpr 0.01 --out {new}"),
    ("t2i-embed-missing-target", "watermark t2i embed --pipeline {fx}/t2i --target {fx}/nope.png --out {new}"),
    ("t2i-embed-target-wrong-size", "watermark t2i embed --pipeline {fx}/t2i --target {fx}/tiny.png --out {new}"),
    ("generate-old-steps-flag", "generate --model {fx}/m --steps 3 --out {new}"),
    ("purify-unknown-solver", "purify eval --classifier {fx}/clf --denoiser {fx}/m --solver rk4 --out {new}"),
    ("generate-unknown-sampler", "generate --model {fx}/m --sampler rk4 --out {new}"),
    ("dreambooth-class-prompt-without-images", "watermark t2i dreambooth --pipeline {fx}/t2i --instance {fx}/small.npz --class-prompt seven --out {new}"),
    # published checkpoints (issue 19)
    ("convert-not-a-checkpoint", "convert {fx}/file.txt --out {new}"),
    ("convert-missing-file", "convert {fx}/nope.pkl --out {new}"),
    ("convert-payload-pickle", "convert {fx}/payload.pkl --out {new}"),
    ("convert-pt-without-adm-config", "convert {fx}/unknown.pt --out {new}"),
    ("convert-pt-wrong-adm-config", "convert {fx}/unknown.pt --adm-config iddpm-cifar10 --out {new}"),
    ("convert-pt-unknown-preset", "convert {fx}/unknown.pt --adm-config adm-imagenet1024 --out {new}"),
    ("convert-into-train-run", "convert {fx}/unknown.pt --adm-config iddpm-cifar10 --out {fx}/m"),
    ("generate-payload-pickle", "generate --model {fx}/payload.pkl -n 2 --out {new}"),
    ("purify-denoiser-pt-without-config", "purify eval --classifier {fx}/clf --denoiser {fx}/unknown.pt --out {new}"),
    ("generate-adm-config-on-a-folder", "generate --model {fx}/m --adm-config iddpm-cifar10 -n 2 --out {new}"),
    # watermark removal attacks (issue 20)
    ("attack-no-images", "watermark attack --codec {fx}/codec --key-seed 1 --fpr 0.01 --out {new}"),
    ("attack-no-codec", "watermark attack --key-seed 1 --embed digits --fpr 0.01 --out {new}"),
    ("attack-unknown-search", "watermark attack --codec {fx}/codec --key-seed 1 --embed digits --search rotations --fpr 0.01 --out {new}"),
    ("attack-unknown-attack", "watermark attack --codec {fx}/codec --key-seed 1 --embed digits --attacks twirl --fpr 0.01 --out {new}"),
    ("attack-8-bits-at-1e-6", "watermark attack --codec {fx}/codec --key-seed 1 --embed digits --out {new}"),
    ("attack-model-other-resolution", "watermark attack --codec {fx}/codec --key-seed 1 --model {fx}/m --fpr 0.01 --out {new}"),
    ("attack-finetune-without-model", "watermark attack --codec {fx}/codec --key-seed 1 --embed digits --finetune-steps 5 --fpr 0.01 --out {new}"),
    ("attack-t-star-above-1", "watermark attack --codec {fx}/codec --key-seed 1 --embed digits --t-star 2 --fpr 0.01 --out {new}"),
    ("attack-into-train-run", "watermark attack --codec {fx}/codec --key-seed 1 --embed digits --fpr 0.01 --out {fx}/m"),
    # the privacy audit (issue 21)
    ("audit-extract-into-train-run", "audit extract --model {fx}/m -n 2 --out {fx}/m"),
    ("audit-extract-n-0", "audit extract --model {fx}/m -n 0 --out {new}"),
    ("audit-extract-delta-0", "audit extract --model {fx}/m --delta 0 --out {new}"),
    ("audit-extract-model-is-classifier", "audit extract --model {fx}/clf --out {new}"),
    ("audit-extract-missing-train-data", "audit extract --model {fx}/m --train-data {fx}/nope.npz --out {new}"),
    ("audit-extract-no-heldout-split", "audit extract --model {fx}/m --train-data {fx}/small.npz --out {new}"),
    ("audit-extract-guidance-unconditional", "audit extract --model {fx}/mu --guidance 3 --out {new}"),
    ("audit-extract-flipped-weights", "audit extract --model {fx}/flipped --out {new}"),
    ("audit-membership-into-user-folder", "audit membership --model {fx}/m --out {fx}/user"),
    ("audit-membership-sigma-0", "audit membership --model {fx}/m --sigmas 0,1 --out {new}"),
    ("audit-membership-sigma-not-a-number", "audit membership --model {fx}/m --sigmas 0.1,big --out {new}"),
    ("audit-membership-sigma-above-max", "audit membership --model {fx}/m --sigmas 1000 --out {new}"),
    ("audit-membership-unknown-attack", "audit membership --model {fx}/m --attack lira --out {new}"),
    ("audit-membership-repeats-0", "audit membership --model {fx}/m --repeats 0 --out {new}"),
    ("audit-membership-members-a-png", "audit membership --model {fx}/m --members {fx}/tiny.png --out {new}"),
    ("audit-ownership-of-a-train-run", "audit ownership --recipe {fx}/m --out {new}"),
    ("audit-ownership-missing-recipe", "audit ownership --recipe {fx}/nope --out {new}"),
    ("audit-ownership-sigma-0", "audit ownership --recipe {fx}/m --sigmas 0 --out {new}"),
    ("audit-subset-n-too-large", "audit subset -n 5000 --out {new}"),
    ("audit-subset-duplicate-more-than-n", "audit subset -n 5 --duplicate 6 --out {new}"),
    ("audit-subset-into-train-run", "audit subset -n 5 --out {fx}/m"),
]


@pytest.mark.parametrize("case,line", CASES, ids=[c for c, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_harms_nothing(fx, tmp_path, capsys, case, line):
    new = tmp_path / "never"
    argv = [a.replace("{fx}", str(fx)).replace("{new}", str(new)) for a in line.replace("{T}", " ".join(TRAIN)).split()]
    before = _hashes(fx)
    capsys.readouterr()
    code = main(argv)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    assert _hashes(fx) == before, "a folder that existed was changed"
    assert not new.exists(), "a failed command left its --out folder"
    assert not (fx / "payload-ran").exists(), "a pickle's payload ran"


def test_the_suite_covers_every_command():
    from trustdiff.cli import cli

    def names(group, prefix=""):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from names(cmd, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}"

    covered = {" ".join(w for w in line.split()[:3] if not w.startswith(("-", "{"))) for _, line in CASES}
    missing = [n for n in names(cli) if not any(c == n or c.startswith(n + " ") for c in covered)]
    assert len(CASES) >= 40 and not missing, missing
