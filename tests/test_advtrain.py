"""trustdiff.advtrain: the TRADES / Madry losses against direct computations, the real/generated
mix of every batch, the epoch length's independence of the generated set, SGD's groups and the EMA
and LR schedules, resume after a kill, generated shards (resumable, sharded, filtered)."""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trustdiff.advtrain import (AdvTrainJob, MixedStream, adversarial_loss_fn, filter_top_k, iterations_per_epoch,
                                load_generated, real_count, train_adv, trades_loss)
from trustdiff.advtrain import training as T
from trustdiff.attacks import pgd
from trustdiff.errors import InputError
from trustdiff.nets import WideResNet, parse_arch
from trustdiff.train import TrainConfig, ema_beta_dynamic, lr_at, param_groups
from trustdiff.train.loop import make_optimizer

torch.set_num_threads(1)


def _toy():
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(6, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (6,), generator=g)
    return net, x, y


def test_trades_loss_is_the_direct_formula():
    net, x, y = _toy()
    x_adv = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    z, za = net(x), net(x_adv)
    s, beta, k = 0.1, 5.0, 3
    q = (1 - s) * F.one_hot(y, k) + s / k                                  # smoothed targets
    p, pa = torch.softmax(z, 1), torch.softmax(za, 1)
    direct = -(q * p.log()).sum(1) + beta * (p * (p.log() - pa.log())).sum(1)
    torch.testing.assert_close(trades_loss(z, za, y, beta=beta, smoothing=s), direct)
    # the gradient flows through both p(x) and p(x′), as in the reference
    trades_loss(z, za, y, beta=beta).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_trades_step_equals_the_loss_at_the_attack_from_the_same_generator():
    net, x, y = _toy()
    fn = adversarial_loss_fn("trades", eps=0.1, alpha=0.025, steps=5, beta=6.0, smoothing=0.0)
    got = fn(net, x, y, torch.Generator().manual_seed(3))
    x_adv = pgd(net, x, y, eps=0.1, alpha=0.025, steps=5, loss="kl", generator=torch.Generator().manual_seed(3))
    z, za = net(x), net(x_adv)
    want = F.cross_entropy(z, y, reduction="none") + 6.0 * F.kl_div(F.log_softmax(za, 1), F.softmax(z, 1), reduction="none").sum(1)
    torch.testing.assert_close(got, want)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6
    # the attack ascends the KL: it beats the start point
    kl = lambda xa: F.kl_div(F.log_softmax(net(xa), 1), F.softmax(z, 1), reduction="none").sum(1).mean()
    start = pgd(net, x, y, eps=0.1, alpha=0.025, steps=0, loss="kl", generator=torch.Generator().manual_seed(3))
    assert kl(x_adv) > kl(start)


def test_madry_loss_is_smoothed_ce_at_the_pgd_point():
    net, x, y = _toy()
    got = adversarial_loss_fn("madry", eps=0.1, alpha=0.025, steps=4)(net, x, y, torch.Generator().manual_seed(5))
    x_adv = pgd(net, x, y, eps=0.1, alpha=0.025, steps=4, loss="ce", generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, F.cross_entropy(net(x_adv), y, reduction="none", label_smoothing=0.1))


def test_an_augmented_step_is_the_loss_at_the_augmented_batch_with_its_targets():
    from trustdiff.advtrain.augment import augment

    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    x, y = torch.rand(8, 1, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
    for name in ("cutmix", "idbh"):
        got = adversarial_loss_fn("madry", eps=0.1, alpha=0.025, steps=3, augment=name, num_classes=3)(
            net, x, y, torch.Generator().manual_seed(4))
        gen = torch.Generator().manual_seed(4)                      # the same stream: augment, then the attack
        xa, t = augment(name, x, y, 3, gen)
        x_adv = pgd(net, xa, t.argmax(1), eps=0.1, alpha=0.025, steps=3, loss="ce", generator=gen)
        torch.testing.assert_close(got, F.cross_entropy(net(x_adv), t, reduction="none", label_smoothing=0.1))
    with pytest.raises(InputError, match="num_classes"):
        adversarial_loss_fn("trades", eps=0.1, alpha=0.025, augment="cutout")
    with pytest.raises(InputError, match="augment"):
        AdvTrainJob(augment="mixup")


def test_the_attack_runs_in_eval_mode_and_restores_train_mode():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 3)).train()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    before = net[1].running_mean.clone()
    fn = adversarial_loss_fn("madry", eps=0.1, alpha=0.025, steps=3)
    seen = []
    net[1].register_forward_pre_hook(lambda m, a: seen.append(m.training))
    fn(net, x, y, torch.Generator().manual_seed(0))
    assert seen == [False] * 3 + [True] and net.training           # 3 attack passes in eval, the loss in train
    assert not torch.equal(before, net[1].running_mean)            # only the training pass moved the statistics


@pytest.mark.parametrize("n_gen,frac", [(700, 0.3), (5000, 0.3), (300, 0.5)])
def test_every_batch_has_the_set_real_fraction(n_gen, frac):
    n_real, b = 97, 32
    s = MixedStream(n_real + n_gen, 0, n_real=n_real, real_fraction=frac)
    seen_real = []
    for _ in range(20):
        idx = s.take(b)
        real = idx[idx < n_real]
        assert len(idx) == b and len(real) == real_count(b, frac) == round(b * frac)
        assert int(idx.max()) < n_real + n_gen and len(set(idx.tolist())) == b
        seen_real += real.tolist()
    # each source is visited evenly: the first full epoch of real images is a permutation
    assert sorted(seen_real[:n_real]) == list(range(n_real))


def test_without_generated_images_every_batch_is_real():
    s = MixedStream(50, 0, n_real=50, real_fraction=0.3)
    assert len(s.take(16)) == 16 and s.position["gen"] is None


def test_mixed_stream_resumes_at_its_position():
    a = MixedStream(400, 1, n_real=100, real_fraction=0.3)
    for _ in range(7):
        a.take(32)
    b = MixedStream(400, 1, n_real=100, real_fraction=0.3, **a.position)
    for _ in range(5):
        assert torch.equal(a.take(32), b.take(32))


def _gen_npz(path, n, res=8, seed=0):
    g = np.random.default_rng(seed)
    buf = io.BytesIO()
    np.savez(buf, images=g.integers(0, 256, (n, res, res, 1), dtype=np.uint8), labels=np.arange(n) % 10,
             seeds=np.arange(n))
    path.write_bytes(buf.getvalue())
    return path


def _job(tmp_path, **kw):
    base = dict(resolution=8, generated=str(_gen_npz(tmp_path / "gen.npz", 400)), n_generated=None, arch="small-cnn",
                width=4, epochs=2, iters_per_epoch=None, batch_size=32, lr=0.05, warmup_epochs=1, holdout=64,
                attack_steps=2, select_steps=2, eps=0.1)
    return AdvTrainJob(**{**base, **kw})


def test_iterations_per_epoch_do_not_depend_on_the_generated_set(tmp_path):
    _gen_npz(tmp_path / "big.npz", 4000)
    small = T.prepare(_job(tmp_path, n_generated=100))
    big = T.prepare(_job(tmp_path, generated=str(tmp_path / "big.npz"), n_generated=4000))
    none = T.prepare(_job(tmp_path, generated=None))
    n_real = small[1]
    assert small[4] == big[4] == none[4] == iterations_per_epoch(n_real, 32) == math.ceil(n_real / 32)
    assert small[5].steps == big[5].steps and len(big[0][0]) == n_real + 4000


def test_sgd_skips_weight_decay_on_norm_layers_and_uses_nesterov():
    net = WideResNet(10, 1, in_channels=1, resolution=8)
    opt = make_optimizer("sgd", net, TrainConfig(lr=0.1, weight_decay=5e-4, momentum=0.9))
    decay, no_decay = opt.param_groups
    norm_params = {id(p) for m in net.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()}
    assert {id(p) for p in no_decay["params"]} == norm_params and no_decay["weight_decay"] == 0
    assert decay["weight_decay"] == 5e-4 and decay["nesterov"] and decay["momentum"] == 0.9
    assert len(param_groups(nn.Linear(2, 2), 0.1)) == 1                     # no empty group


def test_cosine_schedule_and_dynamic_ema():
    cfg = TrainConfig(steps=110, lr=0.2, warmup_steps=10, schedule="cosine")
    assert lr_at(0, cfg) == pytest.approx(0.02) and lr_at(9, cfg) == pytest.approx(0.2)
    assert lr_at(10, cfg) == pytest.approx(0.2) and lr_at(60, cfg) == pytest.approx(0.1) and lr_at(110, cfg) == pytest.approx(0)
    assert ema_beta_dynamic(5, 0.995, 10) == 0.0                               # the model itself during warm-up
    assert ema_beta_dynamic(10, 0.995, 10) == pytest.approx(0.1)               # (1 + 0) / (10 + 0)
    assert ema_beta_dynamic(10_000, 0.995, 10) == 0.995


def test_wide_resnet_sizes_and_arch_names():
    assert sum(p.numel() for p in WideResNet(28, 10).parameters()) == pytest.approx(36.48e6, rel=1e-3)
    assert parse_arch("wrn-70-16") == ("wrn", {"depth": 70, "width": 16}) and parse_arch("small-cnn")[0] == "small-cnn"
    with pytest.raises(InputError, match="wrn-DEPTH-WIDTH"):
        parse_arch("resnet50")
    with pytest.raises(InputError, match="depth"):
        WideResNet(27, 2)


class _Killed(Exception):
    pass


def test_resume_after_a_kill_continues_at_the_same_step(tmp_path, monkeypatch):
    job = _job(tmp_path)
    ref = train_adv(job, tmp_path / "ref", progress=False)
    real_score = T.select_score
    calls = {"n": 0}

    def dies_after_first_checkpoint(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise _Killed                                 # after the epoch-1 checkpoint, before its evaluation
        return real_score(*a, **k)

    monkeypatch.setattr(T, "select_score", dies_after_first_checkpoint)
    with pytest.raises(_Killed):
        train_adv(job, tmp_path / "run", progress=False)
    out = train_adv(job, tmp_path / "run", resume=True, progress=False)
    assert out["steps"] == ref["steps"] == 2 * ref["iters_per_epoch"]
    assert out["best"] == ref["best"] and out["last"] == ref["last"]
    a = (tmp_path / "ref" / "last" / "model.safetensors").read_bytes()
    b = (tmp_path / "run" / "last" / "model.safetensors").read_bytes()
    assert a == b                                          # bit-identical weights
    rows = [json.loads(line) for line in (tmp_path / "run" / "epochs.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_filter_keeps_the_most_confident_per_class():
    x = torch.rand(30, 1, 4, 4)
    y = torch.arange(30) % 3

    class ByMean(nn.Module):                             # confidence in class c grows with the image mean
        def forward(self, x):
            m = x.flatten(1).mean(1, keepdim=True)
            return torch.cat([m, m, m], 1) * torch.tensor([10.0, 0.0, -10.0])

    keep = filter_top_k(x, y, ByMean(), 2)
    assert len(keep) == 6 and sorted((y[keep] == c).sum().item() for c in range(3)) == [2, 2, 2]
    for c, sign in ((0, 1), (2, -1)):
        idx = (y == c).nonzero()[:, 0]
        best = idx[(sign * x[idx].flatten(1).mean(1)).argsort(descending=True)[:2]]
        assert set(best.tolist()) == set(keep[y[keep] == c].tolist())


def test_load_generated_errors_are_one_line(tmp_path):
    _gen_npz(tmp_path / "g.npz", 10)
    with pytest.raises(InputError, match="holds 10") as e:
        load_generated(tmp_path / "g.npz", 11)
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="images-"):
        load_generated(tmp_path)
    with pytest.raises(InputError, match="expected"):
        T.prepare(_job(tmp_path, generated=str(_gen_npz(tmp_path / "big16.npz", 10, res=16))))


def test_shards_resume_and_split_across_processes_give_the_same_set(tmp_path):
    from trustdiff.diffusion.model import ModelSpec, build_denoiser, write_shards

    spec = ModelSpec(size="tiny", resolution=8, num_classes=10)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        _, den = build_denoiser(spec)
    kw = dict(shard_size=4, seed=11, sampler="euler", steps=2)
    whole = write_shards(den, spec, tmp_path / "one", 10, **kw)
    for rank in (1, 0):                                          # two "processes", in any order
        write_shards(den, spec, tmp_path / "two", 10, rank=rank, world=2, **kw)
    (tmp_path / "two" / "images-00001.npz").unlink()             # a killed run lost a shard: resume
    again = write_shards(den, spec, tmp_path / "two", 10, **kw)
    assert [p.name for p in whole] == [p.name for p in again] == ["images-00000.npz", "images-00001.npz", "images-00002.npz"]
    for a, b in zip(whole, again):
        assert a.read_bytes() == b.read_bytes()
    x, y = load_generated(tmp_path / "one")
    assert x.shape == (10, 1, 8, 8) and y.tolist() == [i % 10 for i in range(10)]


def test_an_unconditional_set_is_pseudo_labelled_and_filtered_by_confidence(tmp_path):
    from trustdiff.advtrain import write_pseudo_labelled
    from trustdiff.diffusion.model import ModelSpec, build_denoiser, write_shards

    spec = ModelSpec(size="tiny", resolution=8, num_classes=None)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        _, den = build_denoiser(spec)
    write_shards(den, spec, tmp_path / "u", 12, shard_size=5, seed=3, sampler="euler", steps=2)
    with pytest.raises(InputError, match="pseudo-labelled"):
        load_generated(tmp_path / "u")                       # unlabelled until a classifier labels them

    class ByMean(nn.Module):                                 # class 0 for bright images, 1 for dark, sharply
        def forward(self, x):
            m = x.flatten(1).mean(1, keepdim=True) - 0.5
            return torch.cat([m, -m], 1) * 40.0

    from trustdiff.advtrain.generated import _read, shard_paths
    x_all, _, seeds_all = _read(shard_paths(tmp_path / "u"))
    p = torch.softmax(ByMean()(x_all), 1)
    write_pseudo_labelled(tmp_path / "u", ByMean(), min_confidence=0.9, classifier_name="by-mean")
    x, y = load_generated(tmp_path / "u")
    want = p.max(1).values >= 0.9
    assert 0 < int(want.sum()) < 12                          # the filter keeps some and drops some
    assert len(x) == int(want.sum()) and torch.equal(y, p.argmax(1)[want]) and torch.allclose(x, x_all[want])
    meta = json.loads((tmp_path / "u" / "labelled.json").read_text())
    assert meta["labeller"] == "by-mean" and meta["min_confidence"] == 0.9 and meta["generated"] == 12
    assert meta["kept"] == len(x) and sum(meta["per_class"]) == len(x)
    with pytest.raises(InputError, match="min_confidence"):
        write_pseudo_labelled(tmp_path / "u", ByMean(), min_confidence=1.5)


def test_cli_train_then_eval(tmp_path):
    from trustdiff.cli import main

    gen = _gen_npz(tmp_path / "gen.npz", 200)
    run, ev = tmp_path / "at", tmp_path / "ev"
    args = ["advtrain", "train", "--resolution", "8", "--generated", str(gen), "--arch", "small-cnn", "--epochs", "2",
            "--batch", "32", "--lr", "0.05", "--warmup-epochs", "1", "--holdout", "64", "--attack-steps", "2",
            "--eps", "0.1", "--iters-per-epoch", "3", "--augment", "cutmix", "--out", str(run)]
    assert main(args) == 0
    assert json.loads((run / "metrics.json").read_text())["augment"] == "cutmix"
    assert {"best", "last", "epochs.jsonl", "metrics.json"} <= {p.name for p in run.iterdir()}
    assert main(["advtrain", "eval", "--run", str(run), "-n", "32", "--no-autoattack", "--n-check", "8",
                 "--out", str(ev)]) == 0
    res = json.loads((ev / "metrics.json").read_text())
    assert set(res["models"]) == {"best", "last"} and res["n"] == 32
    assert "PGD-40" in (ev / "report.md").read_text()
    # bad input: one line, nothing written
    assert main(args[:-1] + [str(tmp_path / "bad"), "--arch", "resnet"]) == 2
    assert not (tmp_path / "bad").exists()
    assert main(["advtrain", "train", "--generated", str(tmp_path / "none"), "--out", str(tmp_path / "bad2")]) == 2
    assert not (tmp_path / "bad2").exists()


def test_cli_sweep_over_sampling_steps_of_a_pseudo_labelled_unconditional_model(tmp_path):
    from trustdiff.cli import main

    model, clf, out = tmp_path / "u", tmp_path / "clf", tmp_path / "sweep"
    assert main(["train", "--unconditional", "--resolution", "8", "--size", "tiny", "--steps", "2", "--batch", "8",
                 "--out", str(model)]) == 0
    assert main(["train-classifier", "--resolution", "8", "--steps", "3", "--width", "4", "--out", str(clf)]) == 0
    args = ["advtrain", "sweep", "--model", str(model), "--sample-steps", "1,2", "-n", "24", "--sampler", "euler",
            "--label-classifier", str(clf), "--resolution", "8", "--arch", "small-cnn", "--width", "4", "--epochs", "1",
            "--iters-per-epoch", "2", "--batch", "16", "--holdout", "32", "--attack-steps", "1", "--no-autoattack",
            "--test-images", "16", "--n-check", "4", "--feature-steps", "5", "--out", str(out)]
    assert main(args) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert [r["steps"] for r in m["rows"]] == [1, 2] and m["labeller"] == str(clf)
    assert all(r["fd"] > 0 and r["fd_floor"] > 0 and r["pgd40"]["n"] == 16 for r in m["rows"])
    assert m["fd_vs_robust"]["robust"] == "pgd40" and m["fd_vs_robust"]["n"] == 2
    assert (out / "steps-1" / "generated" / "labelled.json").is_file() and "Spearman" in (out / "report.md").read_text()
    before = (out / "steps-2" / "eval.json").stat().st_mtime_ns
    assert main(args[:-1] + [str(out), "--resume"]) == 0                    # every part on disk: nothing reruns
    assert (out / "steps-2" / "eval.json").stat().st_mtime_ns == before
    # an unconditional model without a labeller: one line, nothing written
    i = args.index("--label-classifier")
    assert main(args[:i] + args[i + 2:-1] + [str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
