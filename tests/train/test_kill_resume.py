"""Kill -9 at moments inside steps, evaluations and checkpoint writes, then resume
(benchmarks/kill_resume.py; its 20-trial report is benchmarks/results/kill_resume.md)."""

import json
import subprocess
import sys

import pytest

from tests.simulated_devices import subprocess_env
from tests.train.test_loop import ROOT


@pytest.mark.slow
def test_every_killed_run_resumes_to_the_uninterrupted_result():
  done = subprocess.run([sys.executable, "-m", "benchmarks.kill_resume", "--trials", "6",
                         "--seed", "1"], cwd=ROOT, env=subprocess_env(), capture_output=True,
                        text=True, timeout=3600)
  trials = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"trial"')]
  assert len(trials) == 6 and done.returncode == 0, done.stdout + done.stderr[-2000:]
  assert {t["landed_in"] for t in trials} >= {"save", "eval"}
  assert all(t["same_results"] and t["same_epoch_records"] and t["steps_lost"] <= 2
             for t in trials)
