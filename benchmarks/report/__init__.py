"""The report of the reproduction study, generated only from the results JSON.

``write_report(results, md_path, figure_dir, source)`` turns the records written by
``benchmarks/reproduce.py`` into ``docs/results_v1.md`` (tables of mean ± std over seeds, a
verdict per claim of methods.md §6) and PNG plots. Every number in the markdown is computed
here from the records, nothing else. Modules: :mod:`.claims` (what each claim compares, the
verdict rows), :mod:`.statistics` (per-seed values, pairing, minimal effects, number text),
:mod:`.plots` (the figures) and :mod:`.markdown` (tables, sections, the document).

Statistics: runs of a method and its baseline with the same seed start from the same FP
checkpoint and read the same batches, so each claim's effect is the mean of the per-seed
differences with a paired Student-t 95% interval (:func:`jaxquant.study.stats.paired_t_interval`).
Verdict rule (:func:`jaxquant.study.stats.verdict`): *reproduced* when the whole interval lies
on the claimed side of 0; *not reproduced* when it excludes every effect of at least the
minimal effect size in the claimed direction (0.5 accuracy points; 10% of the baseline's
mean Hessian trace); *inconclusive* otherwise, and always with fewer than 2 seeds.
"""

from .claims import CLAIMS, Claim, ClaimResult, bits_label, evaluate_claim
from .markdown import write_report

__all__ = ["CLAIMS", "Claim", "ClaimResult", "bits_label", "evaluate_claim", "write_report"]
