"""Memory checked before a run: the eval batch fits itself, a train step that cannot fit stops."""

from __future__ import annotations

import json

import jax
import numpy as np
import optax
import pytest

from sam_jax import cli, models
from sam_jax.data import dataset as ds
from sam_jax.train import memory
from sam_jax.train.losses import softmax_cross_entropy
from sam_jax.train.selection import evaluate_split
from sam_jax.train.state import create_train_state
from sam_jax.train.step import make_eval_step
from tests.data.synthetic import write_medmnist_npz

TINY = ["--model", "resnet10", "--width", "0.0625", "--batch-size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
  return str(write_medmnist_npz(tmp_path_factory.mktemp("data") / "tiny.npz",
                                counts=(64, 32, 45), seed=4))


def small_eval(num=45):
  rng = np.random.default_rng(0)
  split = ds.Split(images=rng.integers(0, 256, (num, 12, 12, 1), dtype=np.uint8),
                   labels=rng.integers(0, 2, (num, 1)).astype(np.int64))
  model = models.create_model("resnet10", 2, width=0.0625)
  apply_fn, params, model_state = models.from_linen(model, jax.random.key(0), split.images[:1])
  state = create_train_state(params, model_state, optax.sgd(0.1))
  return jax.jit(make_eval_step(apply_fn, softmax_cross_entropy(), task=ds.BINARY)), state, split


def test_eval_batch_is_lowered_until_it_fits_and_the_metrics_do_not_change():
  eval_step, state, split = small_eval()
  lower = memory.eval_batch_lowering(eval_step, state, split)
  need_64 = memory.compiled_bytes(lower(64).compile())
  need_8 = memory.compiled_bytes(lower(8).compile())
  assert need_64 > need_8 > 0
  # A budget that holds batch 8 but not 64 (the headroom included).
  budget = int(need_8 / memory.HEADROOM) + (need_64 - need_8) // 8
  messages = []
  size, compiled = memory.fit_eval_batch(lower, 64, budget, messages.append)
  # The largest power of two that fits: its double does not.
  assert 8 <= size < 64 and (size & (size - 1)) == 0
  assert memory.compiled_bytes(compiled) <= memory.HEADROOM * budget
  assert memory.compiled_bytes(lower(2 * size).compile()) > memory.HEADROOM * budget
  assert "evaluating in batches of" in messages[0]
  # Nothing to lower when it fits; and no budget known means no change.
  assert memory.fit_eval_batch(lower, 64, 100 * need_64)[0] == 64
  assert memory.fit_eval_batch(lower, 64, None)[0] == 64
  results = [evaluate_split(eval_step, state, split, ds.BINARY, n) for n in (64, size, 7)]
  for other in results[1:]:
    assert other["auc"] == results[0]["auc"] and other["acc"] == results[0]["acc"]
    np.testing.assert_allclose(other["loss"], results[0]["loss"], rtol=1e-6)


def test_a_train_step_that_cannot_fit_stops_before_the_first_step(tiny_npz, tmp_path, monkeypatch,
                                                                   capsys):
  monkeypatch.setattr(memory, "available_bytes", lambda device=None: 2**20)  # 1 MiB
  workdir = tmp_path / "run"
  assert cli.main(["train", "--dataset", tiny_npz, *TINY, "--epochs", "1",
                   "--workdir", str(workdir)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert "one train step at batch 32 needs" in err[0] and "--batch-size" in err[0]
  assert not list((workdir / "checkpoints").glob("last/*"))


def test_the_cpu_schedule_is_a_flag_set_before_jax_starts():
  env = {}
  assert memory.use_cpu_schedule(environ=env) == "speed" and "XLA_FLAGS" not in env
  env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  assert memory.use_cpu_schedule("memory", env) == "memory"
  assert env["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=4 "
                              "--xla_cpu_enable_concurrency_optimized_scheduler=false")
  assert memory.use_cpu_schedule(environ={memory.CPU_SCHEDULE_ENV: "memory"}) == "memory"
  # The user's own XLA flag wins.
  env = {"XLA_FLAGS": "--xla_cpu_enable_concurrency_optimized_scheduler=true"}
  assert memory.use_cpu_schedule("memory", env) == "speed"
  assert env["XLA_FLAGS"] == "--xla_cpu_enable_concurrency_optimized_scheduler=true"
  with pytest.raises(ValueError, match="one of speed, memory, got 'fast'"):
    memory.use_cpu_schedule("fast", {})


def test_the_memory_schedule_trains_the_same_run(tiny_npz, tmp_path):
  """`sam-jax --cpu-schedule memory train` in a fresh process (XLA reads the flag once)
  gives the records of XLA's default schedule (this process's)."""
  import subprocess
  import sys

  from tests.simulated_devices import ROOT, subprocess_env

  args = ["train", "--dataset", tiny_npz, *TINY, "--optimizer", "sam", "--epochs", "1"]
  done = subprocess.run([sys.executable, "-m", "sam_jax.cli", "--cpu-schedule", "memory",
                         "--cpu-devices", "1", *args, "--workdir", str(tmp_path / "memory")],
                        cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert cli.main([*args, "--workdir", str(tmp_path / "speed")]) == 0
  runs = {name: json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])
          for name in ("memory", "speed")}
  for key in ("train_loss", "train_perturbed_loss"):
    assert runs["memory"][key] == pytest.approx(runs["speed"][key], rel=1e-5)
  assert runs["memory"]["val"]["auc"] == pytest.approx(runs["speed"]["val"]["auc"], abs=1e-6)


def test_an_eval_batch_that_does_not_fit_is_lowered_in_a_run(tiny_npz, tmp_path, monkeypatch,
                                                             capsys):
  real_fit = memory.fit_eval_batch
  # A budget that the evaluation of 256 does not fit.
  monkeypatch.setattr(memory, "fit_eval_batch",
                      lambda lower, requested, budget, log: real_fit(
                          lower, requested, memory.compiled_bytes(lower(16).compile()) / memory.HEADROOM,
                          log))
  assert cli.main(["train", "--dataset", tiny_npz, *TINY, "--epochs", "1", "--eval-batch-size", "256",
                   "--workdir", str(tmp_path / "run")]) == 0
  assert "evaluation batch 256 needs" in capsys.readouterr().out


@pytest.mark.parametrize("version", ["v1", "v2", "none"])
def test_cgroup_limit_is_read_for_either_version(tmp_path, version):
  proc = tmp_path / "cgroup"
  if version == "v2":
    proc.write_text("0::/job\n")
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "memory.max").write_text("4294967296\n")
    assert memory.cgroup_limit_bytes(tmp_path, proc) == 4 * 2**30
  elif version == "v1":
    proc.write_text("4:memory:/job\n3:cpu:/\n")
    (tmp_path / "memory" / "job").mkdir(parents=True)
    (tmp_path / "memory" / "job" / "memory.limit_in_bytes").write_text("1073741824\n")
    assert memory.cgroup_limit_bytes(tmp_path, proc) == 2**30
  else:
    proc.write_text("0::/\n")
    (tmp_path / "memory.max").write_text("max\n")
    assert memory.cgroup_limit_bytes(tmp_path, proc) is None
  assert memory.available_bytes() > 0


@pytest.mark.slow  # a 64³ model compiles for about a minute here
def test_64_cube_volumes_train_from_the_cli_within_memory(tmp_path, capsys):
  from sam_jax.data import medmnist

  small = write_medmnist_npz(tmp_path / "vol.npz", spatial=(28, 28, 28), counts=(8, 4, 4), seed=2)
  big = medmnist.resize(small, tmp_path / "vol_64_resized.npz", 64)
  assert cli.main(["train", "--dataset", str(big), "--model", "resnet18_3d", "--width", "0.0625",
                   "--batch-size", "4", "--epochs", "1", "--no-progress",
                   "--workdir", str(tmp_path / "run")]) == 0
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["dataset"]["image_shape"] == [64, 64, 64, 1]
  # The default evaluation batch (256) is capped on a CPU, where it aborted.
  assert "evaluating in batches of 128 instead of 256" in capsys.readouterr().out
