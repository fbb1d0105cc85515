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
    from . import advtrain, audit, certify, demo, diffusion, pretrained, purify, t2i, watermark

    for mod in (diffusion, certify, purify, watermark, advtrain, t2i, audit, pretrained, demo):
        for cmd in mod.COMMANDS:
            cli.add_command(cmd)


_register()


def _one_line(text: str) -> str:
    """A message as one line (a user error is one line on stderr)."""
    return " ".join(str(text).split())


def main(argv=None) -> int:
    """Console entry point: runs the CLI; a user error — a :class:`TrustdiffError`, a bad flag, a
    file that cannot be read or written — is one line on stderr and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from ..runtime import tune_cpu_allocator

    tune_cpu_allocator()
    try:
        code = cli.main(args=argv, standalone_mode=False, obj={"argv": argv})   # an int only from click's Exit
    except TrustdiffError as e:
        click.echo(f"error: {_one_line(e)}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        click.echo(f"error: {_one_line(e.format_message())}", err=True)
        return 2
    except OSError as e:                       # a path the user gave that cannot be read or written
        where = f" {e.filename}" if e.filename else ""
        click.echo(f"error:{where}: {_one_line(e.strerror or e)}", err=True)
        return 2
    return code if isinstance(code, int) else 0


def entry():
    sys.exit(main())
