"""The loader fuzzer (tests/data/fuzz_loaders.py) in a child process under a memory limit:
a fixed number of damaged files in the default suite, many more under the slow mark."""

import json
import subprocess
import sys

import pytest

from tests.train.test_loop import ROOT


def fuzz(cases: int, seed: int, timeout: float) -> dict:
  done = subprocess.run([sys.executable, "-m", "tests.data.fuzz_loaders", "--cases", str(cases),
                         "--seed", str(seed), "--memory-gib", "4"], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)
  report = json.loads(done.stdout)
  assert done.returncode == 0 and not report["failures"], report["failures"][:5]
  return report


def test_damaged_files_raise_only_documented_errors():
  report = fuzz(400, seed=0, timeout=300)
  kinds = {k.split("/")[0] for k in report["outcomes"]}
  assert kinds == {"npz", "npz_uncompressed", "zip", "folder_image"}
  # Most damage is detected (a flipped pixel bit is not damage a loader can see).
  refused = sum(n for k, n in report["outcomes"].items() if not k.endswith("/loaded"))
  assert refused > 0.8 * report["cases"]


@pytest.mark.slow
def test_many_damaged_files():
  fuzz(20000, seed=1, timeout=1800)
