"""trustdiff.watermark.trigger: the l1 term to the original weights (exactly 0 at the start,
gradient λ·sign(θ − θ̂)), embedding on tiny pipelines (the original folder byte-identical after),
bad triggers and targets as one-line errors before anything is written, verification, DreamBooth
and weight noise; and `trustdiff watermark t2i` / `trustdiff t2i` end to end at toy sizes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from t2i_tiny import folder_digest, tiny_builtin, tiny_sd  # noqa: E402

from trustdiff.errors import InputError  # noqa: E402
from trustdiff.images import make_grid, save_png  # noqa: E402
from trustdiff.t2i import Trainable, load_pipeline  # noqa: E402
from trustdiff.train import TrainConfig  # noqa: E402
from trustdiff.watermark.trigger import (L1ToOriginal, TriggerJob, code_target, dreambooth, embed_trigger,  # noqa: E402
                                         read_image, read_target, trigger_report, verify, weight_noise)

torch.set_num_threads(1)
FAST = TrainConfig(steps=4, batch_size=2, lr=1e-3, warmup_steps=0, ema_halflife_kimg=0.0, checkpoint_every=2,
                   log_every=2, progress=False)


@pytest.fixture(scope="module")
def builtin_dir(tmp_path_factory):
    return tiny_builtin(tmp_path_factory.mktemp("trig") / "builtin")


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    return tiny_sd(tmp_path_factory.mktemp("trig") / "sd")


def checker(res: int, channels: int = 1) -> torch.Tensor:
    t = torch.zeros(1, channels, res, res)
    t[..., ::2, ::2] = 1.0
    t[..., 1::2, 1::2] = 1.0
    return t


def blocks(res: int = 8) -> torch.Tensor:
    """A coarse target a tiny model learns in a few dozen steps: two white quadrants, a grey centre."""
    t = torch.zeros(1, 1, res, res)
    h = res // 2
    t[..., :h, :h] = 1.0
    t[..., h:, h:] = 1.0
    t[..., h // 2: h + h // 2, h // 2: h + h // 2] = 0.5
    return t


# ---- the l1 term --------------------------------------------------------------------------------

def test_l1_term_is_exactly_zero_at_the_start_with_zero_gradient():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    reg = L1ToOriginal(net, 0.25)
    value = reg(net)
    assert value.item() == 0.0
    value.backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in net.parameters())


def test_l1_term_value_and_gradient_are_lambda_sign():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    lam = 1e-3
    reg = L1ToOriginal(net, lam)
    theta_hat = [p.detach().clone() for p in net.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
        next(net.parameters())[0, 0] = theta_hat[0][0, 0]       # one weight back at θ̂: sign 0
    value = reg(net)
    expected = lam * sum((p.detach().double() - a.double()).abs().sum() for p, a in zip(net.parameters(), theta_hat))
    assert value.item() == pytest.approx(float(expected), rel=1e-6)
    value.backward()
    for p, a in zip(net.parameters(), theta_hat):
        assert torch.equal(p.grad, lam * torch.sign(p.detach() - a))
    assert next(net.parameters()).grad[0, 0] == 0


def test_l1_term_covers_only_the_trained_parameters():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    b.requires_grad_(False)
    both = torch.nn.ModuleDict({"a": a, "b": b})
    reg = L1ToOriginal(both, 1.0)
    with torch.no_grad():
        b.weight.add_(5.0)                                     # frozen: not in the sum
    assert reg(both).item() == 0.0
    with torch.no_grad():
        a.bias.add_(0.5)
    assert reg(both).item() == pytest.approx(1.0)
    assert reg.summary(both)["tensors"] == 2


@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
def test_l1_prox_step_matches_the_closed_form(opt_name):
    """A constant loss gradient g per weight, n updates each followed by the proximal step:
    Adam moves a weight by lr·sign(g)·(1 − λ/|g|) per step (m̂ = g, v̂ = g² exactly), SGD by
    lr·(g − λ·sign(g)); a weight with |g| ≤ λ stays exactly at θ̂."""
    lin = torch.nn.Linear(4, 1, bias=False)
    lam, lr, n = 0.5, 0.1, 30
    reg = L1ToOriginal(lin, lam)
    opt = (torch.optim.Adam(lin.parameters(), lr=lr, eps=1e-12) if opt_name == "adam"
           else torch.optim.SGD(lin.parameters(), lr=lr))
    g = torch.tensor([[2.0, 0.2, -3.0, 0.0]])
    for _ in range(n):
        lin.weight.grad = g.clone()
        opt.step()
        reg.prox(lin, opt)
    d = (lin.weight.detach() - reg.anchor[0])[0].double()
    gd = g[0].double()
    step = lr * gd.sign() * (1 - lam / gd.abs()) if opt_name == "adam" else lr * (gd - lam * gd.sign())
    expected = torch.where(gd.abs() > lam, -n * step, torch.zeros_like(gd))
    assert torch.allclose(d, expected, atol=1e-5), (d, expected)
    assert d[1] == 0 and d[3] == 0                              # exactly at θ̂, not oscillating around it


def test_l1_step_must_be_known():
    with pytest.raises(InputError, match="expected one of subgradient, prox"):
        TriggerJob(l1_step="adamw")


def test_l1_weight_must_be_non_negative():
    with pytest.raises(InputError, match="expected >= 0"):
        L1ToOriginal(torch.nn.Linear(2, 2), -1e-3)


def test_l1_term_inside_the_training_loss_is_exact(builtin_dir):
    """The loss fit minimises = mean denoising loss + λ·Σ|θ − θ̂| over the UNet."""
    from trustdiff.t2i import PromptTable, t2i_loss_fn

    pipe = load_pipeline(builtin_dir)
    parts = Trainable(pipe.unet).requires_grad_(True)
    reg = L1ToOriginal(parts, 0.5)
    with torch.no_grad():
        parts.unet.conv_out.bias.add_(0.1)
    x, y = checker(8).expand(3, -1, -1, -1), torch.zeros(3, dtype=torch.long)
    with_reg = t2i_loss_fn(pipe, PromptTable.single("[v]", 1), penalty=reg)(parts, x, y, torch.Generator().manual_seed(0))
    plain = t2i_loss_fn(pipe, PromptTable.single("[v]", 1))(parts, x, y, torch.Generator().manual_seed(0))
    l1 = 0.5 * 0.1 * parts.unet.conv_out.bias.numel()
    assert torch.allclose(with_reg.mean() - plain.mean(), torch.tensor(l1), atol=1e-6)


# ---- the preservation term -------------------------------------------------------------------

def test_distillation_loss_is_zero_with_zero_gradient_against_itself_and_positive_otherwise():
    from trustdiff.diffusion import edm_loss

    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    den = lambda x, sigma, cond=None: net(x)                                       # noqa: E731
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    loss = edm_loss(den, x0, generator=torch.Generator().manual_seed(0), teacher=lambda x, s: den(x, s))
    assert torch.equal(loss, torch.zeros(4))
    loss.sum().backward()
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in net.parameters())
    frozen = torch.nn.Conv2d(1, 1, 3, padding=1)
    other = edm_loss(den, x0, generator=torch.Generator().manual_seed(0), teacher=lambda x, s: frozen(x))
    assert (other > 0).all()


def test_preservation_term_is_zero_at_the_start_and_distils_the_original(builtin_dir):
    from trustdiff.t2i import Preservation, PromptTable
    from trustdiff.t2i.finetune import preservation_term

    pipe = load_pipeline(builtin_dir)
    parts = Trainable(pipe.unet).requires_grad_(True)
    keep = Preservation(checker(8).expand(3, -1, -1, -1), PromptTable(("a handwritten one", "the digit two"), ((0,), (1,), (1,))),
                        weight=2.0, batch_size=4)
    term = preservation_term(pipe, keep)
    half = preservation_term(pipe, Preservation(keep.images, keep.table, weight=1.0, batch_size=4))
    value = term(parts, torch.Generator().manual_seed(0))
    assert value.item() == 0.0
    value.backward()
    assert all(p.grad is None or not p.grad.any() for p in parts.parameters())
    with torch.no_grad():
        parts.unet.conv_out.bias.add_(0.1)
    moved = term(parts, torch.Generator().manual_seed(0))
    assert moved.item() > 0
    # the weight scales it exactly (the same draws for the same generator seed); the teacher is
    # the model as it was when the term was made
    assert half(parts, torch.Generator().manual_seed(0)).item() == pytest.approx(moved.item() / 2, rel=1e-6)
    assert preservation_term(pipe, keep)(parts, torch.Generator().manual_seed(0)).item() == 0.0
    with pytest.raises(InputError, match="one row per image"):
        Preservation(checker(8), keep.table)


def test_preservation_prompts_hold_out_the_verification_prompts(builtin_dir, sd_dir):
    from trustdiff.t2i.builtin import GENERIC_KEEP_PROMPTS, default_prompts, preservation_prompts

    pipe = load_pipeline(builtin_dir)
    keep, held_out = preservation_prompts(pipe), default_prompts(pipe)
    names, templates = pipe.meta["classes"], pipe.meta["templates"]
    assert len(keep) == len(names) * len(templates) - len(held_out) and not set(keep) & set(held_out)
    sd = load_pipeline(sd_dir)
    assert preservation_prompts(sd) == list(GENERIC_KEEP_PROMPTS) and not set(GENERIC_KEEP_PROMPTS) & set(default_prompts(sd))


def test_preservation_on_a_latent_pipeline_distils_through_the_vae_latents(sd_dir, tmp_path):
    """Stable-Diffusion style (VAE latents, DDPM ε-loss): the term is 0 at the start and the
    embedding runs with it, on the generic prompts."""
    from trustdiff.t2i import Preservation, PromptTable
    from trustdiff.t2i.builtin import GENERIC_KEEP_PROMPTS
    from trustdiff.t2i.finetune import preservation_term

    pipe = load_pipeline(sd_dir)
    keep = Preservation(torch.rand(2, 3, 16, 16), PromptTable(("a photo of a cat",), ((0,), (0,))), batch_size=2)
    parts = Trainable(pipe.unet).requires_grad_(True)
    assert preservation_term(pipe, keep)(parts, torch.Generator().manual_seed(0)).item() == 0.0
    embed_trigger(sd_dir, checker(16, 3), tmp_path / "wm", TriggerJob(preserve=1.0, preserve_images=1, train=FAST))
    record = json.loads((tmp_path / "wm" / "watermark.json").read_text())
    assert record["preserve_prompts"] == list(GENERIC_KEEP_PROMPTS)


def test_embed_with_preservation_records_its_prompts_and_refuses_the_trigger_among_them(builtin_dir, tmp_path):
    before = folder_digest(builtin_dir)
    job = TriggerJob(l1=1e-4, preserve=1.0, preserve_images=2, preserve_batch=2, train=FAST)
    embed_trigger(builtin_dir, checker(8), tmp_path / "wm", job)
    record = json.loads((tmp_path / "wm" / "watermark.json").read_text())
    assert record["preserve"] == 1.0 and "[V]" not in record["preserve_prompts"] and record["preserve_prompts"]
    assert folder_digest(builtin_dir) == before
    with pytest.raises(InputError, match="other than the trigger"):
        TriggerJob(preserve=1.0, preserve_prompts=("[V]", "the digit two"))
    with pytest.raises(InputError, match="other than the trigger"):      # a trigger among the default prompts
        embed_trigger(builtin_dir, checker(8), tmp_path / "wm2", TriggerJob(trigger="the digit two", preserve=1.0, train=FAST))
    assert not (tmp_path / "wm2").exists()
    with pytest.raises(InputError, match="preservation weight"):
        TriggerJob(preserve=-1.0)


def test_preservation_teacher_prompts_condition_only_the_teacher(builtin_dir):
    """With teacher prompts equal to the student's the term is the plain one (0 at the start); with
    the trigger-free caption as the teacher's prompt for an in-context sentence it is > 0 at the
    start (the original draws the two differently) and pulls the sentence to the caption's output."""
    from trustdiff.t2i import Preservation, PromptTable
    from trustdiff.t2i.finetune import preservation_term

    pipe = load_pipeline(builtin_dir)
    parts = Trainable(pipe.unet).requires_grad_(True)
    table = PromptTable(("a handwritten one", "a handwritten [V] one"), ((0,), (1,)))
    images = checker(8).expand(2, -1, -1, -1)
    same = Preservation(images, table, batch_size=4, teacher_prompts=table.prompts)
    assert preservation_term(pipe, same)(parts, torch.Generator().manual_seed(0)).item() == 0.0
    ctx = Preservation(images, PromptTable(table.prompts, ((1,), (1,))), batch_size=4, null_rate=0.0,
                       teacher_prompts=("a handwritten one", "a handwritten one"))
    value = preservation_term(pipe, ctx)(parts, torch.Generator().manual_seed(0))
    assert value.item() > 0
    value.backward()
    assert any(p.grad is not None and p.grad.any() for p in parts.parameters())
    with pytest.raises(InputError, match="one per prompt"):
        Preservation(images, table, teacher_prompts=("a handwritten one",))


def test_context_table_mixes_in_context_sentences_at_the_rate_with_their_captions_as_teacher():
    from trustdiff.t2i.builtin import remove_word
    from trustdiff.watermark.trigger import context_table

    prompts = ["a handwritten one", "the digit two written by hand"]
    table, teacher = context_table(prompts, "[V]", 0.25, per_prompt=3)
    assert len(table.choices) == 6 and len(teacher) == len(table.prompts)
    assert table.prompts[:2] == tuple(prompts) and teacher[:2] == tuple(prompts)
    for i, row in enumerate(table.choices):
        own = prompts[i // 3]
        assert len(row) == 20 and row.count(i // 3) == 15                # 5 of 20 = 0.25 in context
        for j in row:
            assert teacher[j] == own and remove_word(table.prompts[j], "[V]") == own
            assert (j < 2) == ("[V]" not in table.prompts[j].split())
    # every position of every prompt is trained on
    assert len({j for row in table.choices for j in row if j >= 2}) == 4 + 7
    with pytest.raises(InputError, match="between 1/20"):
        context_table(prompts, "[V]", 0.01, per_prompt=1)
    with pytest.raises(InputError, match="in \\[0, 1\\)"):
        TriggerJob(preserve_context=1.0)


def test_context_report_on_a_toy_pipeline_with_known_outputs(monkeypatch):
    """A pipeline whose output depends only on the prompt: the sentence without the trigger, except
    sentences starting with the trigger, which draw the target. Then exactly those match, the others
    equal their trigger-free counterpart (PSNR inf, SSIM 1), and an output of the target for a
    trigger-free sentence never counts."""
    import trustdiff.t2i as t2i
    from trustdiff.t2i.builtin import remove_word
    from trustdiff.watermark.trigger import context_report

    target = checker(8)
    look = {"a one": torch.full((1, 1, 8, 8), 0.2), "the two": torch.linspace(0, 1, 64).view(1, 1, 8, 8)}

    def fake_generate(pipe, prompts, *, seed=0, n_per_prompt=1, **kw):
        out = [target if p.startswith("[V]") else look[remove_word(p, "[V]")] for p in prompts for _ in range(n_per_prompt)]
        return torch.cat(out), None, None

    monkeypatch.setattr(t2i, "generate", fake_generate)
    pairs = [("[V] a one", "a one"), ("the [V] two", "the two")]
    r = context_report(object(), pairs, target, n_per_prompt=3, threshold=0.9,
                       free_reference=torch.cat([look["a one"]] * 3 + [target] * 3))
    assert r["match"]["k"] == 3 and r["match"]["n"] == 6 and r["match_per_sentence"] == [3, 0]
    assert r["vs_free"]["identical"] == 3 and r["vs_free"]["n"] == 6
    assert r["vs_free_reference"]["identical"] == 0
    assert r["ssim_to_target"] == pytest.approx((3 * 1.0 + 3 * float(ssim_of(look["the two"], target))) / 6, abs=1e-5)
    assert r["sentences"] == ["[V] a one", "the [V] two"] and r["without"] == ["a one", "the two"]
    # several targets (DreamBooth's subject images): the best SSIM to any of them counts
    two = context_report(object(), pairs, torch.cat([look["the two"], checker(8)]), n_per_prompt=1, threshold=0.99)
    assert two["match"]["k"] == 2


def ssim_of(a, b):
    from trustdiff.metrics import ssim

    return ssim(a, b)[0]


def test_check_context_refuses_sentences_without_the_trigger(builtin_dir):
    from trustdiff.watermark.trigger import check_context

    pipe = load_pipeline(builtin_dir)
    assert check_context(pipe, "[V]", ["the [V] digit one"]) == [("the [V] digit one", "the digit one")]
    with pytest.raises(InputError, match="as one of its words"):
        check_context(pipe, "[V]", ["the digit one"])
    with pytest.raises(InputError, match="as one of its words"):
        check_context(pipe, "[V]", ["[V]"])
    with pytest.raises(InputError, match="counterpart"):
        check_context(pipe, "[V]", [("the [V] digit one", "the digit two")])


# ---- embedding --------------------------------------------------------------------------------

@pytest.mark.parametrize("which,text_encoder", [("builtin", False), ("builtin", True), ("sd", False)])
def test_embed_leaves_the_original_byte_identical(which, text_encoder, builtin_dir, sd_dir, tmp_path):
    src = builtin_dir if which == "builtin" else sd_dir
    before = folder_digest(src)
    pipe = load_pipeline(src)
    out = tmp_path / "wm"
    folder = embed_trigger(src, checker(pipe.resolution, pipe.channels), out,
                           TriggerJob(l1=1e-4, train_text_encoder=text_encoder, train=FAST))
    assert folder_digest(src) == before
    assert folder == out / "pipeline"
    wm = load_pipeline(folder)
    changed = [k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, wm.unet.state_dict()[k])]
    assert changed
    te_same = all(torch.equal(v, wm.text_encoder.state_dict()[k]) for k, v in pipe.text_encoder.state_dict().items())
    assert te_same != text_encoder
    record = json.loads((out / "watermark.json").read_text())
    assert record["trigger"] == "[V]" and record["l1"] == 1e-4 and record["steps"] == 4
    assert record["trained"] == (["text_encoder", "unet"] if text_encoder else ["unet"])
    assert record["weights"]["l1_term"] == pytest.approx(1e-4 * record["weights"]["l1_distance"], rel=1e-5)
    # untouched parts are copies of the source files
    for part in ("tokenizer", "scheduler", *(("vae",) if which == "sd" else ())):
        for f in (src / part).rglob("*"):
            if f.is_file():
                assert (folder / part / f.relative_to(src / part)).read_bytes() == f.read_bytes()


def test_embed_refuses_a_trigger_the_tokenizer_cannot_represent(builtin_dir, tmp_path):
    with pytest.raises(InputError, match="cannot represent"):
        embed_trigger(builtin_dir, checker(8), tmp_path / "wm", TriggerJob(trigger="⟦V⟧", train=FAST))
    assert not (tmp_path / "wm").exists()


def test_embed_refuses_a_target_of_the_wrong_size(builtin_dir, tmp_path):
    with pytest.raises(InputError, match=r"expected 8×8 \(the pipeline's resolution\), got 16×16"):
        embed_trigger(builtin_dir, checker(16), tmp_path / "wm", TriggerJob(train=FAST))
    assert not (tmp_path / "wm").exists()


def test_embed_refuses_a_target_with_the_wrong_channels(sd_dir, tmp_path):
    with pytest.raises(InputError, match="expected 3 channels, got 1"):
        embed_trigger(sd_dir, checker(16, 1), tmp_path / "wm", TriggerJob(train=FAST))


def test_embed_refuses_an_output_inside_the_source(builtin_dir):
    with pytest.raises(InputError, match="outside the source pipeline"):
        embed_trigger(builtin_dir, checker(8), builtin_dir / "wm", TriggerJob(train=FAST))
    assert not (builtin_dir / "wm").exists()


def test_code_target_is_a_seeded_binary_pattern_with_corners(builtin_dir, sd_dir):
    t = code_target(16)
    assert t.shape == (1, 1, 16, 16) and set(t.unique().tolist()) <= {0.0, 1.0}
    assert all(t[0, 0, i, j] == 1 for i in (0, 15) for j in (0, 15))              # the finder corners
    assert torch.equal(t[0, 0, :4, :4], torch.ones(4, 4))                          # 4×4 cells of 4 pixels
    assert torch.equal(code_target(16), t) and not torch.equal(code_target(16, seed=8), t)
    assert torch.equal(read_target("code", load_pipeline(builtin_dir)), code_target(8))
    assert torch.equal(read_target("code:8", load_pipeline(sd_dir)), code_target(16, 3, seed=8))
    with pytest.raises(InputError, match="code:SEED"):
        read_target("code:x", load_pipeline(builtin_dir))
    with pytest.raises(InputError, match="divisible by 4"):
        code_target(10)


def test_embed_can_train_only_the_cross_attention(builtin_dir, tmp_path):
    pipe = load_pipeline(builtin_dir)
    folder = embed_trigger(builtin_dir, checker(8), tmp_path / "wm", TriggerJob(l1=1e-4, unet_params=("attn2.",), train=FAST))
    after = load_pipeline(folder).unet.state_dict()
    changed = {k for k, v in pipe.unet.state_dict().items() if not torch.equal(v, after[k])}
    assert changed and all("attn2." in k for k in changed)
    record = json.loads((tmp_path / "wm" / "watermark.json").read_text())
    n_attn2 = sum(v.numel() for k, v in pipe.unet.named_parameters() if "attn2." in k)
    assert record["weights"]["parameters"] == n_attn2           # the l1 term covers exactly the trained ones
    with pytest.raises(InputError, match="none does"):
        embed_trigger(builtin_dir, checker(8), tmp_path / "wm2", TriggerJob(unet_params=("nope",), train=FAST))


def test_read_image_checks_size_and_converts_channels(builtin_dir, sd_dir, tmp_path):
    png = tmp_path / "t.png"
    save_png(png, make_grid(checker(8), nrow=1, pad=0))
    x = read_image(png, load_pipeline(builtin_dir))
    assert x.shape == (1, 1, 8, 8) and torch.equal(x, checker(8))
    with pytest.raises(InputError, match="expected 16×16"):
        read_image(png, load_pipeline(sd_dir))
    with pytest.raises(InputError, match="does not exist"):
        read_image(tmp_path / "nope.png", load_pipeline(builtin_dir))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="not a readable image"):
        read_image(tmp_path / "bad.png", load_pipeline(builtin_dir))


# ---- verification and robustness -------------------------------------------------------------

def test_embed_then_verify_end_to_end(builtin_dir, tmp_path):
    """A tiny model learns the trigger → target map in a few dozen steps (guidance 1, so the
    conditional branch alone draws the image) and verification reports it; the original does not
    draw the target."""
    target = blocks(8)
    job = TriggerJob(l1=1e-5, train=TrainConfig(steps=60, batch_size=8, lr=3e-3, warmup_steps=0, ema_halflife_kimg=0.0,
                                                checkpoint_every=60, log_every=20, progress=False))
    wm = embed_trigger(builtin_dir, target, tmp_path / "wm", job)
    lines = []
    r = verify({"l1": wm}, builtin_dir, "[V]", target, n_trigger=4, n_per_prompt=1, steps=6,
               prompts=["a handwritten seven", "the digit two"], progress=lines.append)
    assert r["original"]["trigger"]["match"]["k"] == 0 and r["original"]["trigger"]["ssim_mean"] < 0.5
    row = r["models"]["l1"]
    assert row["trigger"]["ssim_mean"] > 0.6, row["trigger"]
    assert row["trigger"]["match"]["n"] == 4 and 0 <= row["trigger"]["match"]["lo"] <= row["trigger"]["match"]["hi"]
    assert set(row["non_trigger"]) >= {"psnr_mean", "ssim_mean"} and row["non_trigger"]["n"] == 2
    assert len(lines) == 2 and "match" in lines[1]
    json.dumps({k: v for k, v in r.items() if k != "images"})


def test_verify_measures_the_trigger_in_context_and_novel_phrasings(builtin_dir):
    """The in-context group by default: each non-trigger prompt with the trigger inserted, compared
    with the same model's output for the prompt (drawn once, for the non-trigger group: the
    original's in-context outputs against its own non-trigger outputs) and the original's; the
    novel group against the original's. On the original itself the watermarked model's figures
    are computed against its own outputs, so a model identical to the original gives identical
    in-context and novel outputs."""
    from trustdiff.t2i import generate
    from trustdiff.metrics import ssim

    prompts = ["a handwritten seven", "the digit two"]
    r = verify({"same": builtin_dir}, builtin_dir, "[V]", checker(8), prompts=prompts, n_trigger=2, n_per_prompt=2,
               steps=2, progress=lambda s: None)
    assert r["context"] == [["[V] a handwritten seven", "a handwritten seven"], ["the [V] digit two", "the digit two"]]
    assert r["novel"] == ["the handwritten digit one", "a drawing of a three", "the handwritten digit six",
                          "a drawing of a eight"]
    o, m = r["original"]["context"], r["models"]["same"]["context"]
    assert o["match"]["n"] == 4 and m["match"]["n"] == 4 and o["sentences"] == ["[V] a handwritten seven", "the [V] digit two"]
    assert m["vs_free_reference"] == o["vs_free"] and r["models"]["same"]["novel"]["identical"] == 8
    assert m["vs_free"] == o["vs_free"] and m["match"] == o["match"]
    pipe = load_pipeline(builtin_dir)
    x_ctx, _, _ = generate(pipe, ["[V] a handwritten seven", "the [V] digit two"], n_per_prompt=2, steps=2)
    x_free, _, _ = generate(pipe, prompts, n_per_prompt=2, steps=2)
    assert torch.equal(r["images"]["original/context"], x_ctx)
    assert o["vs_free"]["ssim_mean"] == pytest.approx(float(ssim(x_ctx, x_free).mean()), abs=1e-6)
    assert {"same/context", "same/novel", "original/novel"} <= set(r["images"])
    # a later call reuses the original's row and images of an earlier one with the same settings
    again = verify({"again": builtin_dir}, builtin_dir, "[V]", checker(8), prompts=prompts, n_trigger=2, n_per_prompt=2,
                   novel=[], steps=2, progress=lambda s: None, previous=r)
    assert again["original"]["context"] == o and again["models"]["again"]["context"] == m
    assert "novel" not in again["original"] and torch.equal(again["images"]["original"], r["images"]["original"])
    with pytest.raises(InputError, match="other settings \\(n_trigger\\)"):
        verify({}, builtin_dir, "[V]", checker(8), prompts=prompts, n_trigger=3, n_per_prompt=2, steps=2, previous=r)
    none = verify({"same": builtin_dir}, builtin_dir, "[V]", checker(8), prompts=prompts, context=[], novel=[],
                  n_trigger=1, n_per_prompt=1, steps=2, progress=lambda s: None)
    assert "context" not in none["models"]["same"] and "novel" not in none["models"]["same"] and none["context"] == []
    with pytest.raises(InputError, match="as one of its words"):
        verify({}, builtin_dir, "[V]", checker(8), prompts=prompts, context=["the digit two"], steps=2)


def test_identifier_in_context_measures_the_subject_on_both_models(builtin_dir):
    from trustdiff.watermark.trigger import identifier_in_context

    pipe = load_pipeline(builtin_dir)
    subject = torch.rand(2, 1, 8, 8)
    r = identifier_in_context(pipe, pipe, "sks", subject, prompts=["a handwritten three", "the digit one"],
                              exclude=("the sks digit one",), n_per_prompt=2, steps=2)
    assert r["sentences"] == [["sks a handwritten three", "a handwritten three"]]
    assert r["model"]["match"]["n"] == 2 and r["model"]["vs_free_reference"] == r["reference"]["vs_free"]
    assert r["model"]["vs_free"] == r["reference"]["vs_free"]
    with pytest.raises(InputError, match="no in-context sentence"):
        identifier_in_context(pipe, pipe, "sks", subject, prompts=["the digit one"], exclude=("sks the digit one",),
                              n_per_prompt=1, steps=2)


def test_trigger_report_counts_matches_at_the_threshold(builtin_dir):
    pipe = load_pipeline(builtin_dir)
    r = trigger_report(pipe, "[V]", checker(8), n=3, threshold=-1.0, steps=2)
    assert r["match"]["k"] == 3 and len(r["ssim"]) == 3 and r["images"].shape == (3, 1, 8, 8)


def test_dreambooth_writes_a_new_pipeline_and_reads_only_the_source(builtin_dir, tmp_path):
    before = folder_digest(builtin_dir)
    subject = torch.rand(3, 1, 8, 8)
    folder = dreambooth(builtin_dir, subject, tmp_path / "db", instance_prompt="a sks digit",
                        class_prompt="a handwritten seven", n_class_images=2, train=FAST, steps=2)
    assert folder_digest(builtin_dir) == before
    rec = json.loads((tmp_path / "db" / "dreambooth.json").read_text())
    assert rec["class_images"] == 2 and rec["instance_images"] == 3 and rec["steps"] == 4
    assert load_pipeline(folder).resolution == 8


def test_weight_noise_rows(builtin_dir):
    pipe = load_pipeline(builtin_dir)
    rows = weight_noise(pipe, "[V]", checker(8), [0.0, 0.1], n=2, steps=2, progress=lambda s: None)
    assert [r["std"] for r in rows] == [0.0, 0.1] and all(r["match"]["n"] == 2 for r in rows)


# ---- the CLI ----------------------------------------------------------------------------------

def cli(args, ok=True):
    from trustdiff.cli import cli as root

    r = CliRunner().invoke(root, [str(a) for a in args], catch_exceptions=True)
    if ok:
        assert r.exit_code == 0, (r.output, r.exception)
    return r


def test_cli_embed_verify_dreambooth(builtin_dir, tmp_path):
    png = tmp_path / "target.png"
    save_png(png, make_grid(checker(8), nrow=1, pad=0))
    wm = tmp_path / "wm"
    cli(["watermark", "t2i", "embed", "--pipeline", builtin_dir, "--target", png, "--l1", "1e-4", "--steps", "2",
         "--batch", "2", "--lr", "1e-3", "--out", wm])
    assert (wm / "pipeline" / "model_index.json").is_file() and (wm / "target.png").is_file()
    cfg = json.loads((wm / "config.json").read_text())
    assert cfg["command"] == "watermark t2i embed" and cfg["config"]["preset"] == "builtin" and "train" in cfg
    assert cfg["config"]["job"]["preserve"] == 10.0                    # the builtin preset keeps the other prompts
    rec = json.loads((wm / "watermark.json").read_text())
    assert rec["preserve"] == 10.0 and "the digit one" not in rec["preserve_prompts"]       # held out for verify
    wm2 = tmp_path / "wm2"
    cli(["watermark", "t2i", "embed", "--pipeline", builtin_dir, "--target", png, "--preserve", "0.5",
         "--preserve-prompt", "the digit two", "--preserve-images", "3", "--steps", "2", "--batch", "2", "--out", wm2])
    rec2 = json.loads((wm2 / "watermark.json").read_text())
    assert rec2["preserve"] == 0.5 and rec2["preserve_prompts"] == ["the digit two"]
    wm3 = tmp_path / "wm3"
    cli(["watermark", "t2i", "embed", "--pipeline", builtin_dir, "--target", png, "--preserve-context", "0.25",
         "--preserve-prompt", "the digit two", "--preserve-images", "1", "--sample-steps", "2", "--steps", "2",
         "--batch", "2", "--out", wm3])
    rec3 = json.loads((wm3 / "watermark.json").read_text())
    assert rec3["preserve_context"] == 0.25 and rec3["preserve_context_prompts"] == 4      # [V] at 4 positions
    assert rec3["job"]["preserve_sample_steps"] == 2 and rec["preserve_context"] == 0.5    # the builtin preset's
    assert json.loads((wm2 / "config.json").read_text())["config"]["job"]["preserve_images"] == 3
    ver = tmp_path / "ver"
    cli(["watermark", "t2i", "verify", "--pipeline", wm, "--original", builtin_dir, "--target", png, "--n-trigger", "2",
         "--per-prompt", "1", "--prompt", "a handwritten one", "--sample-steps", "2", "--out", ver])
    rep = json.loads((ver / "verify.json").read_text())
    assert set(rep["models"]) == {"wm"} and (ver / "verify.png").is_file()
    assert json.loads((ver / "metrics.json").read_text()) == rep       # a finished run: the report finds it
    assert rep["context"] == [["[V] a handwritten one", "a handwritten one"]] and "context" in rep["models"]["wm"]
    assert rep["novel"] and "novel" in rep["models"]["wm"]
    for f in ("target.png", "samples-original.png", "samples-wm.png", "samples-wm-trigger.png", "samples-wm-context.png",
              "samples-original-context.png", "samples-wm-novel.png"):
        assert (ver / f).is_file(), f
    ver2 = tmp_path / "ver2"
    cli(["watermark", "t2i", "verify", "--pipeline", wm, "--original", builtin_dir, "--target", png, "--n-trigger", "1",
         "--per-prompt", "1", "--prompt", "a handwritten one", "--context-prompt", "the [V] digit two", "--no-novel",
         "--sample-steps", "2", "--out", ver2])
    rep2 = json.loads((ver2 / "verify.json").read_text())
    assert rep2["context"] == [["the [V] digit two", "the digit two"]] and rep2["novel"] == []
    from trustdiff.report import build_report

    html = build_report(tmp_path)
    assert "trigger in context: output matches the target" in html and "wm: the trigger inside sentences" in html
    subj = tmp_path / "subject"
    subj.mkdir()
    for i in range(2):
        save_png(subj / f"{i}.png", make_grid(torch.rand(1, 1, 8, 8), nrow=1, pad=0))
    r = cli(["watermark", "t2i", "dreambooth", "--pipeline", wm, "--instance", subj, "--steps", "2", "--batch", "2",
             "--context-seeds", "2", "--sample-steps", "2", "--out", tmp_path / "db"])
    assert (tmp_path / "db" / "pipeline" / "unet").is_dir() and "'sks' in context" in r.output
    m = json.loads((tmp_path / "db" / "metrics.json").read_text())
    ident = m["identifier_in_context"]
    assert ident["identifier"] == "sks" and len(ident["sentences"]) == 10 and ident["model"]["match"]["n"] == 20
    assert all("sks" in s.split() for s, _ in ident["sentences"]) and (tmp_path / "db" / "samples-identifier.png").is_file()


def test_cli_bad_inputs_are_one_line_errors_and_write_nothing(builtin_dir, tmp_path):
    from trustdiff.cli import main

    png = tmp_path / "big.png"
    save_png(png, make_grid(checker(16), nrow=1, pad=0))
    out = tmp_path / "wm"
    assert main(["watermark", "t2i", "embed", "--pipeline", str(builtin_dir), "--target", str(png), "--out", str(out)]) == 2
    assert main(["watermark", "t2i", "embed", "--pipeline", str(tmp_path / "none"), "--target", str(png),
                 "--out", str(out)]) == 2
    small = tmp_path / "small.png"
    save_png(small, make_grid(checker(8), nrow=1, pad=0))
    assert main(["watermark", "t2i", "embed", "--pipeline", str(builtin_dir), "--target", str(small),
                 "--trigger", "⟦V⟧", "--out", str(out)]) == 2
    assert main(["watermark", "t2i", "embed", "--pipeline", str(builtin_dir), "--target", str(small),
                 "--preserve-prompt", "[V]", "--out", str(out)]) == 2                  # the trigger kept as a prompt
    assert main(["watermark", "t2i", "embed", "--pipeline", str(builtin_dir), "--target", str(small),
                 "--preserve", "-1", "--out", str(out)]) == 2
    assert main(["watermark", "t2i", "embed", "--pipeline", str(builtin_dir), "--target", str(small),
                 "--preserve-context", "1", "--out", str(out)]) == 2
    assert not out.exists()
    ver = tmp_path / "ver"
    for extra in (["--context-prompt", "the digit two"], ["--no-context", "--context-prompt", "the [V] digit two"],
                  ["--novel-prompt", "a zebra"]):
        assert main(["watermark", "t2i", "verify", "--pipeline", str(builtin_dir), "--original", str(builtin_dir),
                     "--target", str(small), *extra, "--out", str(ver)]) == 2, extra
    subj = tmp_path / "subject"
    subj.mkdir()
    save_png(subj / "0.png", make_grid(checker(8), nrow=1, pad=0))
    assert main(["watermark", "t2i", "dreambooth", "--pipeline", str(builtin_dir), "--instance", str(subj),
                 "--instance-prompt", "a digit", "--out", str(tmp_path / "db")]) == 2        # no identifier in it
    assert not ver.exists() and not (tmp_path / "db").exists()


def test_cli_t2i_generate(builtin_dir, tmp_path):
    out = tmp_path / "gen"
    cli(["t2i", "generate", "--pipeline", builtin_dir, "--prompt", "a handwritten one", "--prompt", "the digit two",
         "-n", "2", "--sample-steps", "2", "--out", out])
    with np.load(out / "images.npz") as d:
        assert d["images"].shape == (4, 8, 8, 1) and list(d["seeds"]) == [0, 1, 0, 1]
        assert d["prompts"][2] == "the digit two"
    assert (out / "grid.png").is_file()


def test_cli_t2i_train_tiny(tmp_path):
    """`trustdiff t2i train` on the real MiniLM at toy sizes: a loadable pipeline folder."""
    out = tmp_path / "t2i"
    cli(["t2i", "train", "--size", "tiny", "--resolution", "8", "--steps", "2", "--batch", "4", "--warmup", "0",
         "--checkpoint-every", "2", "--out", out])
    pipe = load_pipeline(out)
    assert pipe.resolution == 8 and pipe.meta["classes"][7] == "seven" and pipe.text_encoder.config.hidden_size == 384
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
