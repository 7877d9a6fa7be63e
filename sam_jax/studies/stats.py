"""Statistics over seeds: mean ± std, paired tests, and Holm's correction.

Seeds pair runs: seed ``k`` of a method and seed ``k`` of its baseline share
the initial weights and the batch order, so their difference removes most of
the seed-to-seed spread. The paired t-test asks whether the mean difference
is zero; the Wilcoxon signed-rank test asks the same without assuming
normality, but with ``n`` seeds its smallest two-sided p is ``2 / 2**n``
(0.0625 for 5 seeds): it cannot reach 0.05 below 6 seeds, so tables mark
significance by the t-test and print both.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Optional, Sequence

from scipy import stats as scipy_stats


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for one value); NaN when empty."""
  values = [v for v in values if v is not None and not math.isnan(v)]
  if not values:
    return math.nan, math.nan
  return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_mean_std(values: Sequence[float], digits: int = 3) -> str:
  """``mean ± std``; a single value alone (it has no spread to show)."""
  mean, std = mean_std(values)
  if math.isnan(mean):
    return "–"
  if sum(1 for v in values if v is not None and not math.isnan(v)) == 1:
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


@dataclasses.dataclass(frozen=True)
class PairedTest:
  n: int                       # seeds present in both
  mean_difference: float       # method − baseline
  t_p: Optional[float]         # paired t-test, two-sided
  wilcoxon_p: Optional[float]  # Wilcoxon signed-rank, two-sided (exact for small n)


def paired_test(method: dict[int, float], baseline: dict[int, float]) -> PairedTest:
  """Tests ``method − baseline`` over the seeds both have (seed -> value maps)."""
  seeds = sorted(set(method) & set(baseline))
  diffs = [method[s] - baseline[s] for s in seeds]
  if not diffs:
    return PairedTest(0, math.nan, None, None)
  mean = statistics.mean(diffs)
  if len(diffs) < 2 or all(d == diffs[0] for d in diffs):
    # No spread: t is undefined; all-zero differences are no evidence at all.
    return PairedTest(len(diffs), mean, None if mean else 1.0, None if mean else 1.0)
  t_p = float(scipy_stats.ttest_rel([method[s] for s in seeds], [baseline[s] for s in seeds]).pvalue)
  nonzero = [d for d in diffs if d != 0]
  wilcoxon_p = float(scipy_stats.wilcoxon(nonzero).pvalue) if nonzero else 1.0
  return PairedTest(len(diffs), mean, t_p, wilcoxon_p)


def holm(p_values: Sequence[Optional[float]], alpha: float = 0.05) -> list[bool]:
  """Which hypotheses Holm–Bonferroni rejects at family-wise level ``alpha`` (None: never)."""
  indexed = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
  rejected = [False] * len(p_values)
  m = len(indexed)
  for rank, (p, i) in enumerate(indexed):
    if p > alpha / (m - rank):
      break
    rejected[i] = True
  return rejected
