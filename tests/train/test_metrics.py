"""Metrics against scikit-learn on random data (with ties), and MedMNIST semantics."""

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from sam_jax.train import metrics


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels", [None, 5, 2])
def test_auc_equals_sklearn_with_ties(seed, levels):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 300)
  scores = rng.normal(size=300) + labels * 0.7
  if levels:  # coarse scores: many ties, within and across classes
    scores = np.round(scores * levels / 3) / levels
  assert metrics.roc_auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)


def test_auc_edge_cases():
  assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
  assert metrics.roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0
  assert metrics.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
  assert np.isnan(metrics.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_binary_semantics_match_sklearn():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 200)
  p1 = np.clip(rng.uniform(size=200) * 0.7 + labels * 0.3, 0, 1)
  scores = np.stack([1 - p1, p1], axis=1)
  out = metrics.evaluate("binary", labels, scores)
  predictions = (p1 > 0.5).astype(int)
  assert out["auc"] == pytest.approx(skm.roc_auc_score(labels, p1))
  assert out["acc"] == pytest.approx(skm.accuracy_score(labels, predictions))
  assert out["f1_macro"] == pytest.approx(skm.f1_score(labels, predictions, average="macro"))
  assert out["balanced_acc"] == pytest.approx(skm.balanced_accuracy_score(labels, predictions))
  assert out["sensitivity"] == pytest.approx(skm.recall_score(labels, predictions, pos_label=1))
  assert out["specificity"] == pytest.approx(skm.recall_score(labels, predictions, pos_label=0))
  assert out["confusion_matrix"] == skm.confusion_matrix(labels, predictions).tolist()
  # A single positive-class score gives the same numbers.
  assert metrics.evaluate("binary", labels, p1)["auc"] == out["auc"]


@pytest.mark.parametrize("task", ["multiclass", "ordinal"])
def test_multiclass_semantics_match_sklearn(task):
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 4, 300)
  logits = rng.normal(size=(300, 4)) + np.eye(4)[labels] * 1.5
  scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  out = metrics.evaluate(task, labels, scores)
  predictions = scores.argmax(1)
  ovr = np.mean([skm.roc_auc_score(labels == i, scores[:, i]) for i in range(4)])
  assert out["auc"] == pytest.approx(ovr)
  assert out["auc"] == pytest.approx(skm.roc_auc_score(labels, scores, multi_class="ovr", average="macro"))
  assert out["acc"] == pytest.approx(skm.accuracy_score(labels, predictions))
  assert out["f1_macro"] == pytest.approx(skm.f1_score(labels, predictions, average="macro"))
  assert out["balanced_acc"] == pytest.approx(skm.balanced_accuracy_score(labels, predictions))
  assert out["confusion_matrix"] == skm.confusion_matrix(labels, predictions).tolist()


def test_multilabel_semantics():
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 2, (200, 5))
  scores = np.clip(rng.uniform(size=(200, 5)) * 0.8 + labels * 0.2, 0, 1)
  out = metrics.evaluate("multilabel", labels, scores)
  assert out["auc"] == pytest.approx(np.mean([skm.roc_auc_score(labels[:, i], scores[:, i]) for i in range(5)]))
  assert out["acc"] == pytest.approx(np.mean((scores > 0.5) == labels))
  assert out["f1_macro"] == pytest.approx(skm.f1_score(labels, (scores > 0.5).astype(int), average="macro"))
  assert len(out["confusion_matrix"]) == 5


def test_missing_class_is_skipped_in_the_mean_auc():
  labels = np.array([0, 0, 1, 1])
  scores = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
  out = metrics.evaluate("multiclass", labels, scores)
  assert np.isnan(out["auc_per_class"][2]) and out["auc"] == 1.0


def test_progress_bars_only_on_a_terminal():
  import io

  from sam_jax.train import records

  class Terminal(io.StringIO):
    def isatty(self):
      return True

  log, terminal = io.StringIO(), Terminal()
  for stream in (log, terminal):
    bar = records.progress_bars(True, stream)(total=3, desc="epoch 1/1")
    for _ in range(3):
      bar.update(1)
    bar.close()
  assert log.getvalue() == ""            # a log file gets the loop's epoch lines only
  assert "\r" in terminal.getvalue()     # a terminal gets the live bar
  assert records.progress_bars(False, terminal)(total=3).disable


def read_scalars(directory) -> dict:
  """tag -> [(step, value)] from TensorBoard event files (TFRecord framing, read by hand)."""
  import struct

  from tensorboardX.proto import event_pb2

  out: dict = {}
  for path in sorted(directory.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    at = 0
    while at < len(data):
      (length,) = struct.unpack("<Q", data[at:at + 8])
      event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
      at += 12 + length + 4
      for value in event.summary.value:
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def test_tensorboard_event_files_hold_step_and_epoch_scalars(tmp_path):
  pytest.importorskip("tensorboardX")
  from sam_jax.train import config as config_lib
  from sam_jax.train import loop
  from tests.data.synthetic import write_medmnist_npz

  npz = write_medmnist_npz(tmp_path / "tiny.npz", counts=(64, 16, 16), seed=2)
  config = config_lib.TrainConfig(dataset=str(npz), model="resnet10", width=0.0625, batch_size=32,
                                  eval_batch_size=32, epochs=2, optimizer="sam", rho=0.05,
                                  base_optimizer="sgd", learning_rate=0.05, schedule="cosine",
                                  tensorboard=True, progress=False)
  results = loop.train_and_evaluate(config, tmp_path / "run", log=lambda m: None)
  scalars = read_scalars(tmp_path / "run" / "tensorboard")
  assert [s for s, _ in scalars["step/loss"]] == [1, 2, 3, 4]
  assert {"step/perturbed_loss", "step/sharpness", "step/lr", "train/loss", "val/auc",
          "test/acc", "epoch/lr", "epoch/rho"} <= set(scalars)
  lrs = [v for _, v in scalars["step/lr"]]
  assert lrs[0] == pytest.approx(0.05) and lrs[-1] < lrs[0]  # the cosine schedule as used
  records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
  assert [v for _, v in scalars["val/auc"]] == pytest.approx([r["val"]["auc"] for r in records])
  assert results["steps"] == 4
