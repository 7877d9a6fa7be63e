"""Deep AUC training end to end: the CLI paths, two stages, SAM on AUC-M, exact resume."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from sam_jax import cli
from sam_jax.train import config as config_lib
from sam_jax.train import loop, objectives, setup
from sam_jax.train.checkpoint import Checkpointer
from tests.data.synthetic import write_medmnist_npz
from tests.train.test_loop import TINY, comparable, read_records

DUAL = ["--sampler", "dual", "--sampling-rate", "0.25"]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
  return str(write_medmnist_npz(tmp_path_factory.mktemp("data") / "tiny.npz",
                                counts=(96, 32, 32), seed=3))


@pytest.fixture(scope="module")
def ce_run(tiny_npz, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("ce")
  assert cli.main(["train", "--dataset", tiny_npz, *TINY, "--workdir", str(workdir),
                   "--epochs", "1"]) == 0
  return workdir


def test_two_stage_recipe_starts_from_the_first_stage_best_weights(tiny_npz, ce_run, tmp_path):
  config = config_lib.TrainConfig(dataset=tiny_npz, model="resnet10", width=0.0625,
                                  batch_size=32, loss="aucm", optimizer="pesg",
                                  init_from=str(ce_run), sampler="dual", sampling_rate=0.25)
  dataset = setup.load_data(config)
  steps = setup.steps_per_epoch(config, dataset["train"])
  assert steps == 6  # dual: max(48 // 8, 48 // 24)
  from sam_jax.train.optim import build_optimizer
  tx, _ = build_optimizer(config, steps)
  objective = setup.build_objective(config, dataset)
  _, state = setup.initial_state(config, dataset, tx, objective, jax.random.key(0))
  source = setup.restore_run(ce_run, dataset)
  for a, b in zip(jax.tree.leaves(state.params.model), jax.tree.leaves(source.state.params)):
    np.testing.assert_array_equal(a, b)
  assert set(state.params.objective) == {"a", "b", "alpha"}
  # And from the command line: the second stage trains and records its objective.
  out = tmp_path / "aucm"
  assert cli.main(["train", "--dataset", tiny_npz, *TINY, "--workdir", str(out), "--epochs", "1",
                   "--loss", "aucm", "--optimizer", "pesg", "--learning-rate", "0.1",
                   "--init-from", str(ce_run), *DUAL]) == 0
  results = json.loads((out / "results.json").read_text())
  assert results["objective"] == "aucm" and results["steps_per_epoch"] == 6


def test_init_from_a_different_model_is_refused(tiny_npz, ce_run, tmp_path, capsys):
  args = ["train", "--dataset", tiny_npz, *TINY, "--width", "0.125", "--workdir", str(tmp_path),
          "--loss", "aucm", "--optimizer", "pesg", "--init-from", str(ce_run)]
  assert cli.main(args) == 2
  assert "holds a resnet10 width 0.0625 model; this run builds a resnet10 width 0.125" in \
      capsys.readouterr().err


def test_sam_with_pesg_on_aucm_trains_and_evaluates(tiny_npz, tmp_path, capsys):
  workdir = tmp_path / "sam_aucm"
  assert cli.main(["train", "--dataset", tiny_npz, *TINY, "--workdir", str(workdir),
                   "--epochs", "1", "--loss", "aucm", "--optimizer", "sam", "--rho", "0.05",
                   "--base-optimizer", "pesg", "--learning-rate", "0.1", *DUAL]) == 0
  record = read_records(workdir)[0]
  assert "train_perturbed_loss" in record and np.isfinite(record["train_sharpness"])
  capsys.readouterr()
  assert cli.main(["eval", str(workdir)]) == 0
  evaluated = json.loads(capsys.readouterr().out)
  results = json.loads((workdir / "results.json").read_text())
  assert evaluated["test"]["auc"] == pytest.approx(results["test"]["auc"])
  state = setup.restore_run(workdir, setup.load_data(config_lib.from_dict(results["config"])))
  assert isinstance(state.state.params, objectives.ObjectiveParams)
  assert float(state.state.params.objective["alpha"]) > 0  # PESG moved the dual variable


@pytest.mark.slow  # every objective's math is in tests/auc; this checks the CLI wiring of each
@pytest.mark.parametrize("loss,optimizer", [("ap", "soap"), ("pauc_cvar", "sopa"),
                                            ("pauc_kl", "sopa_s"), ("tpauc_kl", "sopa_s"),
                                            ("focal", "adam"), ("weighted_ce", "adam")])
def test_each_objective_trains_from_the_cli(tiny_npz, tmp_path, loss, optimizer):
  sampler = DUAL if loss not in ("focal", "weighted_ce") else []
  assert cli.main(["train", "--dataset", tiny_npz, *TINY, "--workdir", str(tmp_path),
                   "--epochs", "1", "--max-steps", "2", "--loss", loss, "--optimizer", optimizer,
                   *sampler]) == 0
  assert json.loads((tmp_path / "results.json").read_text())["objective"] == loss


def test_binary_auc_loss_on_multiclass_data_is_refused(tmp_path, capsys):
  data = write_medmnist_npz(tmp_path / "three.npz", num_classes=3, counts=(60, 12, 12))
  assert cli.main(["train", "--dataset", str(data), *TINY, "--workdir", str(tmp_path / "w"),
                   "--loss", "ap", "--optimizer", "soap"]) == 2
  assert "loss 'ap' needs a binary task, but three is multiclass" in capsys.readouterr().err


def test_interrupted_ap_run_resumes_to_the_same_records(tiny_npz, tmp_path, monkeypatch):
  """AP buffers and the dual sampler's position survive a mid-epoch checkpoint."""
  config = config_lib.TrainConfig(
      dataset=tiny_npz, model="resnet10", width=0.0625, batch_size=32, eval_batch_size=64,
      loss="ap", optimizer="soap", sampler="dual", sampling_rate=0.25, epochs=2, seed=4,
      checkpoint_every_steps=4, progress=False)
  loop.train_and_evaluate(config, tmp_path / "whole", log=lambda *_: None)

  class Stop(Exception):
    pass

  real_save = Checkpointer.save

  def save_until_the_epoch_ends(self, step, *args, **kwargs):
    if step == 6:  # the end of epoch 1: die before it is saved
      raise Stop(step)
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(Checkpointer, "save", save_until_the_epoch_ends)
  with pytest.raises(Stop):
    loop.train_and_evaluate(config, tmp_path / "broken", log=lambda *_: None)
  monkeypatch.setattr(Checkpointer, "save", real_save)
  checkpointer = Checkpointer(tmp_path / "broken" / "checkpoints")
  assert checkpointer.latest_step() == 4  # the mid-epoch one (6 steps per epoch)
  checkpointer.close()
  loop.train_and_evaluate(config, tmp_path / "broken", resume=True, log=lambda *_: None)
  assert comparable(read_records(tmp_path / "broken")) == comparable(
      read_records(tmp_path / "whole"))


def test_objectives_on_four_devices():
  from tests.simulated_devices import run_check
  run_check("tests.train.objectives_parallel_check", expected_ok_lines=4)


@pytest.mark.slow  # the same paths run on tiny data in the default suite
@pytest.mark.data
def test_the_cli_paths_on_real_breastmnist(tmp_path):
  from tests.data.conftest import need, real_data_dir
  need(real_data_dir() / "medmnist" / "breastmnist.npz")
  common = ["train", "--dataset", "breastmnist", "--data-dir", str(real_data_dir()), *TINY,
            "--epochs", "1", "--max-steps", "2"]
  ce, aucm = tmp_path / "ce", tmp_path / "aucm"
  assert cli.main([*common, "--workdir", str(ce)]) == 0
  assert cli.main([*common, "--workdir", str(aucm), "--init-from", str(ce), "--loss", "aucm",
                   "--optimizer", "sam", "--base-optimizer", "pesg", "--learning-rate", "0.1",
                   "--sampler", "dual", "--sampling-rate", "0.2"]) == 0
  results = json.loads((aucm / "results.json").read_text())
  # BreastMNIST's 399 positives: max(399 // 6, 147 // 26) batches of 32 per dual epoch.
  assert results["objective"] == "aucm" and results["steps_per_epoch"] == 66
  for loss, optimizer in (("ap", "soap"), ("pauc_cvar", "sopa")):
    assert cli.main([*common, "--workdir", str(tmp_path / loss), "--loss", loss, "--optimizer",
                     optimizer, "--sampler", "dual"]) == 0
