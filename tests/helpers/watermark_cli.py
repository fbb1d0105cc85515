"""The `trustdiff watermark …` group at toy size, shared by the watermark CLI and attack tests."""
from __future__ import annotations

from click.testing import CliRunner

# a codec that trains in a second: 16×16, 8 bits, narrow and shallow, 4 steps
CODEC = ["--resolution", "16", "--n-bits", "8", "--width", "8", "--enc-depth", "2", "--dec-depth", "3",
         "--codec-steps", "4", "--codec-batch", "8", "--l2-await", "0", "--l2-ramp", "2"]


def run(args, ok=True):
    """Invoke the group with ``args`` (stringified); with ``ok``, assert it exited 0."""
    from trustdiff.cli.watermark import watermark

    r = CliRunner().invoke(watermark, [str(a) for a in args], catch_exceptions=True)
    if ok:
        assert r.exit_code == 0, (r.output, r.exception)
    return r
