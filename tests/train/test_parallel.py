"""Train steps on 4 simulated CPU devices (pmap, shard_map, sharded); see parallel_check.py."""

from tests.simulated_devices import run_check


def test_train_steps_on_four_devices():
  # 5 optimizers x 2 runners x 2 modes, 2 accumulated, 5 sharded, 2 x 2 BatchNorm checks.
  run_check("tests.train.parallel_check", expected_ok_lines=29)


def test_auto_resolves_to_sharded_only_where_it_computes_the_same_step(monkeypatch):
  import jax

  import pytest

  from sam_jax.train import parallel

  for mode in ("none", "pmap", "shard_map", "sharded"):
    assert parallel.resolve_mode(mode, 128) == mode
  monkeypatch.setattr(jax, "device_count", lambda: 1)
  assert parallel.resolve_mode("auto", 128) == "none"
  monkeypatch.setattr(jax, "device_count", lambda: 2)
  assert parallel.resolve_mode("auto", 128) == "sharded"
  assert parallel.resolve_mode("auto", 127) == "none"  # does not split evenly
  assert parallel.resolve_mode("auto", 128, m_sharpness=4) == "none"
  assert parallel.resolve_mode("auto", 128, accumulation_steps=2) == "none"
  parallel.check_processes("none")
  # Over several processes the run is sharded over all of them (the loop's checks
  # then name a batch that does not split), and one-process modes are refused.
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  assert parallel.resolve_mode("auto", 127) == "sharded"
  for mode in parallel.MULTI_PROCESS_MODES:
    parallel.check_processes(mode)
  for mode in ("none", "pmap"):
    with pytest.raises(ValueError, match=f"spans 2 processes, which parallel '{mode}'"):
      parallel.check_processes(mode)
  with pytest.raises(ValueError, match="m_sharpness > 1 splits the batch on one device"):
    parallel.check_processes("sharded", m_sharpness=2)


def test_host_devices_are_left_alone_once_jax_runs_or_when_xla_flags_set_them(monkeypatch):
  import jax.numpy as jnp
  import pytest

  from sam_jax.train import parallel

  jnp.zeros(1).block_until_ready()  # the backend is up: too late to change
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert parallel.use_host_devices(2) is None
  monkeypatch.setenv(parallel.HOST_DEVICES_ENV, "two")
  with pytest.raises(ValueError, match="SAM_JAX_CPU_DEVICES must be a whole number"):
    parallel.use_host_devices()
  monkeypatch.setenv(parallel.HOST_DEVICES_ENV, "0")
  with pytest.raises(ValueError, match=">= 1"):
    parallel.use_host_devices()
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  assert parallel.use_host_devices() is None


def test_a_run_saved_under_one_single_device_mode_matches_the_others():
  from sam_jax.train import config as config_lib

  saved = config_lib.TrainConfig(parallel="sharded").to_dict()
  for given in ("auto", "none", "sharded"):
    assert config_lib.config_differences(saved, config_lib.TrainConfig(parallel=given).to_dict()) == {}
  assert "parallel" in config_lib.config_differences(
      saved, config_lib.TrainConfig(parallel="pmap").to_dict())


def test_a_sharded_batch_must_split_over_the_devices(monkeypatch):
  import jax

  from sam_jax.train import parallel

  monkeypatch.setattr(jax, "device_count", lambda: 2)
  assert parallel.split_count("sharded") == 2 and parallel.device_count("sharded") == 1
  assert parallel.split_count("none") == 1
