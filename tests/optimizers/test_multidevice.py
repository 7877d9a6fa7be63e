"""Every method under jax.pmap and jax.shard_map on 4 simulated CPU devices.

The checks live in multidevice_check.py; they run in a subprocess because
the device count must be set (XLA_FLAGS) before JAX initializes.
"""

from tests.simulated_devices import run_check


def test_every_method_on_four_devices():
  # 14 methods x {pmap, shard_map} x {per-device, synchronized}.
  run_check("tests.optimizers.multidevice_check", expected_ok_lines=56)
