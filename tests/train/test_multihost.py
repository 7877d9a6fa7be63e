"""Multi-host data parallelism, simulated: 2 processes x 2 CPU devices over loopback."""

import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.simulated_devices import ROOT, subprocess_env


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_of_two_devices_equal_one_process_of_four(tmp_path):
  module = [sys.executable, "-m", "tests.train.multihost_check"]
  port = free_port()
  workers = [subprocess.Popen(module + ["worker", str(i), str(port), str(tmp_path / "multi.npz")],
                              cwd=ROOT, env=subprocess_env(devices=2), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [w.communicate(timeout=600) for w in workers]
  for worker, (out, err) in zip(workers, outputs):
    assert worker.returncode == 0, out[-2000:] + err[-4000:]
  single = subprocess.run(module + ["single", str(tmp_path / "single.npz")], cwd=ROOT,
                          env=subprocess_env(devices=4), capture_output=True, text=True,
                          timeout=600)
  assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-4000:]
  multi, one = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
  assert sorted(multi.files) == sorted(one.files) and len(one.files) > 4
  for key in one.files:
    np.testing.assert_allclose(multi[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
  # The two perturbations are different computations (m-sharpness with m = 4 per device
  # against the global batch's): the comparison above is not between two no-ops.
  per_device = [k for k in one.files if k.startswith("per_device")]
  assert any(not np.allclose(one[k], one[k.replace("per_device", "synchronized", 1)], atol=1e-6)
             for k in per_device)
