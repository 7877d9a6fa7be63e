"""The grid runner: expansion, skipping done runs, resuming, failures, reports, compare."""

from __future__ import annotations

import json
import pathlib
import sys

import pytest

from sam_jax import cli, studies
from sam_jax.train import config as config_lib
from tests.data.synthetic import write_medmnist_npz

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
  return str(write_medmnist_npz(tmp_path_factory.mktemp("data") / "tiny.npz",
                                counts=(64, 32, 32), seed=4))


def tiny_study(npz: str, methods=("adam", "sam"), seeds=(0, 1)) -> studies.Study:
  changes = {"adam": {}, "sam": dict(optimizer="sam", base_optimizer="adam", rho=0.05),
             "broken": dict(batch_size=4096)}

  def configure(dataset, model, method):
    fields = dict(dataset=npz, model=model, width=0.0625, batch_size=32, eval_batch_size=64,
                  epochs=2, progress=False)
    return config_lib.TrainConfig(**{**fields, **changes[method]})
  return studies.Study("tiny", studies.expand(
      [studies.Block(["tiny"], ["resnet10"], list(methods))], seeds, configure),
      baselines={"sam": "adam"}, description="a test grid")


def test_expand_is_the_product_without_duplicates(tiny_npz):
  study = tiny_study(tiny_npz, methods=("adam", "sam", "adam"), seeds=(0, 1, 2))
  assert len(study.runs) == 6
  assert [r.config.seed for r in study.runs[:3]] == [0, 1, 2]
  assert study.runs[0].directory(pathlib.Path("r")) == pathlib.Path("r/runs/tiny/resnet10/adam/seed0")


@pytest.fixture(scope="module")
def finished(tiny_npz, tmp_path_factory):
  root = tmp_path_factory.mktemp("grid")
  study = tiny_study(tiny_npz, methods=("adam", "sam", "broken"))
  done = []
  counts = studies.run_grid(study, root, on_done=lambda run, d: done.append(str(run)),
                            log=lambda m: None)
  return study, root, counts, done


def test_grid_runs_everything_and_records_failures(finished):
  study, root, counts, done = finished
  assert counts == {"done": 4, "changed": 0, "failed": 2, "running": 0, "started": 0, "pending": 0}
  assert len(done) == 4
  error = studies.grid.read_error(study.runs[-1].directory(root))
  assert error.startswith("ValueError: batch size 4096 is larger")
  lines = "\n".join(studies.status_lines(study, root))
  assert "4 done, 0 changed, 0 running, 0 started, 2 failed, 0 pending of 6 runs" in lines and "batch size 4096" in lines


def test_a_second_run_of_the_grid_runs_nothing(finished):
  study, root, _, _ = finished
  before = {p: p.stat().st_mtime_ns for p in root.rglob("results.json")}
  done = []
  counts = studies.run_grid(study, root, on_done=lambda run, d: done.append(run),
                            log=lambda m: None)
  assert done == [] and counts["done"] == 4
  assert before == {p: p.stat().st_mtime_ns for p in root.rglob("results.json")}


def test_an_interrupted_run_resumes_in_the_grid(tiny_npz, tmp_path, finished):
  study, root, _, _ = finished
  run = study.runs[0]
  partial = run.directory(tmp_path)
  from sam_jax.train import loop
  loop.train_and_evaluate(run.config.replace(max_steps=2), partial, log=lambda m: None)
  (partial / "results.json").unlink()  # as if killed after its first checkpoint
  assert studies.run_state(partial) == "started"
  one = studies.Study("one", [run])
  studies.run_grid(one, tmp_path, log=lambda m: None)
  again = json.loads((partial / "results.json").read_text())
  whole = json.loads((run.directory(root) / "results.json").read_text())
  assert again["test"] == whole["test"] and again["steps"] == whole["steps"]


def test_runs_made_with_other_settings_are_changed_never_done(finished, tmp_path):
  """Editing a study after some runs finished must not mix two settings in one cell."""
  study, root, _, _ = finished
  edited = studies.Study(study.name, [
      studies.Run(r.dataset, r.model, r.method, r.seed,
                  r.config.replace(learning_rate=0.01) if r.method == "sam" else r.config)
      for r in study.runs], study.baselines)
  sam = next(r for r in edited.runs if r.method == "sam")
  assert studies.run_state(sam.directory(root), sam.config) == "changed"
  assert studies.run_state(sam.directory(root)) == "done"  # without a config: files only
  # Fields that do not change what is computed are not changes.
  assert studies.run_state(sam.directory(root), next(
      r for r in study.runs if r.method == "sam").config.replace(eval_batch_size=7)) == "done"
  lines = "\n".join(studies.status_lines(edited, root))
  assert "2 done, 2 changed, 0 running, 0 started, 2 failed" in lines
  assert "learning_rate (run: 0.001, study: 0.01)" in lines
  before = {p: p.stat().st_mtime_ns for p in root.rglob("results.json")}
  with pytest.raises(ValueError, match=r"2 runs under .* were made with other settings"):
    studies.run_grid(edited, root, log=lambda m: None)
  assert before == {p: p.stat().st_mtime_ns for p in root.rglob("results.json")}
  text = studies.write_study_report(edited, root, tmp_path / "edited.md", "cpu").read_text()
  assert "2 runs made with other settings" in text
  assert not any(line.startswith("| sam |") for line in text.splitlines())


def test_a_started_run_is_not_resumed_with_other_settings(tiny_npz, tmp_path, finished):
  study, _, _, _ = finished
  run = study.runs[0]
  directory = run.directory(tmp_path)
  from sam_jax.train import loop
  loop.train_and_evaluate(run.config.replace(max_steps=2), directory, log=lambda m: None)
  (directory / "results.json").unlink()
  changed = run.config.replace(optimizer="sgd", learning_rate=0.1)
  assert studies.run_state(directory, changed) == "changed"
  assert studies.run_state(directory, run.config.replace(epochs=5)) == "started"
  # The library path refuses too, not only the grid and the CLI.
  with pytest.raises(ValueError, match=r"configured differently: learning_rate \(run: 0.001, "
                                       r"given: 0.1\), optimizer \(run: 'adam', given: 'sgd'\)"):
    loop.train_and_evaluate(changed, directory, resume=True, log=lambda m: None)
  assert not (directory / "results.json").exists()


def test_report_has_every_cell_with_seeds_and_paired_test(finished, tmp_path):
  study, root, _, _ = finished
  path = studies.write_study_report(study, root, tmp_path / "tiny.md", "cpu")
  text = path.read_text()
  assert "## tiny, resnet10" in text and "4 of 6 runs finished" in text
  sam_row = next(line for line in text.splitlines() if line.startswith("| sam |"))
  cells = [c.strip() for c in sam_row.strip("|").split("|")]
  assert cells[1] == "2" and cells[7] == "adam"  # seeds, vs
  assert (tmp_path / "tiny_auc.png").stat().st_size > 0
  assert (tmp_path / "tiny_curves.png").stat().st_size > 0


def test_compare_labels_runs_by_what_differs(finished, tmp_path, capsys):
  study, root, _, _ = finished
  dirs = [str(p.parent) for p in sorted(root.rglob("results.json"))]
  assert cli.main(["compare", *dirs, "--out", str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "optimizer=adam" in out and "optimizer=sam" in out
  assert (tmp_path / "compare_curves.png").exists()
  # A folder of runs and a quoted glob find the same runs.
  assert studies.compare([str(root)]) == studies.compare([str(root / "runs" / "*" / "*" / "*" / "seed*")])
  with pytest.raises(FileNotFoundError):
    studies.compare([str(tmp_path / "nothing")])


def test_grid_cli_status_and_bad_study_file(tmp_path, capsys):
  bad = tmp_path / "study.py"
  bad.write_text("x = 1\n")
  assert cli.main(["grid", "status", str(bad)]) == 2
  assert "must define get_study" in capsys.readouterr().err
  study = ROOT / "experiments" / "studies" / "gcsam_busi.py"
  assert cli.main(["grid", "status", str(study), "--workdir", str(tmp_path / "r")]) == 0
  assert "0 done, 0 changed, 0 running, 0 started, 0 failed, 15 pending of 15 runs" in capsys.readouterr().out


def test_a_study_file_imports_its_package_siblings_from_any_directory(tmp_path, monkeypatch):
  """The console script does not put the working directory on sys.path; the loader puts
  the package's root there, as `python -m` from that root would."""
  package = tmp_path / "proj" / "exp" / "studies"
  package.mkdir(parents=True)
  for d in (package.parent, package):
    (d / "__init__.py").write_text("")
  (package / "shared.py").write_text("RUNS = []\n")
  (package / "s.py").write_text(
      "from exp.studies import shared\nfrom sam_jax import studies\n"
      "def get_study(preset):\n  return studies.Study(name='s', runs=shared.RUNS)\n")
  monkeypatch.chdir(tmp_path)
  assert studies.load_study(package / "s.py", "cpu").name == "s"
  assert str(tmp_path / "proj") not in sys.path


@pytest.mark.parametrize("name, preset, runs", [
    ("sharpness_medical.py", "cpu", 320), ("sharpness_medical.py", "paper", 600),
    ("gcsam_busi.py", "cpu", 15), ("gcsam_busi.py", "paper", 15),
    ("medmnist3d.py", "cpu", 50), ("cheap_sam.py", "cpu", 70)])
def test_the_committed_studies_expand(name, preset, runs):
  study = studies.load_study(ROOT / "experiments" / "studies" / name, preset)
  assert len(study.runs) == runs
  for run in study.runs:
    config_lib.from_dict(run.config.to_dict())  # every config is a valid record
  assert len({r.directory(pathlib.Path("x")) for r in study.runs}) == runs


def test_commit_of_a_run_survives_a_busy_git(tmp_path, monkeypatch):
  """--commit: a held index lock is retried, then reported; it never stops the grid."""
  import subprocess

  repo = tmp_path / "repo"
  run = repo / "runs" / "seed0"
  run.mkdir(parents=True)
  for args in (["init", "-q"], ["config", "user.email", "t@t"], ["config", "user.name", "t"]):
    subprocess.run(["git", *args], cwd=repo, check=True)
  (run / "results.json").write_text("{}")
  (run / "checkpoints").mkdir()
  (run / "checkpoints" / "big").write_text("x")
  monkeypatch.chdir(repo)
  (repo / ".git" / "index.lock").write_text("")
  problem = cli._commit_run(pathlib.Path("runs/seed0"), "busy", attempts=1)
  assert problem and "index.lock" in problem
  (repo / ".git" / "index.lock").unlink()
  assert cli._commit_run(pathlib.Path("runs/seed0"), "a run") is None
  tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True).stdout
  assert tracked.split() == ["runs/seed0/results.json"]
