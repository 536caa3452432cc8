"""Entry point of the study's report, kept for ``benchmarks/reproduce.py`` and the tests.

The report itself is the package :mod:`report` next to this file (claims, statistics, plots,
markdown; both callers put ``benchmarks/`` on ``sys.path``): ``write_report`` writes
``docs/results_v1.md`` and its figures from the results JSON.
"""

from report import bits_label, write_report

__all__ = ["bits_label", "write_report"]
