"""The training loop and the sam-jax command: records, resume, eval, errors."""

from __future__ import annotations

import json
import math
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from sam_jax import cli
from tests.data.conftest import need, real_data_dir
from tests.data.synthetic import write_medmnist_npz
from tests.simulated_devices import subprocess_env

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ["--model", "resnet10", "--width", "0.0625", "--batch-size", "32",
        "--eval-batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
  return str(write_medmnist_npz(tmp_path_factory.mktemp("data") / "tiny.npz",
                                counts=(96, 32, 32), seed=3))


def sam_jax_cmd(*args):
  return [sys.executable, "-m", "sam_jax.cli", *args]


def comparable(records):
  """Epoch records without the wall-clock fields."""
  return [{k: v for k, v in r.items() if k != "train_seconds"} for r in records]


def read_records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_killed_run_resumes_to_the_same_result(tiny_npz, tmp_path):
  # 3 steps per epoch; checkpoints at every epoch end and every 2 steps, so
  # the kill below lands on a mid-epoch checkpoint (step 8 of epoch 3).
  common = ["train", "--dataset", tiny_npz, *TINY, "--optimizer", "sam", "--rho", "0.05",
            "--base-optimizer", "sgd", "--learning-rate", "0.05", "--epochs", "6", "--seed", "5",
            "--checkpoint-every-steps", "2"]
  env = subprocess_env()
  whole, broken = tmp_path / "whole", tmp_path / "broken"
  done = subprocess.run(sam_jax_cmd(*common, "--workdir", str(whole)), cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-4000:]

  # Same run, killed (SIGKILL) once the step-8 checkpoint is on disk.
  process = subprocess.Popen(sam_jax_cmd(*common, "--workdir", str(broken)), cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  mid_epoch3 = broken / "checkpoints" / "last" / "8"
  deadline = time.time() + 300
  while not mid_epoch3.exists() and process.poll() is None and time.time() < deadline:
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.wait()
  assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  assert not (broken / "results.json").exists()

  resumed = subprocess.run(sam_jax_cmd("train", "--workdir", str(broken), "--resume"),
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-4000:]
  assert "resumed from step" in resumed.stdout  # step 8, or 9 if the kill came late
  a = json.loads((whole / "results.json").read_text())
  b = json.loads((broken / "results.json").read_text())
  assert a["selected_epoch"] == b["selected_epoch"]
  assert a["val"] == b["val"] and a["test"] == b["test"]
  assert comparable(read_records(whole)) == comparable(read_records(broken))


def test_a_failed_evaluation_keeps_the_epochs_training(tiny_npz, tmp_path, monkeypatch, capsys):
  from sam_jax.train import loop

  common = ["train", "--dataset", tiny_npz, *TINY, "--epochs", "2", "--seed", "2"]
  whole, broken = tmp_path / "whole", tmp_path / "broken"
  assert cli.main([*common, "--workdir", str(whole)]) == 0

  real_evaluate, calls = loop.evaluate_split, []

  def evaluate_failing_in_epoch_2(*args, **kwargs):  # calls: val, test per epoch
    calls.append(1)
    if len(calls) == 3:
      raise MemoryError("simulated: the evaluation ran out of memory")
    return real_evaluate(*args, **kwargs)

  monkeypatch.setattr(loop, "evaluate_split", evaluate_failing_in_epoch_2)
  with pytest.raises(MemoryError):
    cli.main([*common, "--workdir", str(broken)])
  monkeypatch.setattr(loop, "evaluate_split", real_evaluate)
  # Epoch 2 (steps 4-6) is on disk although its evaluation never finished.
  assert (broken / "checkpoints" / "last" / "6").is_dir()
  assert not (broken / "results.json").exists()
  capsys.readouterr()

  assert cli.main(["train", "--workdir", str(broken), "--resume"]) == 0
  assert "resumed from step 6 (epoch 2, its evaluation)" in capsys.readouterr().out
  a = json.loads((whole / "results.json").read_text())
  b = json.loads((broken / "results.json").read_text())
  assert a["val"] == b["val"] and a["test"] == b["test"] and a["steps"] == b["steps"] == 6
  assert comparable(read_records(whole)) == comparable(read_records(broken))


def test_existing_run_needs_resume(tiny_npz, tmp_path, capsys):
  args = ["train", "--dataset", tiny_npz, *TINY, "--epochs", "1", "--max-steps", "1",
          "--workdir", str(tmp_path)]
  assert cli.main(args) == 0
  assert cli.main(args) == 2
  assert "--resume" in capsys.readouterr().err


def test_resume_refuses_changed_options_but_not_harmless_ones(tiny_npz, tmp_path, capsys):
  args = ["train", "--dataset", tiny_npz, *TINY, "--epochs", "1", "--max-steps", "1",
          "--workdir", str(tmp_path)]
  assert cli.main(args) == 0
  capsys.readouterr()
  resume = ["train", "--workdir", str(tmp_path), "--resume"]
  assert cli.main([*resume, "--optimizer", "sam", "--learning-rate", "0.5"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1
  assert "learning_rate (run: 0.001, given: 0.5), optimizer (run: 'adam', given: 'sam')" in err[0]
  # The same value as stored, and the fields that may change, are accepted.
  assert cli.main([*resume, "--optimizer", "adam", "--epochs", "2", "--no-progress"]) == 0


@pytest.mark.parametrize("body, message", [
    ("raise RuntimeError('no GPU here')\n", r"config file .*bad.py raised RuntimeError: no GPU here \(line 1\)"),
    ("def get_config(:\n", r"config file .*bad.py raised SyntaxError"),
    ("def get_config():\n  return {'optimizer': 1 / 0}\n",
     r"get_config\(\) in .*bad.py raised ZeroDivisionError: division by zero \(line 2\)"),
])
def test_a_config_file_that_raises_is_one_line(tmp_path, capsys, body, message):
  import re

  bad = tmp_path / "bad.py"
  bad.write_text(body)
  assert cli.main(["train", "--config", str(bad), "--workdir", str(tmp_path / "w")]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and re.search(message, err[0]), err
  assert not (tmp_path / "w").exists()


def test_config_files_and_overrides(tiny_npz, tmp_path):
  py = tmp_path / "config.py"
  py.write_text(
      "from sam_jax.train.config import TrainConfig\n"
      f"def get_config():\n  return TrainConfig(dataset={tiny_npz!r}, model='resnet10', "
      "width=0.0625, epochs=3, optimizer='gsam', rho=0.1, alpha=0.2, batch_size=32)\n")
  js = tmp_path / "config.json"
  js.write_text(json.dumps({"dataset": tiny_npz, "optimizer": "asam", "epochs": 4}))
  args = cli._parse_train([
      "--workdir", str(tmp_path / "w"), "--config", str(py), "--epochs", "1", "--rho", "0.2"])
  config = cli.resolve_config(args)
  assert (config.optimizer, config.epochs, config.rho, config.alpha) == ("gsam", 1, 0.2, 0.2)
  config = cli.resolve_config(cli._parse_train(["--workdir", "w", "--config", str(js)]))
  assert (config.optimizer, config.epochs) == ("asam", 4)
  preset = cli.resolve_config(cli._parse_train(["--workdir", "w", "--preset", "medmnist",
                                                "--dataset", "adrenalmnist3d"]))
  assert (preset.model, preset.batch_size, preset.learning_rate) == ("resnet18_3d", 32, 1e-3)


def test_non_finite_training_stops_and_names_the_step(tiny_npz, tmp_path, capsys):
  args = ["train", "--dataset", tiny_npz, *TINY, "--workdir", str(tmp_path), "--optimizer", "sgd",
          "--momentum", "0", "--learning-rate", "1e30", "--epochs", "2"]
  assert cli.main(args) == 3
  err = capsys.readouterr().err
  assert "non-finite" in err and "at step" in err and "--nonfinite skip" in err


def test_skip_policy_counts_and_reports_skipped_steps(tiny_npz, tmp_path, capsys):
  args = ["train", "--dataset", tiny_npz, *TINY, "--workdir", str(tmp_path), "--optimizer", "sgd",
          "--momentum", "0", "--learning-rate", "1e30", "--epochs", "1", "--nonfinite", "skip"]
  assert cli.main(args) == 0
  captured = capsys.readouterr()
  assert "skipped: non-finite" in captured.err + captured.out
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["skipped_steps"] >= 1
  record = read_records(tmp_path)[0]
  assert record["skipped_steps"] == results["skipped_steps"]
  # Skipped steps stay out of the epoch's means. Here the first step is
  # applied (its loss is that of the initial weights, ~ln 2); the next ones
  # start from the exploded weights (loss ~1e29, overflowing gradients) and
  # are skipped, so they must not be averaged in.
  assert math.isfinite(record["train_loss"]) and record["train_loss"] < 10.0


@pytest.mark.data
def test_cpu_preset_on_breastmnist_writes_every_record(tmp_path, capsys):
  data_dir = need(real_data_dir() / "medmnist" / "breastmnist.npz").parents[1]
  workdir = tmp_path / "run"
  args = ["train", "--preset", "cpu", "--dataset", "breastmnist", "--data-dir", str(data_dir),
          "--optimizer", "sam", "--rho", "0.05", "--epochs", "1", "--workdir", str(workdir),
          "--no-progress"]
  assert cli.main(args) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert 0.0 <= summary["test_auc"] <= 1.0
  for name in ("config.json", "metrics.jsonl", "results.json", "curves.png"):
    assert (workdir / name).stat().st_size > 0, name
  results = json.loads((workdir / "results.json").read_text())
  assert results["dataset"]["sizes"] == {"train": 546, "val": 78, "test": 156}
  assert results["versions"]["jax"] and results["device"]["platform"] == "cpu"
  assert {"auc", "acc", "f1_macro", "sensitivity", "specificity"} <= set(results["test"])
  record, = read_records(workdir)
  assert "train_perturbed_loss" in record and record["epoch"] == 1

  assert cli.main(["eval", str(workdir), "--split", "test"]) == 0
  evaluated = json.loads(capsys.readouterr().out)
  assert evaluated["test"]["auc"] == pytest.approx(results["test"]["auc"])


# Both wrappers and both perturbation modes (the step-level equalities are in
# parallel_check.py; this checks placement, checkpoints and eval end to end).
@pytest.mark.parametrize("mode", [["--parallel", "pmap"],
                                  ["--parallel", "shard_map", "--perturbation", "synchronized"],
                                  []])  # "auto": sharded over the 4 devices
def test_parallel_runs_of_the_command_on_four_devices(tiny_npz, tmp_path, mode):
  env = subprocess_env(devices=4)
  workdir = tmp_path / "run"
  args = ["train", "--dataset", tiny_npz, *TINY, "--optimizer", "sam", "--base-optimizer", "sgd",
          "--learning-rate", "0.05", "--epochs", "2", "--workdir", str(workdir), *mode]
  done = subprocess.run(sam_jax_cmd(*args), cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-4000:]
  results = json.loads((workdir / "results.json").read_text())
  assert results["device"]["count"] == 4 and results["steps"] == 6
  assert results["config"]["parallel"] == (mode[1] if mode else "sharded")
  assert 0.0 <= results["test"]["auc"] <= 1.0
  # The checkpoint of the replicated state restores for evaluation.
  evaluated = subprocess.run(sam_jax_cmd("eval", str(workdir), "--which", "last"), cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=600)
  assert evaluated.returncode == 0, evaluated.stderr[-4000:]
  assert json.loads(evaluated.stdout)["step"] == 6


def test_msharpness_run_of_the_command(tiny_npz, tmp_path):
  args = ["train", "--dataset", tiny_npz, *TINY, "--optimizer", "sam", "--m-sharpness", "4",
          "--epochs", "1", "--workdir", str(tmp_path)]
  assert cli.main(args) == 0
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["config"]["m_sharpness"] == 4 and results["steps"] == 3


def test_train_on_your_own_zip_of_class_folders(tmp_path, capsys):
  """sam-jax train --dataset my.zip: classes from folder names, the split recorded."""
  import numpy as np

  from tests.data.synthetic import png_bytes, random_image, write_zip

  rng = np.random.default_rng(0)
  files = {f"scans/{c}/{i}.png": png_bytes(random_image(rng, (24, 20), rgb=False))
           for c in ("benign", "malignant") for i in range(30)}
  archive = write_zip(tmp_path / "mine.zip", files)
  split = tmp_path / "split.json"
  args = ["train", "--dataset", str(archive), "--size", "16", "--channels", "1",
          "--split-ratios", "0.6", "0.2", "0.2", "--split-seed", "3", "--split-file", str(split),
          *TINY, "--batch-size", "16", "--epochs", "1", "--workdir", str(tmp_path / "run")]
  assert cli.main(args) == 0
  results = json.loads((tmp_path / "run" / "results.json").read_text())
  assert results["dataset"]["classes"] == ["benign", "malignant"]
  assert results["dataset"]["sizes"] == {"train": 36, "val": 12, "test": 12}
  assert results["dataset"]["image_shape"] == [16, 16, 1]
  saved = json.loads(split.read_text())
  assert saved["seed"] == 3 and len(saved["splits"]["test"]) == 12
  # The recorded config reproduces the data: the same split comes back.
  assert cli.main(["eval", str(tmp_path / "run"), "--split", "test"]) == 0


def test_esam_trains_from_the_cli_with_its_sharpness_logged(tiny_npz, tmp_path):
  assert cli.main(["train", "--dataset", tiny_npz, *TINY, "--optimizer", "esam",
                   "--beta", "0.5", "--gamma", "0.25", "--learning-rate", "0.05",
                   "--epochs", "1", "--workdir", str(tmp_path)]) == 0
  results = json.loads((tmp_path / "results.json").read_text())
  assert results["config"]["gamma"] == 0.25 and 0 <= results["test"]["auc"] <= 1
  epoch, = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert math.isfinite(epoch["train_sharpness"]) and math.isfinite(epoch["train_perturbed_loss"])


def test_momentum_sam_runs_are_evaluated_at_the_weights_it_optimizes(tiny_npz, tmp_path, capsys):
  """Momentum-SAM trains perturbed weights; evaluation, `sam-jax eval` and restored runs
  remove the perturbation (its checkpoints keep it, so a resume goes on exactly)."""
  import jax
  import numpy as np

  from sam_jax.optimizers.momentum_sam import MomentumSAMState
  from sam_jax.train import config as config_lib
  from sam_jax.train import setup
  from sam_jax.train.checkpoint import Checkpointer

  rho = 0.5
  assert cli.main(["train", "--dataset", tiny_npz, *TINY, "--optimizer", "momentum_sam",
                   "--rho", str(rho), "--learning-rate", "0.05", "--epochs", "1",
                   "--workdir", str(tmp_path)]) == 0
  results = json.loads((tmp_path / "results.json").read_text())
  capsys.readouterr()
  assert cli.main(["eval", str(tmp_path), "--which", "last", "--split", "test"]) == 0
  assert json.loads(capsys.readouterr().out)["test"]["auc"] == pytest.approx(
      results["test"]["auc"])
  restored = setup.restore_run(tmp_path, setup.load_data(config_lib.from_dict(results["config"])),
                               which="last")
  checkpointer = Checkpointer(tmp_path / "checkpoints")
  saved, _ = checkpointer.restore(restored.state, "last")
  checkpointer.close()
  msam, = [s for s in jax.tree.leaves(saved.opt_state, is_leaf=lambda x: isinstance(
      x, MomentumSAMState)) if isinstance(s, MomentumSAMState)]
  offset = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(msam.offset)))
  assert offset == pytest.approx(rho, rel=1e-4)
  for stored, evaluated, eps in zip(jax.tree.leaves(saved.params),
                                    jax.tree.leaves(restored.state.params),
                                    jax.tree.leaves(msam.offset)):
    np.testing.assert_allclose(evaluated, np.asarray(stored) - np.asarray(eps), atol=1e-6)
