"""Train steps on 4 simulated CPU devices (pmap and shard_map); see parallel_check.py."""

from tests.simulated_devices import run_check


def test_train_steps_on_four_devices():
  # 4 optimizers x 2 runners x 2 modes, 2 accumulated, plus 2 x 2 BatchNorm checks.
  run_check("tests.train.parallel_check", expected_ok_lines=22)
