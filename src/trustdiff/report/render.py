"""The report: one self-contained HTML file (images embedded as data URIs) built from run folders.

    html = build_report("runs/demo")            # → str
    write_report("runs/demo", "runs/demo/report.html")

Every section shows the numbers its runs measured, each rate with its n and 95% interval; a section
with no run says so (and, for a demo stage that failed, shows the error). On load, a small script
counts the images each section rendered into ``<body data-rendered=...>`` so a headless browser can
check the page.
"""
from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

from ..persist import atomic_write_bytes
from ..errors import InputError
from .runs import SECTIONS, Run, by_section, find_runs, read_stages


# ---- small HTML pieces ---------------------------------------------------------------------------

def esc(v) -> str:
    return html.escape(str(v))


def png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def img(data: bytes, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<figure><img src="{png_uri(data)}" alt="{esc(alt)}"{w}><figcaption>{esc(alt)}</figcaption></figure>'


def img_file(path: Path, alt: str, width: int | None = None) -> str:
    return img(Path(path).read_bytes(), alt, width) if Path(path).is_file() else ""


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if isinstance(c, Raw) else esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Raw(str):
    """A table cell that is already HTML."""


def rate(p: dict | None) -> str:
    """A proportion dict (``metrics.proportion``) as "0.812 [0.700, 0.893], n = 64"."""
    if not isinstance(p, dict) or "value" not in p:
        return "–"
    return f"{p['value']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}], n = {p['n']}"


def num(v, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{esc(text)}</p>'


def fig_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def new_figure(w: float = 5.0, h: float = 3.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def bar_chart(groups: dict[str, list[tuple[str, dict]]], title: str, ylabel: str = "accuracy") -> bytes:
    """Grouped bars of proportions with their 95% intervals as error bars: {group: [(bar, p)]}."""
    fig = new_figure(max(4.0, 1.3 * sum(len(v) for v in groups.values()) ** 0.8 + 2), 3.2)
    ax = fig.add_subplot()
    names = list(dict.fromkeys(n for bars in groups.values() for n, _ in bars))
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for i, bars in enumerate(groups.values()):
            for n, p in bars:
                if n == name and isinstance(p, dict):
                    xs.append(i + (j - (len(names) - 1) / 2) * width)
                    ys.append(p["value"])
                    lo.append(p["value"] - p["lo"])
                    hi.append(p["hi"] - p["value"])
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=name)
    ax.set_xticks(range(len(groups)), list(groups), fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig_png(fig)


def run_link(run: Run) -> str:
    return f'<p class="run">run <code>{esc(run.path)}</code> · <code>trustdiff {esc(run.command)}</code></p>'


# ---- sections ------------------------------------------------------------------------------------

def _loss_curve(run: Run) -> str:
    path = run.path / "metrics.jsonl"
    if not path.is_file():
        return ""
    pts = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if "loss" in rec and "step" in rec:
            pts.append((rec["step"], rec["loss"]))
    if len(pts) < 2:
        return ""
    fig = new_figure(4.5, 3.0)
    ax = fig.add_subplot()
    ax.plot([p[0] for p in pts], [p[1] for p in pts])
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (window mean)")
    ax.set_title(f"diffusion training loss, {len(pts)} logged windows", fontsize=9)
    fig.tight_layout()
    return img(fig_png(fig), "diffusion training loss")


def section_diffusion(runs: list[Run]) -> str:
    parts = []
    for r in runs:
        m, c = r.metrics or {}, r.config
        if r.command == "train":
            parts.append(run_link(r) + table(["data", "resolution", "network", "steps", "last loss"],
                                             [[c.get("data"), c.get("resolution"), c.get("size"), m.get("steps"),
                                               num(m.get("last_loss"))]]) + _loss_curve(r))
        else:
            rows = [["images", m.get("num_images")], ["sampler, NFE", f"{c.get('sampler')}, {m.get('nfe')}"],
                    ["images / s", num(m.get("images_per_s"), 1)]]
            fd = m.get("fd")
            if isinstance(fd, dict):
                rows += [[f"{fd.get('fd_name', 'FD')} against the test split", num(fd.get("fd"))],
                         ["real-data floor FD(train, test)", num(fd.get("fd_floor"))],
                         ["ratio to the floor", num(fd.get("fd_ratio"), 2)],
                         ["images (generated / test / train)", f"{fd.get('n_fake')} / {fd.get('n_test')} / {fd.get('n_train')}"]]
            parts.append(run_link(r) + img_file(r.path / "grid.png", "generated samples, one class per column", 320)
                         + table(["", "value"], rows))
    return "".join(parts)


def _attack_report(r: Run) -> str:
    """``watermark attack``: each attack's TPR, Bit-Acc and cost per set, the clean FPR under it,
    regeneration per t*, model-level attacks, and the summary lines."""
    import json

    m = r.metrics
    lo = f"{m['fpr']:g}"

    def read(name):
        try:
            return json.loads((r.path / name).read_text())
        except (OSError, ValueError):
            return None
    att = read("attacks.json") or {"rows": [], "sets": []}
    sets = att.get("sets", [])
    rows = [[a["attack"]] + [f"{rate(a[s][f'tpr@{lo}'])} · Bit-Acc {num(a[s]['bit_acc'])} · PSNR {num(a[s]['psnr'], 1)}" for s in sets]
            + [rate(a["clean"][f"fpr@{lo}"])] for a in att["rows"]]
    html = table(["attack", *(f"{s}: TPR at FPR {lo}" for s in sets), f"clean images detected at {lo}"], rows)
    regen = read("regeneration.json")
    if regen:
        html += f"<h3>Regeneration with a clean model ({regen['solver']}, {regen['steps']} steps)</h3>" + table(
            ["t*", *(f"{s}: TPR · PSNR" for s in sets), "clean detected"],
            [[f"{g['t_star']:g}", *(f"{rate(g[s][f'tpr@{lo}'])} · {num(g[s]['psnr'], 1)} dB" for s in sets),
              rate(g["clean"][f"fpr@{lo}"])] for g in regen["rows"]])
    model = read("model_attacks.json")
    if model and model.get("rows"):
        html += "<h3>Model-level attacks</h3>" + table(
            ["attack", f"TPR at FPR {lo}", "Bit-Acc", "FD"],
            [[g["attack"], rate(g[f"tpr@{lo}"]), num(g["bit_acc"]), num(g.get("fd"))] for g in model["rows"]])
    cheap = "; ".join(f"{s}: " + ("none found" if c is None else c.get("attack") or c.get("note", ""))
                      for s, c in m.get("cheapest_removal", {}).items())
    return html + note(f"Detection reads every image under the search '{m.get('search')}' ({m.get('searched')} transforms; "
                       f"the p-value carries the union bound over them; thresholds {m.get('thresholds')}). Cheapest removal "
                       f"found (TPR below 0.5 at the highest PSNR): {cheap}.")


def section_watermark(runs: list[Run]) -> str:
    parts = []
    for r in runs:
        m = r.metrics or {}
        if r.command == "watermark attack":
            parts.append(run_link(r) + _attack_report(r))
            continue
        h, codec, emb = m.get("headline", {}), m.get("codec", {}).get("heldout", {}), m.get("embed", {})
        n_bits = len(m.get("key", {}).get("bits", "")) or "?"
        rows = [["codec on held-out images (random keys, uint8)",
                 f"Bit-Acc {num(codec.get('bit_acc'))}, PSNR {num(codec.get('psnr'), 2)} dB, SSIM {num(codec.get('ssim'))}, "
                 f"n = {codec.get('images')}"],
                ["watermarked training set", f"PSNR {num(emb.get('psnr_mean'), 2)} dB, SSIM {num(emb.get('ssim_mean'))}, "
                                             f"n = {emb.get('images')}"]]
        gen = table(["generated images", "watermarked model", "clean model (null)"], [
            ["Bit-Acc (mean)", num(h.get("bit_acc_watermarked_model")), num(h.get("bit_acc_clean_model"))],
            [f"detected at FPR {h.get('fpr')} (threshold {h.get('threshold')}/{n_bits}, {h.get('threshold_mode')})",
             rate(h.get("detected_watermarked_model")), rate(h.get("detected_clean_model"))],
            ["FD against the test split", num(h.get("fd_watermarked")), num(h.get("fd_clean"))]])
        wn = ""
        if m.get("weight_noise"):
            wn = "<h3>Gaussian noise on the watermarked model's weights</h3>" + table(
                ["std", "Bit-Acc", "detected", "FD"],
                [[f"{w['std']:g}", num(w["bit_acc"]), rate(w["detected"]), num(w.get("fd"))] for w in m["weight_noise"]]) \
                + img_file(r.path / "weight_noise.png", "Bit-Acc and FD against weight-noise std")
        grids = "".join(img_file(r.path / f"generated-{k}.png", f"generated by the {k} model", 240)
                        for k in ("watermarked", "clean"))
        parts.append(run_link(r) + img_file(r.path / "examples.png",
                                            "top: original; middle: watermarked; bottom: difference ×10 (+0.5)", 480)
                     + table(["", "value"], rows) + grids + gen + wn)
    return "".join(parts)


def _t2i_row(name: str, row: dict, thr) -> list:
    t, nt, fd = row.get("trigger", {}), row.get("non_trigger"), row.get("fd") or {}
    ratio = row.get("fd_vs_original")
    return [name, rate(t.get("match")), num(t.get("ssim_mean"), 3),
            f"{num(nt['psnr_mean'], 2)} dB / {num(nt['ssim_mean'], 3)}, n = {nt['n']}" if nt else "(reference)",
            num(row.get("non_trigger_ssim_to_target"), 3),
            (num(fd.get("fd"), 3) + (f" ({ratio:.2f}×)" if ratio is not None else "")) if fd else "–"]


def _psnr_ssim(c: dict | None) -> str:
    return f"{num(c['psnr_mean'], 2)} dB / {num(c['ssim_mean'], 3)}, n = {c['n']}" if isinstance(c, dict) and "n" in c else "–"


def _t2i_context_row(name: str, row: dict) -> list:
    c, nv = row.get("context") or {}, row.get("novel") or {}
    ratio = nv.get("fd_vs_original")
    fd = nv.get("fd") or {}
    return [name, rate(c.get("match")), num(c.get("ssim_to_target"), 3), _psnr_ssim(c.get("vs_free")),
            _psnr_ssim(c.get("vs_free_reference")) if "vs_free_reference" in c else "(reference)",
            _psnr_ssim(nv) if "psnr_mean" in nv else "(reference)",
            (num(fd.get("fd"), 3) + (f" ({ratio:.2f}×)" if ratio is not None else "")) if fd else "–"]


def section_t2i(runs: list[Run]) -> str:
    """``watermark t2i verify``: the target, the trigger's outputs, non-trigger prompts before
    (original) and after (watermarked) from the same seeds, the trigger inside sentences (a row of
    its outputs per model), novel phrasings, and the figures of each model."""
    parts = []
    for r in runs:
        m = r.metrics or {}
        thr, models = m.get("threshold"), m.get("models", {})
        figs = img_file(r.path / "target.png", f"target (the watermark) for the trigger {m.get('trigger')!r}", 64)
        for name in models:
            figs += img_file(r.path / f"samples-{name}-trigger.png",
                             f"{name}: the trigger's outputs, seeds {m.get('seed')}…", 288)
        figs += "<br>" + img_file(r.path / "samples-original.png",
                                  "before: the original model on non-trigger prompts (a row per prompt)", 288)
        for name in models:
            figs += img_file(r.path / f"samples-{name}.png", f"after: {name}, the same prompts and seeds", 288)
        context = m.get("context") or []
        if context:
            figs += "<br>" + "".join(
                img_file(r.path / f"samples-{name}-context.png",
                         f"{name}: the trigger inside sentences ({'; '.join(s for s, _ in context[:4])}{'; …' if len(context) > 4 else ''}),"
                         " a row per sentence, the same seeds as above", 288)
                for name in ("original", *models))
        rows = [_t2i_row("original", m.get("original", {}), thr)] + [_t2i_row(k, v, thr) for k, v in models.items()]
        prompts = m.get("prompts", [])
        parts.append(run_link(r) + figs + table(
            ["model", f"trigger match (SSIM ≥ {thr}) [95% CI], n", "trigger SSIM (mean)",
             "non-trigger vs original: PSNR / SSIM", "non-trigger SSIM to target", "FD (× original's)"], rows)
            + note(f"Non-trigger prompts: {len(prompts)} ({'; '.join(prompts[:3])}{'; …' if len(prompts) > 3 else ''}), "
                   f"{m.get('n_per_prompt')} seeds each, the same seeds for every model; FD against the data's test "
                   "split. The original's trigger match is its false-match rate."))
        if context or m.get("novel"):
            crow = [_t2i_context_row("original", m.get("original", {}))] + [_t2i_context_row(k, v) for k, v in models.items()]
            parts.append(table(
                ["model", f"trigger in context: output matches the target (SSIM ≥ {thr}) [95% CI], n",
                 "in context: SSIM to target (mean)", "in context vs the sentence without the trigger, same model: PSNR / SSIM",
                 "in context vs the original's output for the sentence without it", "novel phrasings vs original: PSNR / SSIM",
                 "novel phrasings: FD (× original's)"], crow)
                + note(f"Trigger in context: {len(context)} sentences, each a non-trigger prompt with the trigger inserted "
                       "(held out from any training), compared with the output for the same sentence without the trigger "
                       f"from the same seed. Novel phrasings: {len(m.get('novel') or [])} prompts in no caption template "
                       f"({'; '.join((m.get('novel') or [])[:3])}{'; …' if len(m.get('novel') or []) > 3 else ''})."))
    return "".join(parts)


def certify_label(c: dict) -> str:
    kind = ("denoised smoothing" if c.get("denoiser") else
            "noise-trained" if (c.get("classifier_noise_sigma") or 0) > 0 else "smoothed (standard classifier)")
    return f"{kind}, σ = {c.get('sigma')}"


def section_certify(runs: list[Run]) -> str:
    from ..certify import report as cr

    curves, rows, parts = {}, [], []
    clfs = [r for r in runs if r.command == "train-classifier" and r.finished]
    if clfs:
        parts.append(table(["classifier", "noise σ (training)", "test accuracy"],
                           [[Raw(f"<code>{esc(r.name)}</code>"), r.metrics.get("noise_sigma"),
                             f"{num(r.metrics.get('test_accuracy'), 3)} (n = {r.metrics.get('test_images')})"] for r in clfs]))
    radii = None
    for r in runs:
        if r.command != "certify" or not r.finished or not (r.path / cr.TSV).is_file():
            continue
        label = certify_label(r.metrics.get("settings", r.config))
        curves[label] = cr.read_tsv(r.path / cr.TSV)
        m = r.metrics
        radii = radii or list(m["certified_accuracy"])
        rows.append([label, m["num_images"], m["n"], m["alpha"]] +
                    [f"{m['certified_accuracy'][k]:.3f} [{m['certified_accuracy_ci95'][k][0]:.2f}, "
                     f"{m['certified_accuracy_ci95'][k][1]:.2f}]" for k in radii])
    if curves:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "curve.png"
            n_img = sorted({len(v) for v in curves.values()})
            cr.plot_curves(p, curves, title=f"certified accuracy vs L2 radius ({'/'.join(map(str, n_img))} test images)")
            parts.append(img(p.read_bytes(), "certified accuracy against radius, one line per classifier"))
        parts.append(table(["classifier", "images", "n", "α"] + [f"r = {k}" for k in radii], rows))
        parts.append(note("Each cell: certified accuracy with its 95% Clopper–Pearson interval over the test images; "
                          "each certificate holds with probability 1 − α."))
    return "".join(parts)


def _attack_rows(label: str, rep: dict) -> list[list]:
    rows = [[label, "clean", rate(rep["clean"])]]
    for a in rep["attacks"]:
        rows.append([label, f"{a['name']} ({a['norm']} ε = {a['eps']:g}, {a['steps']} steps, EOT {a['eot']})", rate(a["robust"])])
    rows.append([label, "worst case over attacks", rate(rep["worst_case"])])
    return rows


def verdict(rep: dict) -> str:
    skipped = sum(bool(c.get("skipped")) for c in rep.get("checks", []))
    if rep.get("reliable"):
        return "reliable" + (f" (on the checks made; {skipped} skipped)" if skipped else "")
    return "UNRELIABLE: " + "; ".join(rep.get("unreliable_reasons", []))


def _checks(rep: dict) -> str:
    items = "".join(f"<li>{'SKIPPED' if c.get('skipped') else 'PASS' if c['passed'] else 'FAIL'} "
                    f"{esc(c['name'])}: {esc(c['detail'])}</li>" for c in rep.get("checks", []))
    return f"<p>Soundness checks on {rep.get('n_check')} images: <b>{esc(verdict(rep))}</b></p><ul class='checks'>{items}</ul>"


def section_purify(runs: list[Run]) -> str:
    parts = []
    for r in runs:
        m = r.metrics or {}
        c, rows = m.get("config", r.config), []
        if "undefended" in m:
            rows += _attack_rows("without DiffPure", m["undefended"])
        if "diffpure" in m:
            rows += _attack_rows(f"DiffPure t* = {c.get('t_star')}, {c.get('solver')} × {c.get('steps')}", m["diffpure"])
        groups = {label: [("clean", rep["clean"]), ("worst case under attack", rep["worst_case"])]
                  for label, rep in (("without DiffPure", m.get("undefended")), ("with DiffPure", m.get("diffpure"))) if rep}
        chart = img(bar_chart(groups, f"clean and robust accuracy, L∞ ε = {c.get('eps')}, n = {m.get('diffpure', {}).get('n')} "
                                      "(95% intervals)"), "accuracy with and without DiffPure") if groups else ""
        parts.append(run_link(r) + chart + table(["classifier", "evaluation", "accuracy [95% CI]"], rows)
                     + (_checks(m["diffpure"]) if "diffpure" in m else ""))
    return "".join(parts)


def _read_config(folder: Path) -> dict:
    try:
        return json.loads((Path(folder) / "config.json").read_text()).get("config", {})
    except (OSError, ValueError, AttributeError):
        return {}


def _advtrain_label(r: Run) -> str:
    """"real only" or "real + N generated" from the evaluated training run's config."""
    run_dir = Path((r.metrics or {}).get("run", ""))
    cfg = _read_config(run_dir)
    if not cfg:
        return run_dir.name or r.name
    if not cfg.get("generated"):
        return "real only"
    n = cfg.get("n_generated")
    if n is None:
        try:
            n = json.loads((Path(cfg["generated"]) / "metrics.json").read_text()).get("num_images")
        except (OSError, ValueError, TypeError):
            n = None
    return f"real + {n if n is not None else 'all'} generated ({float(cfg.get('real_fraction', 0.3)):.0%} real per batch)"


def section_advtrain(runs: list[Run]) -> str:
    rows, checks, groups = [], [], {}
    for r in runs:
        m = r.metrics or {}
        if "models" not in m:
            continue
        label = _advtrain_label(r)
        for which in ("best", "last"):
            rep = m["models"][which]["report"]
            groups[f"{label.split(' (')[0]}, {which}"] = [("clean", rep["clean"]), ("worst case under attack", rep["worst_case"])]
        for which, mm in m["models"].items():
            rep = mm["report"]
            aa = [a for a in rep["attacks"] if a["name"].startswith("autoattack")]
            pgd = [a for a in rep["attacks"] if a["name"].startswith("pgd")]
            rows.append([label, f"{which} (epoch {mm.get('epoch')})", rate(rep["clean"]),
                         rate(pgd[0]["robust"]) if pgd else "–", rate(aa[0]["robust"]) if aa else "–",
                         rate(rep["worst_case"]), verdict(rep)])
        rows.append([label, "best − last", f"{m['gap']['clean']:+.3f}", "", "", f"{m['gap']['worst_case']:+.3f}", ""])
        checks.append(run_link(r))
    if not rows:
        return ""
    n = runs[0].metrics.get("n") if runs[0].metrics else "?"
    chart = img(bar_chart(groups, f"adversarial training: clean and robust test accuracy, n = {n} (95% intervals)"),
                "clean and robust accuracy with and without generated data, best and last epoch")
    return "".join(checks) + chart + table(["training data", "network", "clean", "PGD-40", "AutoAttack", "worst case", "checks"], rows) \
        + note(f"L∞ ε = {runs[0].metrics.get('eps') if runs[0].metrics else '?'}; intervals are 95% Clopper–Pearson over the test images.")


def section_audit(runs: list[Run]) -> str:
    parts = []
    for r in runs:
        if r.command != "audit extract" or not r.finished:
            continue
        m = r.metrics
        c, g, h = m["criterion"], m["generated"], m.get("heldout")
        rows = [["generations", g["n"], rate(g["normalized"]["flagged"]), g["normalized"]["distinct_training_images"],
                 rate((g.get("l2") or {}).get("flagged")), num(g["rms"].get("median"), 3)]]
        if h:
            rows.append(["held-out real images (baseline)", h["n"], rate(h["normalized"]["flagged"]),
                         h["normalized"]["distinct_training_images"], rate((h.get("l2") or {}).get("flagged")),
                         num(h["rms"].get("median"), 3)])
        parts.append(table(["images", "n", f"flagged ℓ < {c['delta']:.3g}", "distinct training images",
                            f"flagged RMS < {c['rms_threshold']}", "median RMS to nearest"], rows))
        by = g["normalized"].get("by_copies")
        if by:
            parts.append(table(["copies in the training set", "distinct images extracted"],
                               [[f"×{k}", f"{v['extracted']}/{v['of']}"] for k, v in by.items()]))
        parts.append(img_file(r.path / "pairs.png", "extracted pairs: each training image (left) beside the generation that copies it (right)"
                              if m.get("pairs_shown") == "extracted" else "closest pairs (none extracted): training image left, generation right"))
        parts.append(img_file(r.path / "distances.png", "nearest-neighbour distances: generations vs held-out real images"))
        parts.append(note(f"Carlini et al. (2023): a generation is extracted when its ℓ2 distance to the nearest training image "
                          f"is below δ = {c['delta']:.3g} times α = {c['alpha']} times its mean distance to its "
                          f"{c['n_neighbours_used']} nearest training images; {m['distinct_training_images']} distinct training "
                          f"images ({m['training_images']} with duplicates). Held-out real images through the same test are "
                          "what a model that copies nothing would score."))
    for r in runs:
        if r.command != "audit membership" or not r.finished:
            continue
        m = r.metrics
        rows = []
        for a, x in m["attacks"].items():
            for label, b in (("best σ", x["best"]), ("σ chosen on half, other half", x.get("selected"))):
                if not b:
                    continue
                t1, t01 = b["tpr_at_fpr"]["0.01"], b["tpr_at_fpr"]["0.001"]
                rows.append([a, label, b["sigma"], f"{b['auc']:.3f} [{b['auc_interval'][0]:.3f}, {b['auc_interval'][1]:.3f}]",
                             rate(t1["tpr"]), rate(t01["tpr"]) + (" (below resolution)" if t01["below_resolution"] else "")])
        rows.append(["random guess", "", "", "0.500", "0.010", "0.001"])
        parts.append(table(["attack", "σ", "σ value", "AUC [DeLong 95%]", "TPR at FPR 1%", "TPR at FPR 0.1%"], rows))
        parts.append(img_file(r.path / "roc.png", "ROC of each attack at its best σ (right: log-log)"))
        parts.append(note(f"{m['attacks'][next(iter(m['attacks']))]['best']['members']} members vs "
                          f"{m['attacks'][next(iter(m['attacks']))]['best']['nonmembers']} non-members. loss: the denoising loss "
                          "at σ (Matsumoto et al. 2023); pia: PIA (Kong et al. 2024). TPR intervals are Clopper–Pearson."))
    for r in runs:
        if r.command == "audit ownership" and r.finished:
            parts.append(_ownership(r))
    return "".join(parts)


def _ownership(r: Run) -> str:
    """``audit ownership``: the owner's set through membership inference beside the watermark."""
    m = r.metrics
    rows = []
    for a, x in m["membership"]["attacks"].items():
        b = x.get("selected") or x["best"]
        d = m["membership_dataset"][a]
        rows.append([f"membership: {a}", f"AUC {b['auc']:.3f} [{b['auc_interval'][0]:.3f}, {b['auc_interval'][1]:.3f}], "
                     f"TPR at FPR 1% {rate(b['tpr_at_fpr']['0.01']['tpr'])}",
                     f"{num((d.get('selected') or {}).get('log10_p'), 2)} (σ chosen on half); "
                     f"{num(d['bonferroni']['log10_p'], 2)} (best of {d['bonferroni']['levels']} σ, Bonferroni)"])
    for name, w in m["watermark_dataset"].items():
        rows.append([f"watermark: {name.replace('_', ' ')} images", f"{w['detected']}/{w['images']} detected at FPR {w['fpr']:g}",
                     num(w["log10_p"], 1)])
    return (table(["evidence", "per image", "the whole set: log₁₀ p"], rows)
            + note(f"Was the recipe's watermarked model trained on the owner's images? Members: {m['sets'].get('train')}; "
                   f"non-members: {m['sets'].get('nonmembers')}. Membership per image is σ chosen on half of each set and "
                   "measured on the other half; the whole set is a one-sided Mann–Whitney test. The watermark's p is "
                   "P(Binomial(N, α) ≥ k) over the recipe's generated images; the clean model's row is its null."))


RENDER = {"diffusion": section_diffusion, "watermark": section_watermark, "t2i": section_t2i,
          "certify": section_certify, "purify": section_purify, "advtrain": section_advtrain, "audit": section_audit}

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:.2em}section{border-top:2px solid #ddd;margin-top:2em;padding-top:.5em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figcaption{font-size:.8em;color:#555;max-width:480px}img{image-rendering:pixelated;border:1px solid #eee}
.missing{color:#a60}.failed{color:#b00;font-weight:bold}.run{font-size:.8em;color:#666}.note{font-size:.85em;color:#444}
.summary td:first-child{white-space:nowrap}code{font-size:.9em}"""

SCRIPT = """window.addEventListener('load',function(){var out={};
document.querySelectorAll('section[data-section]').forEach(function(s){var imgs=s.querySelectorAll('img'),ok=0;
imgs.forEach(function(i){if(i.complete&&i.naturalWidth>0)ok++;});out[s.dataset.section]={images:imgs.length,rendered:ok};});
document.body.setAttribute('data-rendered',JSON.stringify(out));});"""


def build_report(root, *, title: str = "trustdiff report") -> str:
    """The HTML of the report on the runs under ``root``."""
    root = Path(root)
    runs = find_runs(root)
    stages = read_stages(root)
    groups = by_section(runs)
    body, summary = [], []
    for key, (heading, _) in SECTIONS.items():
        finished = [r for r in groups[key] if r.finished]
        failed = [s for s in stages.get("stages", []) if s.get("section") == key and s.get("status") == "failed"]
        try:
            inner = RENDER[key](finished) if finished else ""
        except Exception as e:                        # a malformed run must not take the report down
            inner = note(f"could not render this section: {type(e).__name__}: {e}", "failed")
        for s in failed:
            inner = note(f"stage {s['name']} failed: {s.get('error', '?')}", "failed") + inner
        if not inner:
            inner = note("no finished run of " + ", ".join(SECTIONS[key][1]) + " under this folder", "missing")
        body.append(f'<section id="{key}" data-section="{key}"><h2>{esc(heading)}</h2>{inner}</section>')
        status = "failed" if failed else "ok" if finished else "missing"
        summary.append([heading, status, len(finished)])
    meta = ""
    if stages:
        meta = (f"<p>Demo preset <b>{esc(stages.get('preset'))}</b>, wall time {num(stages.get('seconds'), 1)} s on "
                f"{esc(stages.get('machine', '?'))}. Every number below was measured in this run.</p>")
        summary = [[s["name"], s["status"] + (" (cached)" if s.get("cached") else ""), s.get("summary", ""),
                    num(s.get("seconds"), 1)] for s in stages.get("stages", [])]
        overview = table(["stage", "status", "summary", "seconds"], summary)
    else:
        overview = table(["section", "status", "runs"], summary)
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>{GENERATOR}<title>{esc(title)}</title>"
            f"<style>{CSS}</style><script>{SCRIPT}</script></head><body><h1>{esc(title)}</h1>"
            f"<p>Built {time.strftime('%Y-%m-%d %H:%M:%S')} from <code>{esc(root)}</code>.</p>{meta}"
            f"<div class='summary'>{overview}</div>{''.join(body)}</body></html>")
    return page


GENERATOR = "<meta name='generator' content='trustdiff report'>"


def check_report_path(path) -> Path:
    """``path`` if a report may be written there: a new file, or an earlier trustdiff report (one
    InputError line for a folder or any other existing file)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"--out: expected an HTML file path, got the folder {path}")
    if path.exists():
        try:
            head = path.read_bytes()[:512].decode("utf-8", "replace")
        except OSError as e:
            raise InputError(f"--out: {path} cannot be read ({e.strerror})") from None
        if GENERATOR not in head:
            raise InputError(f"--out: {path} exists and is not a trustdiff report; choose a new file")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise InputError(f"--out: expected a file path, but {parent} is a file")
    return path


def write_report(root, path=None, **kw) -> Path:
    """Write the report of ``root`` to ``path`` (default ``root/report.html``) atomically."""
    path = Path(path) if path is not None else Path(root) / "report.html"
    atomic_write_bytes(path, build_report(root, **kw).encode("utf-8"))
    return path
