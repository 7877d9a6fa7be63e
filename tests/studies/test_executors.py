"""Grid executors: SLURM through submitit (its local cluster here) and Ray, against local runs.

Each runs the same 4-run grid of tiny models; the tables must equal those of
the local executor, a second submission must run nothing, and a job killed
mid-run must resume to the same final parameters.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import signal
import stat
import sys
import time

import jax
import numpy as np
import pytest

from benchmarks.grid_executors import tiny_study
from sam_jax import cli, studies
from sam_jax.studies import executors
from sam_jax.train import setup
from sam_jax.train.workdir_lock import WorkdirLock, held_by
from tests.data.synthetic import write_medmnist_npz


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
  return str(write_medmnist_npz(tmp_path_factory.mktemp("data") / "tiny.npz",
                                counts=(64, 32, 32), seed=4))


def table(study: studies.Study, root: pathlib.Path, out: pathlib.Path) -> str:
  """The report without what legitimately differs between executors: timings and paths."""
  text = studies.write_study_report(study, root, out / "report.md", "cpu").read_text()
  rows = [line.rsplit("|", 2)[0] if line.startswith("|") else line for line in text.splitlines()]
  text = "\n".join(rows).replace(str(root), "ROOT")
  return re.sub(r"in [0-9.]+ hours of run time", "in H hours of run time", text)


def quiet(message):
  del message


@pytest.fixture(scope="module")
def local_grid(tiny_npz, tmp_path_factory):
  root = tmp_path_factory.mktemp("local")
  study = tiny_study(tiny_npz)
  start = time.perf_counter()
  counts = studies.run_grid(study, root, log=quiet)
  print(f"local executor: 4-run grid in {time.perf_counter() - start:.1f} s")
  assert counts["done"] == 4
  return study, root


def final_params(run: studies.Run, root: pathlib.Path):
  dataset = setup.load_data(run.config)
  restored = setup.restore_run(run.directory(root), dataset, which="last")
  return jax.tree.leaves(restored.state.params), restored.step


@pytest.mark.slow  # four job processes that each start JAX and compile: ~2.5 minutes in CI
def test_submitit_local_cluster_runs_the_grid_like_the_local_executor(local_grid, tmp_path):
  study, local_root = local_grid
  root = tmp_path / "slurm"
  resources = executors.Resources(cpus=1, submitit_cluster="local")
  start = time.perf_counter()
  counts = studies.run_grid(study, root, executor="slurm", resources=resources, log=quiet)
  print(f"submitit local cluster: 4-run grid in {time.perf_counter() - start:.1f} s")
  assert counts["done"] == 4, counts
  job_folders = lambda: [p for p in (root / "jobs").iterdir() if p.name.isdigit()]
  assert len(job_folders()) == 4  # one job per run
  assert table(study, root, tmp_path) == table(study, local_root, tmp_path)
  # A second submission finds every run done: it submits nothing and rewrites nothing.
  before = {p: p.stat().st_mtime_ns for p in root.rglob("results.json")}
  log = []
  counts = studies.run_grid(study, root, executor="slurm", resources=resources, log=log.append)
  assert counts["done"] == 4 and len(job_folders()) == 4
  assert not any("submitted" in line for line in log)
  assert before == {p: p.stat().st_mtime_ns for p in root.rglob("results.json")}


@pytest.mark.slow  # three runs, two of them job processes that start JAX: ~2 minutes here
def test_a_killed_job_resumes_to_the_same_final_parameters(tiny_npz, tmp_path):
  """The job's training process is killed (SIGKILL: a lost node, or scancel after its
  grace time) after its first checkpoints; the next submission resumes the run from
  them to the parameters of an uninterrupted run. (submitit's local ``cancel()`` sends
  SIGINT to its controller, which does not reliably stop the child: the kill goes to
  the process that holds the run's lock.)"""
  # 60 steps, a resume point every 5, so that the cancel lands long before the end.
  study = tiny_study(tiny_npz, epochs=30, checkpoint_every_steps=5)
  run = study.runs[2]  # sam, seed 0: the two-pass step
  one = studies.Study("one", [run])
  # The uninterrupted run saves only at its end (saving does not change what is computed).
  whole = dataclasses.replace(run, config=run.config.replace(checkpoint_every_steps=None,
                                                             checkpoint_every=100))
  whole_root = tmp_path / "whole"
  studies.run_grid(studies.Study("whole", [whole]), whole_root, log=quiet)
  root = tmp_path / "cancelled"
  resources = executors.Resources(cpus=1, submitit_cluster="local")
  jobs = executors.submit_slurm([[run]], root.resolve(), resources, name="one",
                                vmap_seeds=False, retry_failed=False)
  last = run.directory(root) / "checkpoints" / "last"
  deadline = time.time() + 240
  while not (last.is_dir() and len([p for p in last.iterdir() if p.name.isdigit()]) >= 1):
    assert time.time() < deadline and not jobs[0].done(), "the job never checkpointed"
    time.sleep(0.1)
  holder = held_by(run.directory(root))
  assert holder is not None, "the run ended before it could be killed"
  os.kill(int(holder["pid"]), signal.SIGKILL)
  while not jobs[0].done():
    time.sleep(0.2)
  assert studies.run_state(run.directory(root), run.config) == "started"  # cut mid-run
  counts = studies.run_grid(one, root, executor="slurm", resources=resources, log=quiet)
  assert counts["done"] == 1
  (resumed, resumed_step), (whole, whole_step) = (final_params(run, root),
                                                  final_params(run, whole_root))
  assert resumed_step == whole_step == 60
  for a, b in zip(resumed, whole):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


@pytest.mark.slow  # Ray's workers start a Python with JAX each: minutes on two cores
def test_ray_runs_the_grid_like_the_local_executor(local_grid, tmp_path):
  ray = pytest.importorskip("ray", reason="the ray extra is not installed")
  study, local_root = local_grid
  root = tmp_path / "ray"
  start = time.perf_counter()
  try:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    counts = studies.run_grid(study, root, executor="ray",
                              resources=executors.Resources(cpus=1), log=quiet)
  finally:
    ray.shutdown()
  print(f"ray (local): 4-run grid in {time.perf_counter() - start:.1f} s")
  assert counts["done"] == 4, counts
  assert table(study, root, tmp_path) == table(study, local_root, tmp_path)


def test_slurm_job_array_parameters_without_a_cluster(tiny_npz, tmp_path, monkeypatch):
  """The sbatch file submitit writes for a grid: resources, array size and throttle,
  pre-emption/time-out signal (requeue), log paths. ``sbatch`` is a stand-in script."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  sbatch = bin_dir / "sbatch"
  sbatch.write_text(f"#!/bin/sh\ncp \"$1\" {tmp_path}/submitted.sh\necho 'Submitted batch job 4242'\n")
  sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
  srun = bin_dir / "srun"  # submitit looks for it to know it is on a SLURM cluster
  srun.write_text("#!/bin/sh\nexit 0\n")
  srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  study = tiny_study(tiny_npz)
  root = tmp_path / "grid"
  # The study's resources, with the command line's on top.
  assert cli.main(["grid", "run", str(write_study(tmp_path, tiny_npz)), "--workdir", str(root),
                   "--executor", "slurm", "--account", "lab", "--array-parallelism", "2",
                   "--time-min", "45"]) == 0
  script = (tmp_path / "submitted.sh").read_text()
  jobs = root.resolve() / "jobs"
  for option in ("--array=0-3%2", "--cpus-per-task=4", "--gpus-per-node=1", "--mem=16GB",
                 "--time=45", "--partition=gpu", "--account=lab", "--job-name=tiny",
                 "--signal=USR2@", f"--output={jobs}/%A_%a/%A_%a_0_log.out",
                 f"--error={jobs}/%A_%a/%A_%a_0_log.err"):
    assert f"#SBATCH {option}" in script, option
  assert re.search(r"-m submitit.core._submit", script)
  # Nothing ran here; the runs wait for their jobs.
  assert studies.status(study, root)[("tiny", "resnet18", "adam")]["pending"] == [0, 1]
  # The task requeues itself: on a time-out or pre-emption signal submitit calls
  # checkpoint() and resubmits what it returns (the same runs, which resume).
  task = executors.Task(study.runs[:1], str(root))
  again = task.checkpoint()
  assert again.function is task and again.args == ()


def write_study(tmp_path: pathlib.Path, npz: str) -> pathlib.Path:
  path = tmp_path / "study.py"
  path.write_text(f'''
from benchmarks.grid_executors import tiny_study
def get_study(preset):
  study = tiny_study({npz!r})
  study.resources.update(cpus=4, gpus=1, mem_gb=16, time_min=90, partition="gpu")
  return study
''')
  return path


def test_a_missing_extra_is_one_line(tiny_npz, tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
  assert cli.main(["grid", "run", str(write_study(tmp_path, tiny_npz)), "--workdir",
                   str(tmp_path / "r"), "--executor", "ray"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["sam-jax: error: --executor ray needs ray: pip install 'sam_jax[ray]' "
                 "(or pip install ray)."]
  assert not (tmp_path / "r").exists()


def test_bad_resources_are_named():
  with pytest.raises(ValueError, match="cpus must be at least 1"):
    executors.Resources(cpus=0)
  with pytest.raises(ValueError, match=r"unknown resource fields \['gpu'\]"):
    executors.read_resources({"gpu": 1})


def test_a_run_held_by_a_live_process_is_running(tmp_path):
  directory = tmp_path / "run"
  with WorkdirLock(directory, log=quiet):
    assert studies.run_state(directory) == "running"
  assert studies.run_state(directory) == "pending"
