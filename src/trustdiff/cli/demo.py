"""``trustdiff demo`` (the whole audit on the embedded digits, then the report) and
``trustdiff report RUN_DIR`` (the report of any folder of trustdiff runs)."""
from __future__ import annotations

from pathlib import Path

import click

from .common import seed_option


@click.command("demo")
@click.option("--preset", type=click.Choice(["smoke", "quick", "full"]), default="quick", show_default=True,
              help="quick: ≤ 10 min on 2 CPU cores; smoke: a minute or two (the test suite's); full: longer, larger.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="A new or empty folder, or a demo folder to continue (its finished stages are reused).")
@seed_option()
@click.option("--device", default=None, help="Passed to every stage (default: each command's, cuda when available).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default=None, help="Passed to every stage (default: fp32).")
@click.option("--jobs", type=click.IntRange(1, 64), default=None,
              help="Stages run at once, each in its own process (default: 2 on a CPU with 2 or more cores, 1 on a GPU).")
@click.option("--dry-run", is_flag=True, help="Print the stages' commands and exit.")
def demo_cmd(preset, out, seed, device, precision, jobs, dry_run):
    """Run every capability on the embedded digits (each stage an ordinary trustdiff command,
    cached by content hash) and write OUT/report.html."""
    from ..runs import check_out, run_kind
    from ..runtime import check_precision, resolve_device
    from .stages import default_jobs, demo_stages, run_demo

    check_precision(resolve_device(device), precision or "fp32")      # an absent device fails here, once
    runtime = (*(("--device", device) if device else ()), *(("--precision", precision) if precision else ()))
    stages = demo_stages(out, preset, seed, runtime)
    check_out(out, "demo", resume=out.is_dir() and run_kind(out) == "demo")   # a demo folder continues
    if dry_run:
        for st in stages:
            click.echo(f"{st.name}: trustdiff {' '.join(st.argv)}")
        return
    rec = run_demo(out, preset, seed=seed, echo=click.echo, runtime=runtime,
                   jobs=jobs if jobs is not None else default_jobs(device))
    bad = [s["name"] for s in rec["stages"] if s["status"] != "ok"]
    click.echo(f"\ndemo ({preset}) finished in {rec['seconds'] / 60:.1f} min; "
               + (f"FAILED stages: {', '.join(bad)}; " if bad else "every stage ok; ") + f"report: {rec['report']}")
    if bad:
        raise click.exceptions.Exit(1)


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="The HTML file to write (default: RUN_DIR/report.html); an existing file is replaced only if it is a trustdiff report.")
@click.option("--title", default="trustdiff report", show_default=True)
def report_cmd(run_dir, out, title):
    """Build one self-contained HTML report from the run folders (config.json + metrics.json of
    any trustdiff command) under RUN_DIR."""
    from ..report import find_runs
    from ..report.render import check_report_path, write_report

    from ..errors import InputError

    runs = find_runs(run_dir)                      # a missing folder fails here
    if not runs:
        raise InputError(f"report: expected trustdiff runs (folders with config.json) under {run_dir}, found none")
    path = check_report_path(out if out is not None else Path(run_dir) / "report.html")
    path = write_report(run_dir, path, title=title)   # built before anything is written
    click.echo(f"{len(runs)} runs → {path}")


COMMANDS = [demo_cmd, report_cmd]
