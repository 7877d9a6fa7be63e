"""Statistics over seeds against SciPy's and hand-computed values."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from sam_jax.studies import stats


def test_mean_std_is_the_sample_std():
  mean, std = stats.mean_std([0.8, 0.9, 1.0])
  assert mean == pytest.approx(0.9) and std == pytest.approx(0.1)
  assert stats.mean_std([0.5]) == (0.5, 0.0)
  assert all(math.isnan(v) for v in stats.mean_std([]))
  assert stats.format_mean_std([0.8, 0.9, 1.0]) == "0.900 ± 0.100"
  assert stats.format_mean_std([0.5]) == "0.500" and stats.format_mean_std([]) == "–"


def test_paired_test_matches_scipy_over_common_seeds():
  method = {0: 0.91, 1: 0.88, 2: 0.93, 3: 0.90, 4: 0.95, 9: 0.5}
  baseline = {0: 0.89, 1: 0.87, 2: 0.90, 3: 0.91, 4: 0.92}
  test = stats.paired_test(method, baseline)
  a, b = [method[s] for s in range(5)], [baseline[s] for s in range(5)]
  assert test.n == 5
  assert test.mean_difference == pytest.approx(np.mean(np.subtract(a, b)))
  assert test.t_p == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
  assert test.wilcoxon_p == pytest.approx(scipy_stats.wilcoxon(np.subtract(a, b)).pvalue)


def test_wilcoxon_cannot_reach_five_percent_with_five_seeds():
  method = {s: 1.0 + s for s in range(5)}
  baseline = {s: 0.0 for s in range(5)}
  assert stats.paired_test(method, baseline).wilcoxon_p == pytest.approx(0.0625)


def test_identical_runs_are_no_evidence():
  same = {s: 0.9 for s in range(5)}
  test = stats.paired_test(same, same)
  assert test.mean_difference == 0 and test.t_p == 1.0


def test_holm_rejects_in_order_and_stops():
  # None is no test: m = 3, thresholds 0.05/3, 0.05/2, 0.05.
  assert stats.holm([0.01, 0.04, 0.015, None]) == [True, True, True, False]
  # 0.03 > 0.025 stops the procedure: 0.04 is not rejected though below 0.05.
  assert stats.holm([0.01, 0.04, 0.03]) == [True, False, False]
  assert stats.holm([0.06, 0.001]) == [False, True]
