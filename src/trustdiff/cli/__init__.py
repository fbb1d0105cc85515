"""The ``trustdiff`` command. Thin: flags → a config → library calls. One module per capability.

A user error (:class:`trustdiff.errors.TrustdiffError`) is printed as one line and exits with
code 2; nothing on disk is touched by a failed command.
"""
from __future__ import annotations

import sys

import click

from ..errors import TrustdiffError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="trustdiff")
def cli():
    """trustdiff: trustworthy diffusion models, and diffusion models for trustworthy ML."""


def _register():
    from . import advtrain, certify, demo, diffusion, purify, t2i, watermark

    for mod in (diffusion, certify, purify, watermark, advtrain, t2i, demo):
        for cmd in mod.COMMANDS:
            cli.add_command(cmd)


_register()


def main(argv=None) -> int:
    """Console entry point: runs the CLI, turning user errors into one line and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        code = cli.main(args=argv, standalone_mode=False, obj={"argv": argv})   # an int only from click's Exit
    except TrustdiffError as e:
        click.echo(f"error: {e}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return 2
    return code if isinstance(code, int) else 0


def entry():
    sys.exit(main())
