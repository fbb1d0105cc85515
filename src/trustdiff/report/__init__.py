"""The HTML report of trustdiff runs (``trustdiff report RUN_DIR``, and the end of ``trustdiff demo``)."""
from .render import build_report, write_report
from .runs import SECTIONS, Run, by_section, find_runs

__all__ = ["SECTIONS", "Run", "build_report", "by_section", "find_runs", "write_report"]
