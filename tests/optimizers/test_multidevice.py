"""Every method under jax.pmap and jax.shard_map on 4 simulated CPU devices.

The checks live in multidevice_check.py; they run in a subprocess because
the device count must be set (XLA_FLAGS) before JAX initializes.
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_method_on_four_devices():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
  result = subprocess.run(
      [sys.executable, "-m", "tests.optimizers.multidevice_check"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
  )
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
  checks = [line for line in result.stdout.splitlines() if line.startswith("ok ")]
  # 10 methods x {pmap, shard_map} x {per-device, synchronized}.
  assert len(checks) == 40, result.stdout
