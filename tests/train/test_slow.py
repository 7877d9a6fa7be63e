"""Slow tests (``make test-slow``): full training runs on real data."""

import json
import pathlib

import pytest

from sam_jax.train import config as config_lib
from sam_jax.train import loop
from tests.data.conftest import need, real_data_dir

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "experiments" / "results" / "breastmnist_main"


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("name", ["sgd", "sam"])
def test_main_job_reproduces_the_committed_results(name, tmp_path):
  """The cpu-preset BreastMNIST runs give the committed test AUC/ACC.

  Exactly on the machine that wrote them (XLA on CPU is deterministic);
  elsewhere, float differences may move training a little, hence the margin.
  """
  need(real_data_dir() / "medmnist" / "breastmnist.npz")
  committed = json.loads((COMMITTED / name / "results.json").read_text())
  config = config_lib.from_dict(committed["config"]).replace(
      data_dir=str(real_data_dir()), progress=False)
  results = loop.train_and_evaluate(config, tmp_path, log=lambda *_: None)
  assert results["test"]["auc"] == pytest.approx(committed["test"]["auc"], abs=0.03)
  assert results["test"]["acc"] == pytest.approx(committed["test"]["acc"], abs=0.05)
