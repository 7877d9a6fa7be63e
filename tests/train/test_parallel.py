"""Train steps on 4 simulated CPU devices (pmap and shard_map); see parallel_check.py."""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_train_steps_on_four_devices():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
  result = subprocess.run([sys.executable, "-m", "tests.train.parallel_check"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
  checks = [line for line in result.stdout.splitlines() if line.startswith("ok ")]
  # 4 optimizers x 2 runners x 2 modes, 2 accumulated, plus 2 x 2 BatchNorm checks.
  assert len(checks) == 22, result.stdout
