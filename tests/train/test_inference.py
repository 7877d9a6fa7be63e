"""Load a trained run and predict: the same probabilities as the run's own evaluation."""

import csv
import io
import json

import numpy as np
import pytest

import sam_jax
from sam_jax import cli
from sam_jax.data import medmnist
from sam_jax.train import config as config_lib
from sam_jax.train import evaluate, loop
from tests.data.synthetic import png_bytes, write_medmnist_npz


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("inference")
  npz = write_medmnist_npz(root / "tiny.npz", counts=(64, 16, 16), seed=5)
  config = config_lib.TrainConfig(dataset=str(npz), model="resnet10", width=0.0625,
                                  batch_size=32, eval_batch_size=32, epochs=1,
                                  optimizer="sam", base_optimizer="sgd", learning_rate=0.05,
                                  progress=False)
  loop.train_and_evaluate(config, root / "run", log=lambda m: None)
  return root / "run", npz


def test_predict_matches_the_runs_evaluation(run):
  workdir, npz = run
  loaded = sam_jax.load_run(workdir)
  test = medmnist.load(npz)["test"]
  scores = loaded.predict(test.images, batch_size=6)  # batches that do not divide 16
  assert scores.shape == (16, 2) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-5)
  from sam_jax.train.metrics import roc_auc
  stored = evaluate.evaluate_checkpoint(workdir, splits=["test"])["test"]["auc"]
  assert roc_auc(test.labels, scores[:, 1]) == pytest.approx(stored, abs=1e-6)
  with pytest.raises(ValueError, match=r"this run takes \(28, 28, 1\)"):
    loaded.predict(np.zeros((2, 32, 32, 1), np.uint8))


def test_predict_command_writes_a_csv(run, tmp_path, capsys):
  workdir, npz = run
  images = medmnist.load(npz)["test"].images[:2]
  files = []
  for i, image in enumerate(images):
    path = tmp_path / f"scan{i}.png"
    path.write_bytes(png_bytes(image[..., 0]))
    files.append(str(path))
  out = tmp_path / "p.csv"
  assert cli.main(["predict", str(workdir), *files, "--out", str(out)]) == 0
  rows = list(csv.DictReader(io.StringIO(out.read_text())))
  assert [r["input"] for r in rows] == files and set(rows[0]) == {"input", "predicted", "p_0", "p_1"}
  direct = sam_jax.load_run(workdir).predict(images)
  assert np.allclose([[float(r["p_0"]), float(r["p_1"])] for r in rows], direct, atol=1e-6)
  assert cli.main(["predict", str(workdir), str(npz), "--split", "val"]) == 0
  assert len(capsys.readouterr().out.splitlines()) == 17
  assert cli.main(["predict", str(workdir), str(tmp_path / "none.png")]) == 2
  assert "no image file at" in capsys.readouterr().err
