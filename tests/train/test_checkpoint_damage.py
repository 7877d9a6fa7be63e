"""Damaged checkpoints: resume falls back to the newest one that restores; eval names the damage."""

from __future__ import annotations

import json

import pytest

from sam_jax import cli
from sam_jax.train import config as config_lib
from sam_jax.train import loop
from tests.data.synthetic import write_medmnist_npz


def damage(checkpoint_dir):
  """Truncates every file of one checkpoint to half its size (orbax's own markers stay)."""
  files = [p for p in checkpoint_dir.rglob("*") if p.is_file() and p.stat().st_size > 16]
  assert files
  for path in files:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("ckpt")
  npz = str(write_medmnist_npz(root / "tiny.npz", counts=(96, 16, 16), seed=1))
  config = config_lib.TrainConfig(dataset=npz, model="resnet10", width=0.0625, batch_size=32,
                                  eval_batch_size=32, epochs=2, optimizer="sgd",
                                  learning_rate=0.05, checkpoint_every_steps=2, progress=False)
  whole = loop.train_and_evaluate(config, root / "whole", log=lambda m: None)
  return root, config, whole


def records(workdir):
  return [{k: v for k, v in json.loads(line).items() if k != "train_seconds"}
          for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_resume_skips_a_damaged_newest_checkpoint(runs, tmp_path):
  root, config, whole = runs
  # 3 steps per epoch, saves at steps 2, 3, 4, 6; stop after step 4, as if killed.
  partial = tmp_path / "run"
  loop.train_and_evaluate(config.replace(max_steps=4), partial, log=lambda m: None)
  (partial / "results.json").unlink()
  last = partial / "checkpoints" / "last"
  steps = sorted(int(p.name) for p in last.iterdir() if p.name.isdigit())
  assert steps[-1] == 4
  damage(last / "4")
  notes = []
  resumed = loop.train_and_evaluate(config, partial, resume=True, log=notes.append)
  assert any("skipping checkpoint" in n and str(last / "4") in n for n in notes)
  assert any("resumed from step 3" in n for n in notes)
  assert resumed["test"] == whole["test"] and resumed["steps"] == whole["steps"]
  assert records(partial) == records(root / "whole")


def test_eval_names_a_damaged_best_checkpoint(runs, tmp_path, capsys):
  import shutil

  root, _, _ = runs
  copy = tmp_path / "copy"
  shutil.copytree(root / "whole", copy)
  best = copy / "checkpoints" / "best"
  step = max(int(p.name) for p in best.iterdir() if p.name.isdigit())
  damage(best / str(step))
  assert cli.main(["eval", str(copy)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and f"best checkpoint {best / str(step)} does not restore" in err[0]
  assert "damaged" in err[0]
