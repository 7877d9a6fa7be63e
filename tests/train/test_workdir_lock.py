"""One run per work directory: the lock, its error, a dead holder, and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from sam_jax import cli
from sam_jax.train.workdir_lock import LOCK_NAME, WorkdirBusyError, WorkdirLock


def test_a_held_directory_refuses_a_second_holder(tmp_path):
  with WorkdirLock(tmp_path / "run", log=lambda m: None):
    with pytest.raises(WorkdirBusyError, match=f"in use by pid {os.getpid()}"):
      WorkdirLock(tmp_path / "run").acquire()
  # Released: it can be taken again, and says nothing about a previous holder.
  notes = []
  with WorkdirLock(tmp_path / "run", log=notes.append):
    pass
  assert notes == []


def test_a_holder_that_died_is_reported_and_replaced(tmp_path):
  workdir = tmp_path / "run"
  holder = subprocess.Popen(
      [sys.executable, "-c",
       "import sys, time; from sam_jax.train.workdir_lock import WorkdirLock; "
       f"lock = WorkdirLock({str(workdir)!r}, log=print).acquire(); print('held', flush=True); "
       "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(WorkdirBusyError, match=f"pid {holder.pid}"):
      WorkdirLock(workdir).acquire()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  notes = []
  with WorkdirLock(workdir, log=notes.append):
    assert json.loads((workdir / LOCK_NAME).read_text())["pid"] == os.getpid()
  assert len(notes) == 1 and f"pid {holder.pid}" in notes[0] and "did not end cleanly" in notes[0]


def test_cli_refuses_a_busy_workdir_before_writing(tmp_path, capsys):
  workdir = tmp_path / "run"
  with WorkdirLock(workdir, log=lambda m: None):
    code = cli.main(["train", "--workdir", str(workdir), "--dataset", "breastmnist",
                     "--data-dir", str(tmp_path / "nowhere"), "--no-progress"])
    assert sorted(p.name for p in workdir.iterdir()) == [LOCK_NAME]
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "is in use by pid" in err[0]


def test_a_file_as_workdir_is_one_clear_error(tmp_path, capsys):
  afile = tmp_path / "afile"
  afile.write_text("x")
  assert cli.main(["train", "--workdir", str(afile), "--no-progress"]) == 2
  assert "is a file; choose a directory" in capsys.readouterr().err


def test_a_run_that_fails_before_writing_leaves_no_directory(tmp_path, capsys):
  workdir = tmp_path / "never"
  code = cli.main(["train", "--workdir", str(workdir), "--dataset", "breastmnist",
                   "--data-dir", str(tmp_path / "nowhere"), "--no-progress"])
  assert code == 2 and not workdir.exists()
  capsys.readouterr()


def test_two_cli_runs_on_one_workdir_one_is_refused(tmp_path):
  from tests.data.synthetic import write_medmnist_npz

  npz = write_medmnist_npz(tmp_path / "tiny.npz", counts=(64, 16, 16))
  common = [sys.executable, "-m", "sam_jax.cli", "train", "--dataset", str(npz), "--model",
            "resnet10", "--width", "0.0625", "--batch-size", "32", "--epochs", "2",
            "--no-progress", "--workdir", str(tmp_path / "run")]
  first = subprocess.Popen(common, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 120
  while not (tmp_path / "run" / LOCK_NAME).exists() and time.time() < deadline:
    time.sleep(0.1)
  second = subprocess.run(common, capture_output=True, text=True, timeout=300)
  first.communicate(timeout=600)
  assert first.returncode == 0
  assert second.returncode == 2 and "is in use by pid" in second.stderr
  assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
