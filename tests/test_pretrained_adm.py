"""ADM (guided-diffusion / improved-diffusion) networks and .pt checkpoints: trustdiff.nets.adm and
trustdiff.pretrained.adm. No reference code is needed here: the reference layouts are pinned at the
end of this file (key names and shapes of the reference UNetModel's state_dict, in order, taken
from its code while developing), and so are the published configurations' parameter counts (the
reference code counts the same). bench/_verify_adm.py compares outputs with the reference code."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from trustdiff.diffusion import schedules
from trustdiff.errors import CheckpointError, InputError, UnsafeFileError
from trustdiff.nets.adm import UNetModel
from trustdiff.pretrained import adm

torch.set_num_threads(1)

# the tiny configurations whose reference state dicts are pinned at the end of this file
GUIDED_TINY = dict(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                   attention_resolutions=(2,), channel_mult=(1, 2), num_classes=3, num_head_channels=16,
                   use_scale_shift_norm=True, resblock_updown=True, use_new_attention_order=True)
IMPROVED_TINY = dict(image_size=16, in_channels=3, model_channels=32, out_channels=3, num_res_blocks=1,
                     attention_resolutions=(2,), channel_mult=(1, 2), num_heads=2, use_scale_shift_norm=False,
                     layout="improved")


def tiny_config(unet: dict, steps=20, schedule="linear", rescale=False, predict_xstart=False) -> dict:
    """A structured config around UNet keyword arguments (JSON-able)."""
    u = {k: list(v) if isinstance(v, tuple) else v for k, v in unet.items()}
    return {"unet": u, "diffusion": {"steps": steps, "noise_schedule": schedule,
                                     "learn_sigma": u["out_channels"] == 2 * u["in_channels"],
                                     "rescale_timesteps": rescale, "predict_xstart": predict_xstart}}


def randomise(module: torch.nn.Module, seed=0) -> torch.nn.Module:
    """ADM zero-initialises its output convs: give every parameter a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel() if p.ndim > 1 else 10))
    return module


def saved_tiny(tmp_path, kw=GUIDED_TINY, name="tiny.pt", seed=0, **cfg_kw):
    """(path of a saved random state dict, its config, the network)."""
    net = randomise(UNetModel(**kw), seed)
    path = tmp_path / name
    torch.save(net.state_dict(), path)
    return path, tiny_config(kw, **cfg_kw), net


def layout(sd) -> list[str]:
    return [f"{k} {'x'.join(map(str, v.shape))}" for k, v in sd.items()]


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg
    return msg


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


# ---- the network -----------------------------------------------------------------------------


@pytest.mark.parametrize("kw,pinned", [(GUIDED_TINY, "GUIDED_KEYS"), (IMPROVED_TINY, "IMPROVED_KEYS")])
def test_state_dict_layout_is_the_references(kw, pinned):
    assert layout(UNetModel(**kw).state_dict()) == globals()[pinned].strip().splitlines()


@pytest.mark.parametrize("kw", [GUIDED_TINY, IMPROVED_TINY])
def test_forward_shapes_float_timesteps(kw):
    net = randomise(UNetModel(**kw)).eval()
    x = torch.randn(2, 3, 16, 16)
    y = torch.tensor([0, 2]) if kw.get("num_classes") else None
    with torch.no_grad():
        out = net(x, torch.tensor([3.0, 7.5]), y)
        a, b = (net(x, torch.tensor([t, t]), y) for t in (0.3, 0.7))
        scalar = net(x, 5.0, y)
    assert out.shape == (2, kw["out_channels"], 16, 16) and torch.isfinite(out).all()
    assert (a - b).abs().max() > 1e-6                              # fractional t is not truncated
    assert scalar.shape == out.shape


def test_learned_sigma_gives_2c_channels_and_denoiser_drops_them():
    cfg = adm.adm_config(tiny_config(GUIDED_TINY))
    assert cfg["diffusion"]["learn_sigma"] and cfg["unet"]["out_channels"] == 6
    den = adm.build_adm(cfg)
    randomise(den.unet.net)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert den.unet.net(x, torch.tensor([1, 2]), torch.tensor([0, 1])).shape == (2, 6, 16, 16)
        assert den(x, 0.5, torch.tensor([0, 1])).shape == (2, 3, 16, 16)
    with pytest.raises(InputError, match="out_channels"):
        adm.adm_config({**tiny_config(GUIDED_TINY), "diffusion": {"steps": 10, "noise_schedule": "linear", "learn_sigma": False}})


def test_class_conditioning_changes_the_output_and_is_required():
    net = randomise(UNetModel(**GUIDED_TINY)).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([4, 4])
    with torch.no_grad():
        a, b = net(x, t, torch.tensor([0, 0])), net(x, t, torch.tensor([1, 1]))
    assert (a - b).abs().max() > 1e-4
    with pytest.raises(InputError) as e:
        net(x, t)
    assert "class-conditional" in one_line(e)
    with pytest.raises(InputError, match="0..2"):
        net(x, t, torch.tensor([0, 3]))
    with pytest.raises(InputError, match="int64"):
        net(x, t, torch.tensor([0.0, 1.0]))
    uncond = UNetModel(**IMPROVED_TINY)
    with pytest.raises(InputError, match="unconditional"):
        uncond(x, t, torch.tensor([0, 1]))


def test_denoiser_of_class_conditional_model_needs_labels(tmp_path):
    path, cfg, _ = saved_tiny(tmp_path)
    den = adm.load_adm_checkpoint(path, cfg)
    with pytest.raises(InputError) as e:
        den(torch.randn(1, 3, 16, 16), 1.0)
    assert "expected class labels" in one_line(e)


def test_improved_layout_refuses_guided_only_options():
    for extra in (dict(resblock_updown=True), dict(num_head_channels=16), dict(use_new_attention_order=True)):
        with pytest.raises(ValueError, match="improved"):
            UNetModel(**{**IMPROVED_TINY, **extra})
    with pytest.raises(InputError, match="cannot be built"):
        adm.adm_config(tiny_config({**IMPROVED_TINY, "resblock_updown": True}))


def test_groupnorm_computes_in_fp32():
    net = UNetModel(**IMPROVED_TINY)
    gn = net.out[0]
    x = torch.randn(1, 32, 4, 4).to(torch.bfloat16)
    assert gn(x).dtype == torch.bfloat16
    assert torch.allclose(gn(x).float(), gn(x.float()).to(torch.bfloat16).float())


def test_channel_mult_defaults_by_image_size():
    for size, mult in ((512, [0.5, 1, 1, 2, 2, 4, 4]), (256, [1, 1, 2, 2, 4, 4]), (128, [1, 1, 2, 3, 4]),
                       (64, [1, 2, 3, 4]), (32, [1, 2, 2, 2])):
        cfg = adm.adm_config({"codebase": "guided-diffusion", "image_size": size})
        assert cfg["unet"]["channel_mult"] == mult
    with pytest.raises(InputError, match="channel_mult"):
        adm.adm_config({"codebase": "guided-diffusion", "image_size": 48})


# ---- checkpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [GUIDED_TINY, IMPROVED_TINY])
def test_round_trip_gives_identical_outputs(tmp_path, kw):
    path, cfg, net = saved_tiny(tmp_path, kw)
    den = adm.load_adm_checkpoint(path, cfg)
    assert not den.training and not any(p.requires_grad for p in den.parameters())
    assert all(p.dtype == torch.float32 for p in den.parameters())
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 13])
    y = torch.tensor([2, 0]) if kw.get("num_classes") else None
    with torch.no_grad():
        assert torch.equal(den.unet.net(x, t, y), net.eval()(x, t, y))


def test_fp16_weights_load_as_fp32(tmp_path):
    net = randomise(UNetModel(**IMPROVED_TINY)).half()
    path = tmp_path / "half.pt"
    torch.save(net.state_dict(), path)
    den = adm.load_adm_checkpoint(path, tiny_config(IMPROVED_TINY))
    assert all(p.dtype == torch.float32 for p in den.parameters())
    sd = den.unet.net.state_dict()
    assert all(torch.equal(sd[k], v.float()) for k, v in net.state_dict().items())


def test_denoiser_is_the_epsilon_formula_at_training_steps(tmp_path):
    """D(x, σ_t) = x − σ_t·ε̂(√ᾱ_t·x, t) with x = x_t/√ᾱ_t, i.e. guided-diffusion's pred_xstart
    √(1/ᾱ_t)·x_t − √(1/ᾱ_t − 1)·ε̂ (clip_denoised=False) at an integer step t."""
    path, cfg, net = saved_tiny(tmp_path, steps=50, schedule="cosine")
    den = adm.load_adm_checkpoint(path, cfg)
    ab = adm.adm_alphas_cumprod("cosine", 50)
    t = torch.tensor([0, 17, 49])
    x_t = torch.randn(3, 3, 16, 16)
    y = torch.tensor([0, 1, 2])
    with torch.no_grad():
        eps = net.eval()(x_t, t, y)[:, :3].double()
        a = ab[t].reshape(-1, 1, 1, 1)
        ref = (1 / a).sqrt() * x_t.double() - (1 / a - 1).sqrt() * eps
        ours = den((x_t.double() / a.sqrt()).float(), den.sigmas[t], y)
    assert ((ours.double() - ref).abs() / ref.abs().amax(dim=(1, 2, 3), keepdim=True)).max() < 1e-5


def test_improved_diffusion_rescales_timesteps(tmp_path):
    path, cfg, net = saved_tiny(tmp_path, IMPROVED_TINY, steps=400, schedule="cosine", rescale=True)
    den = adm.load_adm_checkpoint(path, cfg)
    assert den.unet.timestep_scale == 2.5
    seen = []
    den.unet.net.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    with torch.no_grad():
        den(torch.randn(1, 3, 16, 16), den.sigmas[100])     # training step 100 of 400 → the net sees t = 250
    assert float(seen[0][0]) == pytest.approx(250.0, abs=1e-2)


def test_presets_rescale_as_their_codebase():
    scale = {n: (1000 / c["diffusion"]["steps"] if c["diffusion"]["rescale_timesteps"] else 1.0)
             for n, c in adm.ADM_PRESETS.items()}
    assert scale["iddpm-cifar10"] == 0.25 and scale["iddpm-imagenet64"] == 0.25
    assert scale["iddpm-imagenet64-cond"] == 1.0 and scale["adm-imagenet64-cond"] == 1.0
    assert scale["adm-imagenet256-uncond"] == 1.0


def test_pickled_object_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "256x256_diffusion_uncond.pt"
    torch.save({"time_embed.0.weight": torch.zeros(1), "x": Payload()}, path)
    with pytest.raises(UnsafeFileError) as e:
        adm.load_adm_checkpoint(path, tiny_config(GUIDED_TINY))
    assert "refusing" in one_line(e)
    assert not marker.exists()


@pytest.mark.parametrize("payload,match", [([torch.zeros(2)], "expected a state dict"),
                                           ({"a": torch.zeros(1), "b": 3}, "'b' holds int"),
                                           ({}, "expected a state dict")])
def test_non_state_dict_payloads_are_refused(tmp_path, payload, match):
    path = tmp_path / "x.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=match) as e:
        adm.load_adm_checkpoint(path, tiny_config(GUIDED_TINY))
    one_line(e)


def test_missing_and_corrupted_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        adm.load_adm_checkpoint(tmp_path / "none.pt", tiny_config(GUIDED_TINY))
    path, cfg, _ = saved_tiny(tmp_path)
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="corrupted") as e:
        adm.load_adm_checkpoint(path, cfg)
    one_line(e)


def test_wrong_config_names_the_key_mismatch_and_suggests_adm_config(tmp_path):
    path, _, _ = saved_tiny(tmp_path)                            # class-conditional, learned σ
    uncond = tiny_config({**GUIDED_TINY, "num_classes": None})
    with pytest.raises(CheckpointError) as e:
        adm.load_adm_checkpoint(path, uncond)
    msg = one_line(e)
    assert "label_emb.weight" in msg and "--adm-config" in msg and "3 classes" in msg
    wider = tiny_config({**GUIDED_TINY, "model_channels": 64, "num_head_channels": 32})
    with pytest.raises(CheckpointError) as e:
        adm.load_adm_checkpoint(path, wider)
    assert "shape mismatch" in one_line(e)


def test_wrong_preset_for_a_published_file_name_says_which(tmp_path):
    path, _, _ = saved_tiny(tmp_path, name="256x256_diffusion_uncond.pt")
    with pytest.raises(CheckpointError) as e:
        adm.load_adm_checkpoint(path, "iddpm-cifar10")
    msg = one_line(e)
    assert "iddpm-cifar10" in msg and "--adm-config adm-imagenet256-uncond" in msg


# ---- configs -----------------------------------------------------------------------------------


def test_flags_map_to_the_preset():
    flags = ("--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --image_size 256 "
             "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 "
             "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True")
    preset = adm.adm_config("adm-imagenet256-uncond")
    as_string = adm.adm_config("--codebase guided-diffusion " + flags)
    as_dict = adm.adm_config({"codebase": "guided-diffusion", **adm.parse_flags(flags)})
    typed = adm.adm_config({"codebase": "guided-diffusion", "attention_resolutions": [32, 16, 8], "class_cond": False,
                            "image_size": 256, "learn_sigma": True, "num_channels": 256, "num_head_channels": 64,
                            "num_res_blocks": 2, "resblock_updown": True, "use_fp16": True})
    for cfg in (as_string, as_dict, typed):
        assert cfg["unet"] == preset["unet"] and cfg["diffusion"] == preset["diffusion"]
    assert preset["unet"]["attention_resolutions"] == [8, 16, 32]       # 256/32, 256/16, 256/8
    assert preset["unet"]["num_classes"] is None and preset["diffusion"]["learn_sigma"] is True


def test_improved_flags_use_improved_defaults():
    cfg = adm.adm_config({"codebase": "improved-diffusion", "image_size": 32, "num_channels": 128,
                          "num_res_blocks": 3, "learn_sigma": True, "dropout": 0.3,
                          "diffusion_steps": 4000, "noise_schedule": "cosine"})
    assert cfg["unet"] == adm.ADM_PRESETS["iddpm-cifar10"]["unet"]
    assert cfg["diffusion"]["rescale_timesteps"] is True                # improved-diffusion's default
    u = cfg["unet"]
    assert (u["num_heads"], u["attention_resolutions"], u["channel_mult"], u["layout"]) == (4, [2, 4], [1, 2, 2, 2], "improved")


def test_config_errors_are_one_line_and_name_the_key(tmp_path):
    cases = [
        ({"codebase": "guided-diffusion", "image_sise": 64}, "image_sise"),
        ({"image_size": 64}, "codebase"),
        ({"codebase": "improved-diffusion", "num_head_channels": 64}, "num_head_channels"),
        ({"codebase": "guided-diffusion", "class_cond": "yes"}, "class_cond"),
        ({"unet": {"image_size": 32, "model_channels": 32, "num_res_blocks": 1}, "diffusion": {"steps": 10, "noise_schedule": "linear"}},
         "unet.'attention_resolutions'"),
        ({"unet": {**tiny_config(IMPROVED_TINY)["unet"], "heads": 2}, "diffusion": {"steps": 10, "noise_schedule": "linear"}},
         "unet.'heads'"),
        ({"unet": tiny_config(IMPROVED_TINY)["unet"]}, "'diffusion'"),
        ({**tiny_config(IMPROVED_TINY), "diffusion": {"steps": 10, "noise_schedule": "quadratic"}}, "noise_schedule"),
        ({**tiny_config(IMPROVED_TINY), "extra": 1}, "'extra'"),
        ("adm-imagenet1024", "preset"),
        ("--image_size", "pairs"),
    ]
    for spec, key in cases:
        with pytest.raises(InputError) as e:
            adm.adm_config(spec)
        assert key in one_line(e), (spec, str(e.value))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="JSON") as e:
        adm.adm_config(bad)
    one_line(e)


def test_config_json_file_and_round_trip(tmp_path):
    cfg = adm.adm_config("iddpm-cifar10")
    f = tmp_path / "cfg.json"
    f.write_text(json.dumps(cfg))
    assert adm.adm_config(f) == cfg == adm.adm_config(json.loads(json.dumps(cfg)))
    flags = tmp_path / "flags.json"
    flags.write_text(json.dumps({"codebase": "guided-diffusion", "image_size": 64, "num_channels": 192}))
    assert adm.adm_config(str(flags))["unet"]["model_channels"] == 192


def test_preset_for_file():
    assert adm.preset_for_file("/models/256x256_diffusion_uncond.pt") == "adm-imagenet256-uncond"
    assert adm.preset_for_file("cifar10_uncond_50M_500K.pt") == "iddpm-cifar10"
    assert adm.preset_for_file("64x64_diffusion.pt") == "adm-imagenet64-cond"
    assert adm.preset_for_file("lsun_uncond_100M_2400K_bs64.pt") == "iddpm-lsun-bedroom"
    assert adm.preset_for_file("my_model.pt") is None
    for name in ("adm-imagenet64-cond", "adm-imagenet128-cond", "adm-imagenet256-cond", "adm-imagenet256-uncond",
                 "adm-imagenet512-cond", "iddpm-cifar10", "iddpm-imagenet64"):
        assert adm.preset_for_file(adm.ADM_PRESETS[name]["file"]) == name


def test_model_info():
    info = adm.adm_model_info("adm-imagenet256-cond")
    assert (info["resolution"], info["channels"], info["num_classes"], info["steps"], info["learn_sigma"]) == (256, 3, 1000, 1000, True)
    assert info["sigma_min"] == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4)))
    assert info["sigma_max"] == pytest.approx(157.4, abs=0.1)
    cifar = adm.adm_model_info("iddpm-cifar10")
    assert cifar["num_classes"] is None and cifar["resolution"] == 32 and cifar["steps"] == 4000


# ---- schedules --------------------------------------------------------------------------------


def test_linear_schedule_values():
    for T in (1000, 4000):
        ab = adm.adm_alphas_cumprod("linear", T)
        b0, b1 = 1e-4 * 1000 / T, 0.02 * 1000 / T
        beta = [b0 + (b1 - b0) * i / (T - 1) for i in range(T)]
        for t in (0, 1, T // 2, T - 1):
            assert float(ab[t]) == pytest.approx(math.prod(1 - b for b in beta[: t + 1]), rel=1e-12)
    assert float(adm.adm_alphas_cumprod("linear", 1000)[-1]) == pytest.approx(4.0358e-5, rel=1e-3)   # DDPM's ᾱ_T


def test_cosine_schedule_values():
    def f(u):
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    for T in (1000, 4000):
        ab = schedules.cosine_alphas_cumprod(T)
        assert torch.equal(ab, adm.adm_alphas_cumprod("cosine", T))
        for t in (0, 1, T // 3, T - 2):                      # no β clipped there: ᾱ_t = f((t+1)/T)/f(0)
            assert float(ab[t]) == pytest.approx(f((t + 1) / T) / f(0), rel=1e-9)
        assert float(ab[-1]) == pytest.approx(float(ab[-2]) * (1 - 0.999), rel=1e-12)   # β_T clipped at 0.999
        assert bool((ab[1:] < ab[:-1]).all())


# ---- the published configurations -----------------------------------------------------------

# trustdiff's counts, equal to the reference code's (guided-diffusion / improved-diffusion
# script_util.create_model with the README flags), against the papers' / READMEs' figures:
PUBLISHED_PARAMS = {
    "adm-imagenet64-cond": 295_904_454,      # ADM paper Table 11: 296M
    "adm-imagenet128-cond": 421_529_606,     # 422M
    "adm-imagenet256-cond": 553_838_086,     # 554M
    "adm-imagenet256-uncond": 552_814_086,   # 552.8M (no label embedding: 1000 × 1024 fewer)
    "adm-imagenet512-cond": 558_997_638,     # 559M
    "adm-lsun-bedroom": 552_814_086,         # 552M (LSUN)
    "iddpm-cifar10": 52_546_438,             # file cifar10_uncond_50M_500K.pt: "50M"
    "iddpm-imagenet64": 121_063_942,         # file imagenet64_uncond_100M_1500K.pt: "100M"
    "iddpm-imagenet64-cond": 273_049_350,    # improved-diffusion README: "270M parameters"
    "iddpm-lsun-bedroom": 113_676_678,       # file lsun_uncond_100M_1200K_bs128.pt: "100M"
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_published_parameter_counts(name):
    with torch.device("meta"):
        den = adm.build_adm(name)
    assert n_params(den) == PUBLISHED_PARAMS[name]


def test_every_preset_builds_and_has_a_file_and_paper():
    for name, cfg in adm.ADM_PRESETS.items():
        assert cfg["name"] == name and cfg["file"].endswith(".pt") and cfg["paper"]
        assert adm.adm_config(json.loads(json.dumps(cfg))) == cfg        # JSON-able, validates
        assert cfg["family"] == ("adm" if name.startswith("adm-") else "iddpm")


# guided-diffusion's UNetModel state_dict() (openai/guided-diffusion), key shape, in order
GUIDED_KEYS = """
time_embed.0.weight 128x32
time_embed.0.bias 128
time_embed.2.weight 128x128
time_embed.2.bias 128
label_emb.weight 3x128
input_blocks.0.0.weight 32x3x3x3
input_blocks.0.0.bias 32
input_blocks.1.0.in_layers.0.weight 32
input_blocks.1.0.in_layers.0.bias 32
input_blocks.1.0.in_layers.2.weight 32x32x3x3
input_blocks.1.0.in_layers.2.bias 32
input_blocks.1.0.emb_layers.1.weight 64x128
input_blocks.1.0.emb_layers.1.bias 64
input_blocks.1.0.out_layers.0.weight 32
input_blocks.1.0.out_layers.0.bias 32
input_blocks.1.0.out_layers.3.weight 32x32x3x3
input_blocks.1.0.out_layers.3.bias 32
input_blocks.2.0.in_layers.0.weight 32
input_blocks.2.0.in_layers.0.bias 32
input_blocks.2.0.in_layers.2.weight 32x32x3x3
input_blocks.2.0.in_layers.2.bias 32
input_blocks.2.0.emb_layers.1.weight 64x128
input_blocks.2.0.emb_layers.1.bias 64
input_blocks.2.0.out_layers.0.weight 32
input_blocks.2.0.out_layers.0.bias 32
input_blocks.2.0.out_layers.3.weight 32x32x3x3
input_blocks.2.0.out_layers.3.bias 32
input_blocks.3.0.in_layers.0.weight 32
input_blocks.3.0.in_layers.0.bias 32
input_blocks.3.0.in_layers.2.weight 64x32x3x3
input_blocks.3.0.in_layers.2.bias 64
input_blocks.3.0.emb_layers.1.weight 128x128
input_blocks.3.0.emb_layers.1.bias 128
input_blocks.3.0.out_layers.0.weight 64
input_blocks.3.0.out_layers.0.bias 64
input_blocks.3.0.out_layers.3.weight 64x64x3x3
input_blocks.3.0.out_layers.3.bias 64
input_blocks.3.0.skip_connection.weight 64x32x1x1
input_blocks.3.0.skip_connection.bias 64
input_blocks.3.1.norm.weight 64
input_blocks.3.1.norm.bias 64
input_blocks.3.1.qkv.weight 192x64x1
input_blocks.3.1.qkv.bias 192
input_blocks.3.1.proj_out.weight 64x64x1
input_blocks.3.1.proj_out.bias 64
middle_block.0.in_layers.0.weight 64
middle_block.0.in_layers.0.bias 64
middle_block.0.in_layers.2.weight 64x64x3x3
middle_block.0.in_layers.2.bias 64
middle_block.0.emb_layers.1.weight 128x128
middle_block.0.emb_layers.1.bias 128
middle_block.0.out_layers.0.weight 64
middle_block.0.out_layers.0.bias 64
middle_block.0.out_layers.3.weight 64x64x3x3
middle_block.0.out_layers.3.bias 64
middle_block.1.norm.weight 64
middle_block.1.norm.bias 64
middle_block.1.qkv.weight 192x64x1
middle_block.1.qkv.bias 192
middle_block.1.proj_out.weight 64x64x1
middle_block.1.proj_out.bias 64
middle_block.2.in_layers.0.weight 64
middle_block.2.in_layers.0.bias 64
middle_block.2.in_layers.2.weight 64x64x3x3
middle_block.2.in_layers.2.bias 64
middle_block.2.emb_layers.1.weight 128x128
middle_block.2.emb_layers.1.bias 128
middle_block.2.out_layers.0.weight 64
middle_block.2.out_layers.0.bias 64
middle_block.2.out_layers.3.weight 64x64x3x3
middle_block.2.out_layers.3.bias 64
output_blocks.0.0.in_layers.0.weight 128
output_blocks.0.0.in_layers.0.bias 128
output_blocks.0.0.in_layers.2.weight 64x128x3x3
output_blocks.0.0.in_layers.2.bias 64
output_blocks.0.0.emb_layers.1.weight 128x128
output_blocks.0.0.emb_layers.1.bias 128
output_blocks.0.0.out_layers.0.weight 64
output_blocks.0.0.out_layers.0.bias 64
output_blocks.0.0.out_layers.3.weight 64x64x3x3
output_blocks.0.0.out_layers.3.bias 64
output_blocks.0.0.skip_connection.weight 64x128x1x1
output_blocks.0.0.skip_connection.bias 64
output_blocks.0.1.norm.weight 64
output_blocks.0.1.norm.bias 64
output_blocks.0.1.qkv.weight 192x64x1
output_blocks.0.1.qkv.bias 192
output_blocks.0.1.proj_out.weight 64x64x1
output_blocks.0.1.proj_out.bias 64
output_blocks.1.0.in_layers.0.weight 96
output_blocks.1.0.in_layers.0.bias 96
output_blocks.1.0.in_layers.2.weight 64x96x3x3
output_blocks.1.0.in_layers.2.bias 64
output_blocks.1.0.emb_layers.1.weight 128x128
output_blocks.1.0.emb_layers.1.bias 128
output_blocks.1.0.out_layers.0.weight 64
output_blocks.1.0.out_layers.0.bias 64
output_blocks.1.0.out_layers.3.weight 64x64x3x3
output_blocks.1.0.out_layers.3.bias 64
output_blocks.1.0.skip_connection.weight 64x96x1x1
output_blocks.1.0.skip_connection.bias 64
output_blocks.1.1.norm.weight 64
output_blocks.1.1.norm.bias 64
output_blocks.1.1.qkv.weight 192x64x1
output_blocks.1.1.qkv.bias 192
output_blocks.1.1.proj_out.weight 64x64x1
output_blocks.1.1.proj_out.bias 64
output_blocks.1.2.in_layers.0.weight 64
output_blocks.1.2.in_layers.0.bias 64
output_blocks.1.2.in_layers.2.weight 64x64x3x3
output_blocks.1.2.in_layers.2.bias 64
output_blocks.1.2.emb_layers.1.weight 128x128
output_blocks.1.2.emb_layers.1.bias 128
output_blocks.1.2.out_layers.0.weight 64
output_blocks.1.2.out_layers.0.bias 64
output_blocks.1.2.out_layers.3.weight 64x64x3x3
output_blocks.1.2.out_layers.3.bias 64
output_blocks.2.0.in_layers.0.weight 96
output_blocks.2.0.in_layers.0.bias 96
output_blocks.2.0.in_layers.2.weight 32x96x3x3
output_blocks.2.0.in_layers.2.bias 32
output_blocks.2.0.emb_layers.1.weight 64x128
output_blocks.2.0.emb_layers.1.bias 64
output_blocks.2.0.out_layers.0.weight 32
output_blocks.2.0.out_layers.0.bias 32
output_blocks.2.0.out_layers.3.weight 32x32x3x3
output_blocks.2.0.out_layers.3.bias 32
output_blocks.2.0.skip_connection.weight 32x96x1x1
output_blocks.2.0.skip_connection.bias 32
output_blocks.3.0.in_layers.0.weight 64
output_blocks.3.0.in_layers.0.bias 64
output_blocks.3.0.in_layers.2.weight 32x64x3x3
output_blocks.3.0.in_layers.2.bias 32
output_blocks.3.0.emb_layers.1.weight 64x128
output_blocks.3.0.emb_layers.1.bias 64
output_blocks.3.0.out_layers.0.weight 32
output_blocks.3.0.out_layers.0.bias 32
output_blocks.3.0.out_layers.3.weight 32x32x3x3
output_blocks.3.0.out_layers.3.bias 32
output_blocks.3.0.skip_connection.weight 32x64x1x1
output_blocks.3.0.skip_connection.bias 32
out.0.weight 32
out.0.bias 32
out.2.weight 6x32x3x3
out.2.bias 6
"""

# improved-diffusion's UNetModel state_dict() (openai/improved-diffusion), key shape, in order
IMPROVED_KEYS = """
time_embed.0.weight 128x32
time_embed.0.bias 128
time_embed.2.weight 128x128
time_embed.2.bias 128
input_blocks.0.0.weight 32x3x3x3
input_blocks.0.0.bias 32
input_blocks.1.0.in_layers.0.weight 32
input_blocks.1.0.in_layers.0.bias 32
input_blocks.1.0.in_layers.2.weight 32x32x3x3
input_blocks.1.0.in_layers.2.bias 32
input_blocks.1.0.emb_layers.1.weight 32x128
input_blocks.1.0.emb_layers.1.bias 32
input_blocks.1.0.out_layers.0.weight 32
input_blocks.1.0.out_layers.0.bias 32
input_blocks.1.0.out_layers.3.weight 32x32x3x3
input_blocks.1.0.out_layers.3.bias 32
input_blocks.2.0.op.weight 32x32x3x3
input_blocks.2.0.op.bias 32
input_blocks.3.0.in_layers.0.weight 32
input_blocks.3.0.in_layers.0.bias 32
input_blocks.3.0.in_layers.2.weight 64x32x3x3
input_blocks.3.0.in_layers.2.bias 64
input_blocks.3.0.emb_layers.1.weight 64x128
input_blocks.3.0.emb_layers.1.bias 64
input_blocks.3.0.out_layers.0.weight 64
input_blocks.3.0.out_layers.0.bias 64
input_blocks.3.0.out_layers.3.weight 64x64x3x3
input_blocks.3.0.out_layers.3.bias 64
input_blocks.3.0.skip_connection.weight 64x32x1x1
input_blocks.3.0.skip_connection.bias 64
input_blocks.3.1.norm.weight 64
input_blocks.3.1.norm.bias 64
input_blocks.3.1.qkv.weight 192x64x1
input_blocks.3.1.qkv.bias 192
input_blocks.3.1.proj_out.weight 64x64x1
input_blocks.3.1.proj_out.bias 64
middle_block.0.in_layers.0.weight 64
middle_block.0.in_layers.0.bias 64
middle_block.0.in_layers.2.weight 64x64x3x3
middle_block.0.in_layers.2.bias 64
middle_block.0.emb_layers.1.weight 64x128
middle_block.0.emb_layers.1.bias 64
middle_block.0.out_layers.0.weight 64
middle_block.0.out_layers.0.bias 64
middle_block.0.out_layers.3.weight 64x64x3x3
middle_block.0.out_layers.3.bias 64
middle_block.1.norm.weight 64
middle_block.1.norm.bias 64
middle_block.1.qkv.weight 192x64x1
middle_block.1.qkv.bias 192
middle_block.1.proj_out.weight 64x64x1
middle_block.1.proj_out.bias 64
middle_block.2.in_layers.0.weight 64
middle_block.2.in_layers.0.bias 64
middle_block.2.in_layers.2.weight 64x64x3x3
middle_block.2.in_layers.2.bias 64
middle_block.2.emb_layers.1.weight 64x128
middle_block.2.emb_layers.1.bias 64
middle_block.2.out_layers.0.weight 64
middle_block.2.out_layers.0.bias 64
middle_block.2.out_layers.3.weight 64x64x3x3
middle_block.2.out_layers.3.bias 64
output_blocks.0.0.in_layers.0.weight 128
output_blocks.0.0.in_layers.0.bias 128
output_blocks.0.0.in_layers.2.weight 64x128x3x3
output_blocks.0.0.in_layers.2.bias 64
output_blocks.0.0.emb_layers.1.weight 64x128
output_blocks.0.0.emb_layers.1.bias 64
output_blocks.0.0.out_layers.0.weight 64
output_blocks.0.0.out_layers.0.bias 64
output_blocks.0.0.out_layers.3.weight 64x64x3x3
output_blocks.0.0.out_layers.3.bias 64
output_blocks.0.0.skip_connection.weight 64x128x1x1
output_blocks.0.0.skip_connection.bias 64
output_blocks.0.1.norm.weight 64
output_blocks.0.1.norm.bias 64
output_blocks.0.1.qkv.weight 192x64x1
output_blocks.0.1.qkv.bias 192
output_blocks.0.1.proj_out.weight 64x64x1
output_blocks.0.1.proj_out.bias 64
output_blocks.1.0.in_layers.0.weight 96
output_blocks.1.0.in_layers.0.bias 96
output_blocks.1.0.in_layers.2.weight 64x96x3x3
output_blocks.1.0.in_layers.2.bias 64
output_blocks.1.0.emb_layers.1.weight 64x128
output_blocks.1.0.emb_layers.1.bias 64
output_blocks.1.0.out_layers.0.weight 64
output_blocks.1.0.out_layers.0.bias 64
output_blocks.1.0.out_layers.3.weight 64x64x3x3
output_blocks.1.0.out_layers.3.bias 64
output_blocks.1.0.skip_connection.weight 64x96x1x1
output_blocks.1.0.skip_connection.bias 64
output_blocks.1.1.norm.weight 64
output_blocks.1.1.norm.bias 64
output_blocks.1.1.qkv.weight 192x64x1
output_blocks.1.1.qkv.bias 192
output_blocks.1.1.proj_out.weight 64x64x1
output_blocks.1.1.proj_out.bias 64
output_blocks.1.2.conv.weight 64x64x3x3
output_blocks.1.2.conv.bias 64
output_blocks.2.0.in_layers.0.weight 96
output_blocks.2.0.in_layers.0.bias 96
output_blocks.2.0.in_layers.2.weight 32x96x3x3
output_blocks.2.0.in_layers.2.bias 32
output_blocks.2.0.emb_layers.1.weight 32x128
output_blocks.2.0.emb_layers.1.bias 32
output_blocks.2.0.out_layers.0.weight 32
output_blocks.2.0.out_layers.0.bias 32
output_blocks.2.0.out_layers.3.weight 32x32x3x3
output_blocks.2.0.out_layers.3.bias 32
output_blocks.2.0.skip_connection.weight 32x96x1x1
output_blocks.2.0.skip_connection.bias 32
output_blocks.3.0.in_layers.0.weight 64
output_blocks.3.0.in_layers.0.bias 64
output_blocks.3.0.in_layers.2.weight 32x64x3x3
output_blocks.3.0.in_layers.2.bias 32
output_blocks.3.0.emb_layers.1.weight 32x128
output_blocks.3.0.emb_layers.1.bias 32
output_blocks.3.0.out_layers.0.weight 32
output_blocks.3.0.out_layers.0.bias 32
output_blocks.3.0.out_layers.3.weight 32x32x3x3
output_blocks.3.0.out_layers.3.bias 32
output_blocks.3.0.skip_connection.weight 32x64x1x1
output_blocks.3.0.skip_connection.bias 32
out.0.weight 32
out.0.bias 32
out.2.weight 3x32x3x3
out.2.bias 3
"""
