"""Vmapped seeds: seed k of a group equals the same seed trained alone."""

from __future__ import annotations

import json

import jax
import numpy as np
import optax
import pytest

from sam_jax.train import config as config_lib
from sam_jax.train import loop, seeds
from sam_jax.train.checkpoint import Checkpointer
from tests.data.synthetic import write_medmnist_npz

SEEDS = (3, 7, 11)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
  return str(write_medmnist_npz(tmp_path_factory.mktemp("data") / "tiny.npz",
                                counts=(96, 32, 32), seed=3))


def tiny_config(path: str, **changes) -> config_lib.TrainConfig:
  return config_lib.TrainConfig(
      dataset=path, model="resnet10", width=0.0625, batch_size=32, eval_batch_size=48,
      epochs=2, optimizer="sam", base_optimizer="sgd", learning_rate=0.05, rho=0.05,
      augment="standard", select_by="loss", progress=False, **changes)


def final_params(workdir):
  checkpointer = Checkpointer(workdir / "checkpoints")
  try:
    step = checkpointer.latest_step()
    return checkpointer.last.restore(step)["state"]["params"]
  finally:
    checkpointer.close()


def epoch_records(workdir):
  return [{k: v for k, v in json.loads(line).items() if k != "train_seconds"}
          for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def scores(record):
  return {split: {k: record[split][k] for k in ("auc", "acc", "loss")}
          for split in ("val", "test")}


@pytest.fixture(scope="module")
def solo_and_group(tiny_npz, tmp_path_factory):
  root = tmp_path_factory.mktemp("seeds")
  config = tiny_config(tiny_npz)
  solo = [loop.train_and_evaluate(config.replace(seed=s), root / f"solo{s}", log=lambda m: None)
          for s in SEEDS]
  group = seeds.train_and_evaluate_seeds(config, SEEDS, [root / f"group{s}" for s in SEEDS],
                                         log=lambda m: None)
  return root, solo, group


def test_each_vmapped_seed_equals_its_solo_run(solo_and_group):
  root, solo, group = solo_and_group
  for seed, alone, together in zip(SEEDS, solo, group):
    assert together["config"]["seed"] == seed and together["vmapped_seeds"] == len(SEEDS)
    assert together["selected_epoch"] == alone["selected_epoch"]
    assert together["steps"] == alone["steps"]
    # Losses agree to the chaos bound below (weights within 2% give losses
    # within ~1%; measured up to 0.5%). AUC and accuracy are not compared: on
    # 32 near-tied scores of an untrained model a 0.5% change of the weights
    # reorders many pairs (measured: val AUC 0.36 vs 0.45 for one seed).
    for split in ("val", "test"):
      np.testing.assert_allclose(together[split]["loss"], alone[split]["loss"], rtol=1e-2,
                                 err_msg=f"seed {seed} {split} loss")
    a, b = final_params(root / f"solo{seed}"), final_params(root / f"group{seed}")
    # Batched kernels add in another order (2e-6 of a tensor's scale after one
    # step, test below). Training a width-1/16 network with SAM on 32 random
    # examples is chaotic: weights perturbed by 1e-6 differ by ~2% (global
    # relative norm) after 8 steps; the vmapped seeds differ by less than half
    # of that. A wrong batch, key or update differs at order 1.
    difference = optax.global_norm(jax.tree.map(lambda x, y: x - y, a, b))
    assert difference <= 2e-2 * optax.global_norm(a)


def test_one_vmapped_step_equals_the_solo_steps():
  import sam_jax
  from sam_jax import models
  from sam_jax.train.losses import loss_for_task
  from sam_jax.train.state import create_train_state
  from sam_jax.train.step import make_train_step

  model = models.create_model("resnet10", num_classes=2, width=0.0625)
  tx = optax.chain(sam_jax.sam(0.05), optax.sgd(0.05, 0.9))
  rng = np.random.default_rng(0)
  states, batches, keys = [], [], []
  for seed in (3, 7):
    apply_fn, params, model_state = models.from_linen(model, jax.random.key(seed),
                                                      np.zeros((1, 28, 28, 1)))
    states.append(create_train_state(params, model_state, tx))
    batches.append({"image": rng.integers(0, 255, (32, 28, 28, 1)).astype(np.uint8),
                    "label": rng.integers(0, 2, (32,)).astype(np.int32)})
    keys.append(jax.random.key(seed + 1))
  step = make_train_step(apply_fn, loss_for_task("multiclass"), tx)
  together, metrics = jax.jit(jax.vmap(step))(seeds.stack(states), seeds.stack(batches),
                                              jax.numpy.stack(keys))
  for i, (state, batch, key) in enumerate(zip(states, batches, keys)):
    alone, alone_metrics = jax.jit(step)(state, batch, key)
    np.testing.assert_allclose(metrics["loss"][i], alone_metrics["loss"], rtol=1e-5)
    for x, y in zip(jax.tree.leaves(alone), jax.tree.leaves(seeds.unstack(together, 2)[i])):
      x, y = np.asarray(x), np.asarray(y)
      assert np.max(np.abs(x - y)) <= 1e-5 * np.max(np.abs(x)) + 1e-8


def test_seeds_differ_from_each_other(solo_and_group):
  root, _, group = solo_and_group
  a, b = final_params(root / f"group{SEEDS[0]}"), final_params(root / f"group{SEEDS[1]}")
  assert not np.allclose(jax.tree.leaves(a)[0], jax.tree.leaves(b)[0])
  assert len({json.dumps(scores(r)) for r in group}) == len(SEEDS)


def test_each_seed_writes_a_complete_run_directory(solo_and_group):
  root, _, _ = solo_and_group
  for seed in SEEDS:
    directory = root / f"group{seed}"
    for name in ("config.json", "metrics.jsonl", "results.json", "curves.png"):
      assert (directory / name).is_file(), name
    assert json.loads((directory / "config.json").read_text())["seed"] == seed
    assert len((directory / "metrics.jsonl").read_text().splitlines()) == 2


def test_interrupted_group_resumes_to_the_same_records(tiny_npz, tmp_path, solo_and_group):
  group = solo_and_group[2]
  config = tiny_config(tiny_npz)
  dirs = [tmp_path / f"g{s}" for s in SEEDS]
  def crash(message):  # dies after epoch 1's third step, before its end-of-epoch saves
    raise KeyboardInterrupt(message)

  with pytest.raises(KeyboardInterrupt):
    seeds.train_and_evaluate_seeds(config.replace(checkpoint_every_steps=2), SEEDS, dirs,
                                   log=crash)
  with pytest.raises(ValueError, match=r"configured differently: learning_rate"):
    seeds.train_and_evaluate_seeds(config.replace(checkpoint_every_steps=2, learning_rate=0.5),
                                   SEEDS, dirs, resume=True, log=lambda m: None)
  resumed = seeds.train_and_evaluate_seeds(config.replace(checkpoint_every_steps=2), SEEDS, dirs,
                                           resume=True, log=lambda m: None)
  root = solo_and_group[0]
  for seed, again, whole in zip(SEEDS, resumed, group):
    # The same program from a mid-epoch checkpoint: equal to the last digit.
    assert scores(again) == scores(whole)
    assert epoch_records(tmp_path / f"g{seed}") == epoch_records(root / f"group{seed}")


@pytest.mark.parametrize("kwargs, message", [
    (dict(seeds=(1, 1)), "must differ"),
    (dict(parallel="pmap"), "one device"),
    (dict(m_sharpness=2), "one device"),
])
def test_bad_seed_groups_are_refused(tiny_npz, tmp_path, kwargs, message):
  chosen = kwargs.pop("seeds", (1, 2))
  config = tiny_config(tiny_npz, **kwargs)
  with pytest.raises(ValueError, match=message):
    seeds.train_and_evaluate_seeds(config, chosen, [tmp_path / str(i) for i in range(len(chosen))])


def test_a_vanished_seed_directory_is_named(tmp_path, monkeypatch):
  """One seed's work directory removed mid-run: the group stops naming it."""
  import shutil

  from sam_jax.train import records
  from sam_jax.train.workdir_lock import WorkdirVanishedError

  npz = write_medmnist_npz(tmp_path / "tiny.npz", counts=(64, 16, 16), seed=1)
  config = config_lib.TrainConfig(dataset=str(npz), model="resnet10", width=0.0625, batch_size=32,
                                  eval_batch_size=32, epochs=2, optimizer="sgd",
                                  learning_rate=0.05, progress=False)
  append = records.EpochLog.append

  def append_then_vanish(self, record):
    append(self, record)
    if (tmp_path / "s1").exists():
      shutil.rmtree(tmp_path / "s1")

  monkeypatch.setattr(records.EpochLog, "append", append_then_vanish)
  with pytest.raises(WorkdirVanishedError, match=r"s1 disappeared during the run"):
    seeds.train_and_evaluate_seeds(config, [0, 1], [tmp_path / "s0", tmp_path / "s1"],
                             log=lambda m: None)
