"""Evaluation metrics with the MedMNIST evaluator's semantics, in NumPy.

``evaluate(task, labels, scores)`` takes the labels and the model's scores
(softmax probabilities, or sigmoid for multi-label) of a whole split:

* binary: AUC of the positive class's score ``scores[:, -1]`` (or a 1-D
  score); ACC at threshold 0.5 on that score; sensitivity (recall of class
  1), specificity (recall of class 0);
* multi-class and ordinal: AUC = unweighted mean of the one-vs-rest AUCs;
  ACC of the argmax;
* multi-label: AUC and ACC (at 0.5) per label, averaged over labels;

plus macro F1, balanced accuracy and the confusion matrix (per label, 2x2,
for multi-label). The AUC is exact: the Mann-Whitney statistic with tied
scores counted one half (average ranks), which is what
``sklearn.metrics.roc_auc_score`` computes. A class absent from the labels
makes its AUC undefined (``nan``), and the mean skips it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sam_jax.data import dataset as ds


def average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks, ties sharing the mean of the ranks they span."""
  values = np.asarray(values)
  order = np.argsort(values, kind="mergesort")
  sorted_values = values[order]
  ranks = np.empty(len(values), np.float64)
  starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  ends = np.r_[starts[1:], len(values)]
  for start, end in zip(starts, ends):
    ranks[order[start:end]] = 0.5 * (start + 1 + end)
  return ranks


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Exact area under the ROC curve; ``nan`` unless both classes are present."""
  labels = np.asarray(labels).astype(bool).reshape(-1)
  scores = np.asarray(scores, np.float64).reshape(-1)
  n_pos = int(labels.sum())
  n_neg = len(labels) - n_pos
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  ranks = average_ranks(scores)
  return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
  """``[true, predicted]`` counts."""
  matrix = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
  return matrix


def _f1_and_recall(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  tp = np.diag(matrix).astype(np.float64)
  predicted, actual = matrix.sum(0), matrix.sum(1)
  with np.errstate(divide="ignore", invalid="ignore"):
    precision = np.where(predicted > 0, tp / predicted, 0.0)
    recall = np.where(actual > 0, tp / actual, 0.0)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
  return f1, recall


def _nanmean(values: list[float]) -> float:
  finite = [v for v in values if not np.isnan(v)]
  return float(np.mean(finite)) if finite else float("nan")


def evaluate(task: str, labels: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
  """MedMNIST-style metrics of one split (see the module docstring)."""
  labels = np.asarray(labels)
  scores = np.asarray(scores, np.float64)
  if len(labels) != len(scores):
    raise ValueError(f"{len(labels)} labels but {len(scores)} scores.")

  if task == ds.MULTILABEL:
    predictions = (scores > 0.5).astype(np.int64)
    aucs = [roc_auc(labels[:, i], scores[:, i]) for i in range(labels.shape[1])]
    matrices = [confusion_matrix(labels[:, i], predictions[:, i], 2) for i in range(labels.shape[1])]
    f1s = [_f1_and_recall(m)[0][1] for m in matrices]
    balanced = [float(np.mean(_f1_and_recall(m)[1])) for m in matrices]
    return {
        "auc": _nanmean(aucs),
        "acc": float(np.mean(predictions == labels)),
        "f1_macro": float(np.mean(f1s)),
        "balanced_acc": float(np.mean(balanced)),
        "auc_per_class": aucs,
        "confusion_matrix": [m.tolist() for m in matrices],
    }

  if task == ds.BINARY:
    positive = scores if scores.ndim == 1 else scores[:, -1]
    predictions = (positive > 0.5).astype(np.int64)
    matrix = confusion_matrix(labels, predictions, 2)
    f1, recall = _f1_and_recall(matrix)
    return {
        "auc": roc_auc(labels == 1, positive),
        "acc": float(np.mean(predictions == labels)),
        "f1_macro": float(np.mean(f1)),
        "balanced_acc": float(np.mean(recall)),
        "sensitivity": float(recall[1]),
        "specificity": float(recall[0]),
        "confusion_matrix": matrix.tolist(),
    }

  num_classes = scores.shape[1]
  predictions = np.argmax(scores, axis=1)
  matrix = confusion_matrix(labels, predictions, num_classes)
  f1, recall = _f1_and_recall(matrix)
  present = matrix.sum(1) > 0
  aucs = [roc_auc(labels == i, scores[:, i]) for i in range(num_classes)]
  return {
      "auc": _nanmean(aucs),
      "acc": float(np.mean(predictions == labels)),
      "f1_macro": float(np.mean(f1[present])),
      "balanced_acc": float(np.mean(recall[present])),
      "auc_per_class": aucs,
      "confusion_matrix": matrix.tolist(),
  }
