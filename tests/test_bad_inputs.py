"""Every bad input we know of, through the ``sam-jax`` command: one table, one test.

Each case builds its inputs in a fresh directory, runs the command in this
process, and checks three things: the exit code (2 for a user error, 3 for a
run stopped by non-finite values), one ``sam-jax...: error`` line naming the
problem and no traceback, and that nothing was written half-way (the
directory tree is unchanged, lock files aside, unless the case trains before
it fails).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
from typing import Callable, Optional

import numpy as np
import pytest

from sam_jax import cli
from sam_jax.train import records
from sam_jax.train.workdir_lock import WorkdirLock
from tests.data.synthetic import png_bytes, random_image, write_medmnist_npz, write_tree
from tests.data.test_folders import bomb_png

TINY = ["--model", "resnet10", "--width", "0.0625", "--batch-size", "32",
        "--eval-batch-size", "64", "--no-progress"]


@dataclasses.dataclass
class Inputs:
  """What the cases share: a tiny .npz and a finished run built from it."""

  npz: pathlib.Path
  run: pathlib.Path


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Inputs:
  root = tmp_path_factory.mktemp("bad_inputs")
  npz = write_medmnist_npz(root / "tiny.npz", counts=(64, 32, 32), seed=3)
  run = root / "run"
  assert cli.main(["train", "--dataset", str(npz), *TINY, "--workdir", str(run),
                   "--optimizer", "sgd", "--learning-rate", "0.05", "--epochs", "1"]) == 0
  return Inputs(npz, run)


# ---------------------------------------------------------------------------
# Inputs of the cases.


def train(tmp, *extra, dataset=None, shared=None):
  return ["train", "--dataset", str(dataset if dataset is not None else shared.npz), *TINY,
          "--workdir", str(tmp / "run"), *extra]


def npz(tmp, **overrides):
  return write_medmnist_npz(tmp / "data" / "mine.npz", counts=(40, 8, 8), seed=1, **overrides)


def folder(tmp, files=None, **changes):
  """A class-per-folder tree ``mine/{a,b}/*.png`` (10 each, 20x20 RGB) with ``changes``
  applied: a path -> bytes to add or replace, or None to delete."""
  rng = np.random.default_rng(0)
  tree = files if files is not None else {
      f"{c}/{i}.png": png_bytes(random_image(rng, (20, 20))) for c in "ab" for i in range(10)}
  for path, data in changes.items():
    if data is None:
      tree.pop(path)
    else:
      tree[path] = data
  return write_tree(tmp / "mine", tree)


def copy_run(shared, tmp):
  return pathlib.Path(shutil.copytree(shared.run, tmp / "run"))


def config_file(tmp, name, body):
  path = tmp / name
  path.write_text(body)
  return path


def truncated(path):
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  return path


def damage_best(run):
  best = run / "checkpoints" / "best"
  for path in best.rglob("*"):
    if path.is_file() and path.stat().st_size > 16:
      truncated(path)
  return run


def duplicated_across_splits(tmp):
  """Two identical images of class a, put by a split file in train and in test."""
  rng = np.random.default_rng(0)
  files = {f"{c}/{i}.png": png_bytes(random_image(rng, (20, 20))) for c in "ab" for i in range(10)}
  files["a/9.png"] = files["a/0.png"]
  root = write_tree(tmp / "mine", files)
  names = sorted(files)
  test = ["a/9.png", "b/9.png"]
  val = ["a/8.png", "b/8.png"]
  split = {"splits": {"train": [n for n in names if n not in test + val], "val": val,
                      "test": test}}
  (tmp / "split.json").write_text(json.dumps(split))
  return root


def after(*values):
  """The last value: ``after(make_files(...), argv)`` makes the files, then the argv."""
  return values[-1]


def readonly_workdir(tmp):
  """A work directory that cannot be created (root ignores permissions, but not /sys)."""
  if os.geteuid() != 0:
    locked = tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    return locked / "run"
  if not os.path.isdir("/sys/kernel"):
    pytest.skip("running as root without a read-only /sys to make a read-only work directory")
  return pathlib.Path("/sys/sam-jax-run")


def vanish_after_first_epoch(monkeypatch, tmp):
  """Deletes the work directory right after the first epoch's record is written."""
  append = records.EpochLog.append

  def append_then_vanish(self, record):
    append(self, record)
    shutil.rmtree(tmp / "run")

  monkeypatch.setattr(records.EpochLog, "append", append_then_vanish)


# ---------------------------------------------------------------------------
# The table.


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  argv: Callable[[pathlib.Path, Inputs], list]
  message: str                  # a regular expression the error line must match
  code: int = 2
  trains: bool = False          # it trains before it fails: a partial run is allowed
  patch: Optional[Callable] = None  # (monkeypatch, tmp) -> anything to release() afterwards


CASES = [
    # Options.
    Case("unknown optimizer", lambda t, s: train(t, "--optimizer", "sammy", shared=s),
         r"unknown optimizer 'sammy'; known: sgd, adam"),
    Case("unknown model", lambda t, s: train(t, "--model", "resnet19", shared=s),
         r"unknown model 'resnet19'"),
    Case("unknown dataset name", lambda t, s: train(t, "--data-dir", str(t), dataset="breastmnsit"),
         r"unknown dataset 'breastmnsit'; known: .*breastmnist"),
    Case("negative rho", lambda t, s: train(t, "--optimizer", "sam", "--rho", "-0.1", shared=s),
         r"rho must be >= 0"),
    Case("NaN learning rate", lambda t, s: train(t, "--learning-rate", "nan", shared=s),
         r"learning_rate must be > 0, got nan"),
    Case("batch size 0", lambda t, s: train(t, "--batch-size", "0", shared=s),
         r"batch_size must be > 0, got 0"),
    Case("batch larger than the training set", lambda t, s: train(t, "--batch-size", "500", shared=s),
         r"batch size 500 is larger than the 64 training examples"),
    Case("hyperparameter the method does not take",
         lambda t, s: train(t, "--optimizer", "sam", "--eta", "0.1", shared=s), r"sam takes no 'eta'"),
    Case("ESAM's example selection on a loss that is not a mean over examples",
         lambda t, s: train(t, "--optimizer", "esam", "--loss", "focal", shared=s),
         r"esam with gamma < 1 ranks examples by their own loss, which loss 'focal' has not"),
    Case("ESAM's example selection with gradient accumulation", lambda t, s: train(
        t, "--optimizer", "esam", "--accumulation-steps", "2", shared=s),
         r"esam with gamma < 1 selects examples from the whole batch"),
    Case("ESAM's share of the batch outside (0, 1]",
         lambda t, s: train(t, "--optimizer", "esam", "--gamma", "1.5", shared=s),
         r"gamma must be <= 1.0, got 1.5"),
    Case("the distributed runtime for a command other than train",
         lambda t, s: ["--distributed", "eval", str(s.run)],
         r"--distributed is for train, not eval"),
    Case("unknown parallel mode", lambda t, s: train(t, "--parallel", "tpu", shared=s),
         r"parallel must be one of"),
    Case("not a number", lambda t, s: train(t, "--epochs", "ten", shared=s),
         r"^sam-jax train: error: argument --epochs: invalid int value: 'ten'"),
    Case("unknown preset", lambda t, s: train(t, "--preset", "huge", shared=s),
         r"argument --preset: invalid choice: 'huge'"),
    Case("unknown flag", lambda t, s: train(t, "--learnin-rate", "0.1", shared=s),
         r"unrecognized arguments: --learnin-rate"),
    Case("loss that does not fit the task", lambda t, s: train(
        t, "--loss", "aucm", "--optimizer", "pesg",
        dataset=npz(t, **{f"{p}_labels": (np.arange(n) % 3)[:, None].astype(np.uint8)
                          for p, n in (("train", 40), ("val", 8), ("test", 8))})),
         r"loss 'aucm' needs a"),
    Case("2D model on 3D volumes", lambda t, s: train(
        t, dataset=write_medmnist_npz(t / "vol.npz", spatial=(8, 8, 8), counts=(40, 8, 8))),
         r"model 'resnet10' takes 2D images but vol has 3D volumes"),
    Case("3D model on 2D images", lambda t, s: train(t, "--model", "resnet18_3d", shared=s),
         r"takes 3D volumes but tiny has 2D images"),
    Case("unknown loss", lambda t, s: train(t, "--loss", "hinge", shared=s),
         r"unknown loss 'hinge'; known: ce,"),
    Case("AUC-margin loss with an optimizer other than PESG",
         lambda t, s: train(t, "--loss", "aucm", "--optimizer", "soap", shared=s),
         r"only PESG updates; use --optimizer pesg"),
    Case("PESG on a loss other than AUC-margin",
         lambda t, s: train(t, "--loss", "ap", "--optimizer", "pesg", shared=s),
         r"pesg optimizes the AUC-margin loss"),
    Case("SAM on the AUC-margin loss with a base other than PESG", lambda t, s: train(
        t, "--loss", "aucm", "--optimizer", "sam", "--base-optimizer", "adam", shared=s),
         r"--base-optimizer pesg\), not 'adam'"),
    Case("dual sampler rate outside (0, 1)",
         lambda t, s: train(t, "--sampler", "dual", "--sampling-rate", "1.5", shared=s),
         r"sampling_rate must be in \(0, 1\)"),
    Case("PESG's momentum convention on Adam",
         lambda t, s: train(t, "--momentum-convention", "libauc", shared=s),
         r"is PESG's option; 'adam' uses heavy-ball"),
    Case("a DAM option on Adam", lambda t, s: train(t, "--dam-mode", "adam", shared=s),
         r"dam_mode applies to pesg, soap, sopa, sopa_s, not 'adam'"),
    Case("split ratios that do not sum to 1",
         lambda t, s: train(t, "--split-ratios", "0.5", "0.5", "0.5", dataset=folder(t)),
         r"split_ratios are the train, val and test fractions"),
    Case("channels neither 1 nor 3", lambda t, s: train(t, "--channels", "2", dataset=folder(t)),
         r"channels must be 1 \(grayscale\) or 3 \(RGB\), got 2"),
    # Config files (a .py config is executed code: its errors are named as the file's).
    Case("--preset with --config", lambda t, s: train(
        t, "--preset", "cpu", "--config", str(config_file(t, "c.json", "{}")), shared=s),
         r"give --preset or --config, not both"),
    Case("config file missing", lambda t, s: train(t, "--config", str(t / "nope.py"), shared=s),
         r"config file not found: .*nope\.py"),
    Case("config .py that raises", lambda t, s: train(t, "--config", str(config_file(
        t, "bad.py", "def get_config():\n  return {'epochs': 1 / 0}\n")), shared=s),
         r"get_config\(\) in .*bad\.py raised ZeroDivisionError: division by zero \(line 2\)"),
    Case("config .py with a syntax error", lambda t, s: train(t, "--config", str(config_file(
        t, "bad.py", "def get_config(:\n")), shared=s), r"config file .*bad\.py raised SyntaxError"),
    Case("config .json malformed", lambda t, s: train(t, "--config", str(config_file(
        t, "bad.json", '{"epochs": 2,}')), shared=s),
         r"config file .*bad\.json is not valid JSON: .* \(line 1, column 14\)"),
    Case("config .json with an unknown field", lambda t, s: train(t, "--config", str(config_file(
        t, "bad.json", '{"learnin_rate": 0.1}')), shared=s), r"unknown config fields \['learnin_rate'\]"),
    Case("config .json with a wrong type", lambda t, s: train(t, "--config", str(config_file(
        t, "bad.json", '{"epochs": "ten"}')), shared=s),
         r"config field epochs must be a int, got 'ten'"),
    Case("config of another format", lambda t, s: train(t, "--config", str(config_file(
        t, "c.yaml", "epochs: 2\n")), shared=s), r"config files are \.json or \.py, got c\.yaml"),
    # Work directories.
    Case("work directory is a file", lambda t, s: after((t / "run").write_text("x"),
                                                         train(t, shared=s)),
         r"work directory .*run is a file"),
    Case("work directory in use", lambda t, s: train(t, shared=s), r"run is in use by pid \d+",
         patch=lambda mp, t: WorkdirLock(t / "run").acquire()),
    Case("work directory cannot be created",
         lambda t, s: ["train", "--dataset", str(s.npz), *TINY, "--workdir", str(readonly_workdir(t))],
         r"(Permission denied|Operation not permitted|Read-only file system): .*run"),
    Case("existing run without --resume", lambda t, s: after(copy_run(s, t), train(
        t, "--optimizer", "sgd", "--learning-rate", "0.05", "--epochs", "1", shared=s)),
         r"already holds checkpoints: pass --resume"),
    Case("--resume with a changed option", lambda t, s: [
        "train", "--workdir", str(copy_run(s, t)), "--resume", "--optimizer", "sam"],
         r"these options differ: optimizer \(run: 'sgd', given: 'sam'\)"),
    Case("--init-from a directory that is not a run", lambda t, s: train(
        t, "--init-from", str(t), shared=s), r"is not a run directory \(no config\.json\)"),
    Case("work directory removed during the run", lambda t, s: train(t, "--epochs", "2", shared=s),
         r"the work directory .*run disappeared during the run", trains=True,
         patch=vanish_after_first_epoch),
    Case("overflowing learning rate", lambda t, s: train(
        t, "--optimizer", "sgd", "--momentum", "0", "--learning-rate", "1e30", "--epochs", "2",
        shared=s), r"^sam-jax: training stopped: non-finite .* at step", code=3, trains=True),
    # MedMNIST-format .npz files.
    Case(".npz missing", lambda t, s: train(t, dataset=t / "none.npz"), r"none\.npz"),
    Case(".npz truncated", lambda t, s: train(t, dataset=truncated(npz(t))),
         r"mine\.npz cannot be read as an \.npz archive"),
    Case("not an .npz under an .npz name", lambda t, s: train(
        t, dataset=config_file(t, "text.npz", "hello")), r"text\.npz cannot be read as an \.npz"),
    Case(".npz without a key", lambda t, s: train(t, dataset=npz(t, val_labels=None)),
         r"missing keys \['val_labels'\]"),
    Case(".npz images of the wrong rank", lambda t, s: train(
        t, dataset=npz(t, train_images=np.zeros((40, 28), np.uint8))),
         r"cannot read images of shape \(40, 28\)"),
    Case(".npz with more labels than images", lambda t, s: train(
        t, dataset=npz(t, test_labels=np.zeros((9, 1), np.uint8))),
         r"test_labels have shape \(9, 1\) for 8 images"),
    Case(".npz float images", lambda t, s: train(
        t, dataset=npz(t, val_images=np.zeros((8, 28, 28), np.float32))),
         r"val_images are float32, not uint8"),
    Case(".npz empty val split", lambda t, s: train(t, dataset=npz(
        t, val_images=np.zeros((0, 28, 28), np.uint8), val_labels=np.zeros((0, 1), np.uint8))),
         r"the val split of mine is empty"),
    Case(".npz empty train split", lambda t, s: train(t, dataset=npz(
        t, train_images=np.zeros((0, 28, 28), np.uint8), train_labels=np.zeros((0, 1), np.uint8))),
         r"mine\.npz: the train split is empty"),
    Case(".npz with a stray label", lambda t, s: train(t, dataset=npz(
        t, train_labels=np.r_[np.arange(39) % 2, 7][:, None].astype(np.uint8))),
         r"labels run 0\.\.7 but class\(es\) \[2, 3, 4, 5, 6\] have no training example"),
    Case(".npz with fractional labels", lambda t, s: train(t, dataset=npz(
        t, train_labels=np.full((40, 1), 0.5))), r"train_labels are float64 with non-integer"),
    Case("MedMNIST set missing from the data directory", lambda t, s: train(
        t, "--data-dir", str(t), dataset="breastmnist"), r"breastmnist\.npz"),
    # Image folders and zips.
    Case("folder missing", lambda t, s: train(t, dataset=t / "nothere/"), r"no folder or zip at .*nothere"),
    Case("zip that is not a zip", lambda t, s: train(t, dataset=config_file(t, "mine.zip", "PK junk")),
         r"mine\.zip is neither a folder nor a readable zip"),
    Case("text file named .png in a class folder", lambda t, s: train(
        t, "--size", "16", dataset=folder(t, **{"a/3.png": b"not a png"})),
         r"cannot decode image a/3\.png"),
    Case("truncated image in a class folder", lambda t, s: train(
        t, "--size", "16", dataset=folder(t, **{"b/4.png": png_bytes(random_image(
            np.random.default_rng(1), (20, 20)))[:600]})),
         r"cannot decode image b/4\.png"),
    Case("empty class folder", lambda t, s: after(folder(t), (t / "mine" / "c").mkdir(),
                                                  train(t, dataset=t / "mine")),
         r"class folder\(s\) \['c'\] under .* have no images"),
    Case("a single class", lambda t, s: train(
        t, dataset=folder(t, **{f"b/{i}.png": None for i in range(10)})),
         r"has one class folder of images \(a\); a classifier needs two or more"),
    Case("images of different sizes without --size", lambda t, s: train(
        t, dataset=folder(t, **{"a/2.png": png_bytes(np.zeros((30, 24), np.uint8))})),
         r"images differ in size .*pass size="),
    Case("a decompression bomb", lambda t, s: train(
        t, "--size", "16", dataset=folder(t, **{"b/7.png": bomb_png(30000, 30000)})),
         r"image b/7\.png .*decompression bomb"),
    Case("an image over --max-pixels", lambda t, s: train(
        t, "--size", "16", "--max-pixels", "100", dataset=folder(t)), r"is 20x20 = 400 pixels, over the cap of 100"),
    Case("identical images with --duplicates error", lambda t, s: train(
        t, "--duplicates", "error", dataset=folder(t, **{"b/5.png": (folder(t) / "a/5.png").read_bytes()})),
         r"1 groups of identical images: a/5\.png \[a\] = b/5\.png \[b\]"),
    Case("identical images across train and test, --duplicates error", lambda t, s: train(
        t, "--duplicates", "error", "--split-file", str(t / "split.json"),
        dataset=duplicated_across_splits(t)), r"groups of identical images: a/0\.png \[a\] = a/9\.png \[a\]"),
    Case("a split file naming unknown images", lambda t, s: train(
        t, "--split-file", str(config_file(t, "split.json", json.dumps(
            {"splits": {"train": ["a/0.png", "z/1.png"], "val": [], "test": []}}))),
        dataset=folder(t)), r"split file .*names 1 images that are not in the dataset"),
    Case("--num-classes on a folder", lambda t, s: train(t, "--num-classes", "3", dataset=folder(t)),
         r"num_classes applies to \.npz datasets"),
    # The other commands.
    Case("eval of a directory that is not a run", lambda t, s: ["eval", str(t)],
         r"is not a run directory \(no config\.json\)"),
    Case("eval of a damaged best checkpoint", lambda t, s: ["eval", str(damage_best(copy_run(s, t)))],
         r"the best checkpoint .*checkpoints/best/\d+ does not restore"),
    Case("grid with a missing study file", lambda t, s: ["grid", "status", str(t / "study.py")],
         r"study file not found: .*study\.py"),
    Case("grid with a study that raises", lambda t, s: ["grid", "status", str(config_file(
        t, "study.py", "def get_study(preset):\n  raise KeyError(preset)\n"))],
         r"get_study\('cpu'\) in .*study\.py raised KeyError: 'cpu' \(line 2\)"),
    Case("compare of a path that does not exist", lambda t, s: ["compare", str(t / "runs")],
         r"no run directory or folder matches .*runs"),
    Case("compare with no finished runs", lambda t, s: ["compare", str(t)],
         r"no finished runs \(results\.json\)"),
    Case("sharpness of a directory that is not a run", lambda t, s: ["sharpness", str(t)],
         r"is not a run directory"),
]


def tree_state(root: pathlib.Path) -> dict:
  """Every file under ``root`` with its content hash (lock files aside)."""
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case, shared, tmp_path, capsys, monkeypatch):
  argv = [str(a) for a in case.argv(tmp_path, shared)]
  held = case.patch(monkeypatch, tmp_path) if case.patch is not None else None
  before = tree_state(tmp_path)
  capsys.readouterr()
  try:
    code = cli.main(argv)
  except SystemExit as exit_:  # argparse's usage errors
    code = exit_.code
  finally:
    if hasattr(held, "release"):
      held.release()
  out, err = capsys.readouterr()
  assert "Traceback" not in out + err
  errors = [line for line in err.splitlines() if line.startswith("sam-jax")]
  assert len(errors) == 1, err
  assert re.search(case.message, errors[0]), errors[0]
  assert errors[0].startswith(("sam-jax: error: ", "sam-jax train: error: ",
                               "sam-jax: training stopped: "))
  assert code == case.code
  if case.trains:
    assert not (tmp_path / "run" / "results.json").exists()
  else:
    assert tree_state(tmp_path) == before


def test_the_table_is_at_least_35_cases():
  assert len(CASES) >= 35 and len({c.name for c in CASES}) == len(CASES)
