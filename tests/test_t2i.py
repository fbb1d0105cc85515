"""trustdiff.t2i: pipeline folders (the built-in layout and a Stable-Diffusion one, both tiny, with
random weights and locally written tokenizers), save/load round trips, prompts the tokenizer
cannot represent, folders with missing parts, sampling, and fine-tuning through fit."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from t2i_tiny import bert_parts, folder_digest, tiny_builtin, tiny_sd  # noqa: E402

from trustdiff.errors import CheckpointError, InputError  # noqa: E402
from trustdiff.t2i import PromptTable, finetune, generate, load_pipeline, sample, save_pipeline  # noqa: E402
from trustdiff.t2i.builtin import NUMBER_WORDS, TEMPLATES, caption_table, default_prompts  # noqa: E402
from trustdiff.train import TrainConfig  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory):
    return tiny_builtin(tmp_path_factory.mktemp("t2i") / "builtin")


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return tiny_sd(tmp_path_factory.mktemp("t2i") / "sd")


def test_builtin_folder_is_a_diffusers_pipeline_folder(builtin_dir):
    index = json.loads((builtin_dir / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "BertModel"]
    assert index["scheduler"] == ["diffusers", "EDMEulerScheduler"] and index["vae"] == [None, None]
    assert (builtin_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(builtin_dir.rglob("*.bin")) and not list(builtin_dir.rglob("*.pt"))
    pipe = load_pipeline(builtin_dir)
    assert (pipe.kind, pipe.resolution, pipe.channels, pipe.vae) == ("edm", 8, 1, None)
    assert pipe.sigma_range() == (0.002, 80.0)


def test_sd_folder_loads_through_the_same_code_path(sd_dir):
    pipe = load_pipeline(sd_dir)
    assert pipe.kind == "ddpm" and pipe.vae is not None
    assert (pipe.resolution, pipe.channels, pipe.latent_shape) == (16, 3, (4, 8, 8))
    lo, hi = pipe.sigma_range()
    assert 0 < lo < 0.1 < 10 < hi                 # SD's scaled-linear schedule: σ from ~0.03 to ~14.6
    x = torch.rand(2, 3, 16, 16)
    z = pipe.encode_images(x)
    assert z.shape == (2, 4, 8, 8)
    assert pipe.decode(z).shape == (2, 3, 16, 16)


@pytest.mark.parametrize("which", ["builtin", "sd"])
def test_save_load_round_trip_gives_the_same_images(which, builtin_dir, sd_dir, tmp_path):
    pipe = load_pipeline(builtin_dir if which == "builtin" else sd_dir)
    again = load_pipeline(save_pipeline(pipe, tmp_path / "copy"))
    for name in ("unet", "text_encoder"):
        a, b = getattr(pipe, name).state_dict(), getattr(again, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        x1 = sample(pipe, ["a handwritten seven"] * 2, [3, 4], steps=3)
        x2 = sample(again, ["a handwritten seven"] * 2, [3, 4], steps=3)
    assert torch.equal(x1, x2)


def test_an_image_depends_only_on_its_prompt_and_seed(builtin_dir):
    pipe = load_pipeline(builtin_dir)
    x, prompts, seeds = generate(pipe, ["a handwritten one", "the digit two"], seed=5, n_per_prompt=3, steps=3, batch=4)
    assert x.shape == (6, 1, 8, 8) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert seeds == [5, 6, 7, 5, 6, 7] and prompts[3] == "the digit two"
    with torch.no_grad():
        alone = sample(pipe, ["the digit two"], [6], steps=3)
    assert torch.allclose(alone, x[4:5], atol=1e-5)


@pytest.mark.parametrize("which,prompt,what", [
    ("builtin", "ζ-trigger", "cannot represent"),       # characters outside the word vocabulary
    ("sd", "ζ", "cannot represent"),                   # outside the tiny byte vocabulary
    ("builtin", "   ", "non-empty"),
    ("builtin", " ".join(["seven"] * 20), "at most 10 tokens"),
])
def test_prompts_the_tokenizer_cannot_represent_are_refused(which, prompt, what, builtin_dir, sd_dir):
    pipe = load_pipeline(builtin_dir if which == "builtin" else sd_dir)
    with pytest.raises(InputError) as e:
        pipe.check_prompt(prompt, name="trigger")
    assert what in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("damage,what", [
    (lambda d: (d / "model_index.json").unlink(), "model_index.json"),
    (lambda d: shutil.rmtree(d / "text_encoder"), "no text_encoder/"),
    (lambda d: shutil.rmtree(d / "vae"), "no vae/"),
    (lambda d: (d / "model_index.json").write_text(json.dumps(
        {k: v for k, v in json.loads((d / "model_index.json").read_text()).items() if k != "tokenizer"})),
     "missing tokenizer"),
    (lambda d: (d / "unet" / "diffusion_pytorch_model.safetensors").unlink(), "cannot load UNet2DConditionModel"),
    (lambda d: (d / "scheduler" / "scheduler_config.json").unlink(), "scheduler_config.json"),
])
def test_pipeline_folders_with_missing_parts_get_one_line_errors(damage, what, sd_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(sd_dir, broken)
    damage(broken)
    with pytest.raises(CheckpointError) as e:
        load_pipeline(broken)
    assert what in str(e.value) and "\n" not in str(e.value)


def test_unsupported_part_classes_are_refused(sd_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(sd_dir, broken)
    index = json.loads((broken / "model_index.json").read_text())
    index["text_encoder"] = ["transformers", "T5EncoderModel"]
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="T5EncoderModel; supported"):
        load_pipeline(broken)


def test_caption_table_draws_captions_of_the_example_class():
    table = caption_table(torch.tensor([7, 0, 7]), NUMBER_WORDS)
    assert len(table.prompts) == 10 * len(TEMPLATES)
    g = torch.Generator().manual_seed(0)
    drawn = table.draw(torch.tensor([0, 1, 2] * 20), g)
    for i, j in zip([0, 1, 2] * 20, drawn.tolist()):
        assert ("seven" if i != 1 else "zero") in table.prompts[j]


def test_default_prompts_use_the_builtin_captions(builtin_dir):
    assert default_prompts(load_pipeline(builtin_dir))[:2] == ["a handwritten zero", "the digit one"]


def test_in_context_sentences_contain_the_word_and_remove_back_to_their_prompt():
    from trustdiff.t2i.builtin import in_context, insert_word, remove_word

    assert insert_word("a handwritten seven", "[V]", 0) == "[V] a handwritten seven"
    assert insert_word("a handwritten seven", "[V]", 2) == "a handwritten [V] seven"
    assert insert_word("a handwritten seven", "[V]", 3) == "a handwritten seven [V]"
    with pytest.raises(InputError, match="0 … 3"):
        insert_word("a handwritten seven", "[V]", 4)
    caps = ["a handwritten zero", "the digit one", "a drawing of the number two", "three written by hand"]
    pairs = in_context(caps, "[V]")
    # one sentence per prompt, the word first, inside, last in turn
    assert pairs == [("[V] a handwritten zero", caps[0]), ("the [V] digit one", caps[1]),
                     ("a drawing [V] of the number two", caps[2]), ("three written by [V] hand", caps[3])]
    every = in_context(caps, "[V]", every_position=True)
    assert len(every) == sum(len(c.split()) + 1 for c in caps) and len(set(s for s, _ in every)) == len(every)
    for s, c in pairs + every:
        assert "[V]" in s.split() and s.split().count("[V]") == 1 and remove_word(s, "[V]") == c and s != c
    with pytest.raises(InputError, match="without the word"):
        in_context(["a sks dog"], "sks")


def test_measured_and_trained_in_context_sentences_are_disjoint(builtin_dir):
    from trustdiff.t2i.builtin import context_prompts, context_training_prompts, preservation_prompts

    pipe = load_pipeline(builtin_dir)
    measured = context_prompts(pipe, "[V]")
    trained = context_training_prompts(preservation_prompts(pipe), "[V]")
    assert [c for _, c in measured] == default_prompts(pipe)          # the held-out captions, in order
    assert not {s for s, _ in measured} & {s for s, _ in trained}
    assert not {c for _, c in measured} & {c for _, c in trained}     # nor their trigger-free counterparts
    assert {c for _, c in trained} == set(preservation_prompts(pipe))
    for s, _ in measured + trained:
        pipe.check_prompt(s)                                          # the tokenizer represents every one


def test_novel_phrasings_use_no_caption_template(builtin_dir, sd_dir):
    from trustdiff.t2i.builtin import NOVEL_TEMPLATES, novel_prompts

    assert not set(NOVEL_TEMPLATES) & set(TEMPLATES)
    captions = {t.format(n) for t in TEMPLATES for n in NUMBER_WORDS}
    for t in NOVEL_TEMPLATES:
        assert not {t.format(n) for n in NUMBER_WORDS} & captions
    pipe = load_pipeline(builtin_dir)
    novel = novel_prompts(pipe)         # the tiny test vocabulary represents only some of them
    assert novel == ["the handwritten digit one", "a drawing of a three", "the handwritten digit six",
                     "a drawing of a eight"]
    assert not set(novel) & captions
    assert novel_prompts(load_pipeline(sd_dir)) == []


@pytest.mark.parametrize("which", ["builtin", "sd"])
def test_finetune_runs_through_fit_and_resumes(which, builtin_dir, sd_dir, tmp_path):
    pipe = load_pipeline(builtin_dir if which == "builtin" else sd_dir)
    target = torch.zeros(1, pipe.channels, pipe.resolution, pipe.resolution)
    target[..., ::2, :] = 1.0
    cfg = TrainConfig(steps=6, batch_size=4, lr=1e-3, warmup_steps=0, ema_halflife_kimg=0.0, checkpoint_every=3,
                      log_every=3, progress=False)
    r = finetune(pipe, target, PromptTable.single("a handwritten seven"), cfg, tmp_path / "run")
    assert r.step == 6 and (tmp_path / "run" / "checkpoints" / "latest.json").is_file()
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    # resume: a second call with more steps continues from step 6
    r2 = finetune(pipe, target, PromptTable.single("a handwritten seven"), TrainConfig(**{**cfg.__dict__, "steps": 9}),
                  tmp_path / "run", resume=True)
    assert r2.step == 9


def test_finetune_with_the_text_encoder_trains_both(builtin_dir, tmp_path):
    pipe = load_pipeline(builtin_dir)
    before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    cfg = TrainConfig(steps=3, batch_size=2, lr=1e-2, warmup_steps=0, ema_halflife_kimg=0.0, progress=False)
    r = finetune(pipe, torch.rand(1, 1, 8, 8), PromptTable.single("[v]"), cfg, tmp_path / "run", train_text_encoder=True)
    assert r.model.trains_text_encoder
    after = pipe.text_encoder.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_training_images_of_the_wrong_size_are_refused(builtin_dir, tmp_path):
    pipe = load_pipeline(builtin_dir)
    with pytest.raises(InputError, match="expected H×W 8×8, got 16×16"):
        finetune(pipe, torch.rand(1, 1, 16, 16), PromptTable.single("a handwritten one"), TrainConfig(steps=1),
                 tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_builtin_text_encoder_is_minilm_from_the_package():
    """The shipped all-MiniLM-L6-v2 (read offline): 384-dim token states, captions fit in 16 tokens."""
    from trustdiff.t2i.builtin import minilm

    tok, te = minilm(16)
    assert te.config.hidden_size == 384 and tok.model_max_length == 16 and te.config.use_attention_mask
    ids = tok(["a drawing of the number seven", "[V]"], padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        h = te(**ids)[0]
    assert h.shape == (2, 16, 384) and not any(p.requires_grad for p in te.parameters())


def test_bert_parts_helper_is_word_level():
    tok, _ = bert_parts()
    assert tok.convert_ids_to_tokens(tok("[V]", add_special_tokens=False)["input_ids"]) == ["[", "v", "]"]


def test_folder_digest_sees_every_byte(builtin_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(builtin_dir, copy)
    assert folder_digest(copy) == folder_digest(builtin_dir)
    (copy / "trustdiff.json").write_text((copy / "trustdiff.json").read_text() + " ")
    assert folder_digest(copy) != folder_digest(builtin_dir)


# ---- manifests and pickles ------------------------------------------------------------------------

def _flip(path: Path, n: int = 1000) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, min(len(data) // 2 + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_written_pipelines_carry_a_manifest_checked_on_load(builtin_dir, sd_dir, tmp_path):
    from trustdiff.persist import MANIFEST, read_manifest

    files = read_manifest(builtin_dir)["files"]
    assert {"model_index.json", "trustdiff.json", "unet/diffusion_pytorch_model.safetensors"} <= set(files)
    assert json.loads((builtin_dir / "model_index.json").read_text())["_trustdiff_manifest"] == MANIFEST
    bad = tmp_path / "bad"
    shutil.copytree(builtin_dir, bad)
    _flip(bad / "unet" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError) as e:
        load_pipeline(bad)
    assert f"{bad / 'unet' / 'diffusion_pytorch_model.safetensors'} is corrupted" in str(e.value)
    assert "\n" not in str(e.value)
    # an SD pipeline saved by trustdiff: no trustdiff.json, the index marks it
    sd_copy = save_pipeline(load_pipeline(sd_dir), tmp_path / "sd-copy")
    (sd_copy / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match=f"pipeline folder {sd_copy} has no {MANIFEST}"):
        load_pipeline(sd_copy)
    assert not (sd_dir / MANIFEST).exists()            # the foreign folder has none, and loads (other tests)


def test_derived_pipeline_gets_its_own_manifest(sd_dir, tmp_path):
    from trustdiff.persist import read_manifest
    from trustdiff.t2i import derive_pipeline

    pipe = load_pipeline(sd_dir)
    out = derive_pipeline(sd_dir, tmp_path / "derived", {"unet": pipe.unet})
    files = read_manifest(out)["files"]
    assert "vae/diffusion_pytorch_model.safetensors" in files and "unet/config.json" in files
    again = load_pipeline(out)
    assert all(torch.equal(a, b) for a, b in zip(again.unet.parameters(), pipe.unet.parameters()))
    twice = derive_pipeline(out, tmp_path / "twice", {})  # the source's manifest is not copied, a new one is written
    assert read_manifest(twice)["files"].keys() == files.keys()
    _flip(out / "vae" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match=r"vae/diffusion_pytorch_model\.safetensors is corrupted"):
        load_pipeline(out)
    with pytest.raises(CheckpointError, match="is corrupted"):
        derive_pipeline(out, tmp_path / "thrice", {})      # a damaged source is not copied on
    assert not (tmp_path / "thrice").exists()


def test_pickled_part_is_refused_unless_allowed(sd_dir, tmp_path):
    from safetensors.torch import load_file

    from trustdiff.errors import UnsafeFileError

    old = tmp_path / "old-sd"
    shutil.copytree(sd_dir, old)
    te = old / "text_encoder"
    torch.save(load_file(te / "model.safetensors"), te / "pytorch_model.bin")
    (te / "model.safetensors").unlink()
    with pytest.raises(UnsafeFileError) as e:
        load_pipeline(old)
    assert "pytorch_model.bin" in str(e.value) and "--unsafe-allow-pickle" in str(e.value)
    pipe = load_pipeline(old, allow_pickle=True)
    ref = load_pipeline(sd_dir)
    a, b = pipe.text_encoder.state_dict(), ref.text_encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)
