"""``trustdiff demo`` (the whole audit on the embedded digits, then the report) and
``trustdiff report RUN_DIR`` (the report of any folder of trustdiff runs)."""
from __future__ import annotations

from pathlib import Path

import click

from .common import dry_run_option


@click.command("demo")
@click.option("--preset", type=click.Choice(["smoke", "quick", "full"]), default="quick", show_default=True,
              help="quick: ≤ 10 min on 2 CPU cores; smoke: a minute or two (the test suite's); full: longer, larger.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--seed", default=0, show_default=True)
@dry_run_option
def demo_cmd(preset, out, seed, dry_run):
    """Run every capability on the embedded digits (each stage an ordinary trustdiff command,
    cached by content hash) and write OUT/report.html."""
    from ..report.demo import demo_stages, run_demo

    stages = demo_stages(out, preset, seed)
    if dry_run:
        for st in stages:
            click.echo(f"{st.name}: trustdiff {' '.join(st.argv)}")
        return
    rec = run_demo(out, preset, seed=seed, echo=click.echo)
    bad = [s["name"] for s in rec["stages"] if s["status"] != "ok"]
    click.echo(f"\ndemo ({preset}) finished in {rec['seconds'] / 60:.1f} min; "
               + (f"FAILED stages: {', '.join(bad)}; " if bad else "every stage ok; ") + f"report: {rec['report']}")
    if bad:
        raise click.exceptions.Exit(1)


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Default: RUN_DIR/report.html.")
@click.option("--title", default="trustdiff report", show_default=True)
def report_cmd(run_dir, out, title):
    """Build one self-contained HTML report from the run folders (config.json + metrics.json of
    any trustdiff command) under RUN_DIR."""
    from ..report import find_runs, write_report

    path = write_report(run_dir, out, title=title)
    click.echo(f"{len(find_runs(run_dir))} runs → {path}")


COMMANDS = [demo_cmd, report_cmd]
