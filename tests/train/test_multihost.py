"""Multi-host data parallelism, simulated: 2 processes x 2 CPU devices over loopback."""

import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.simulated_devices import ROOT, subprocess_env


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def two_processes(*args, workdirs=(), timeout=600) -> list[tuple[int, str, str]]:
  """``sam-jax *args`` on 2 processes x 2 CPU devices over loopback: (returncode, out, err).

  ``workdirs``: each process's ``--workdir``, as if they did not share a disk.
  """
  from tests.train.test_loop import sam_jax_cmd

  port = free_port()
  own = [["--workdir", str(w)] for w in workdirs] or [[], []]
  workers = [subprocess.Popen(
      sam_jax_cmd("--coordinator-address", f"localhost:{port}", "--num-processes", "2",
                  "--process-id", str(i), *args, *own[i]),
      cwd=ROOT, env=subprocess_env(devices=2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outputs = [w.communicate(timeout=timeout) for w in workers]
  return [(w.returncode, out, err) for w, (out, err) in zip(workers, outputs)]


@pytest.mark.slow
def test_a_busy_work_directory_stops_every_process(tmp_path):
  """Process 0 finds the lock held: every process stops at once with its one line (the
  others do not wait at a collective for JAX's coordination timeout)."""
  from sam_jax.train.workdir_lock import WorkdirLock
  from tests.data.synthetic import write_medmnist_npz
  from tests.train.test_loop import TINY

  npz = write_medmnist_npz(tmp_path / "tiny.npz", counts=(96, 32, 32), seed=3)
  with WorkdirLock(tmp_path / "run"):
    runs = two_processes("train", "--dataset", str(npz), *TINY, "--epochs", "1",
                         "--workdir", str(tmp_path / "run"), timeout=120)
  for returncode, _, err in runs:
    assert returncode == 2 and "is in use by" in err and "Traceback" not in err, err


@pytest.mark.slow
def test_two_processes_of_two_devices_equal_one_process_of_four(tmp_path):
  module = [sys.executable, "-m", "tests.train.multihost_check"]
  port = free_port()
  workers = [subprocess.Popen(module + ["worker", str(i), str(port), str(tmp_path / "multi.npz")],
                              cwd=ROOT, env=subprocess_env(devices=2), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
  outputs = [w.communicate(timeout=600) for w in workers]
  for worker, (out, err) in zip(workers, outputs):
    assert worker.returncode == 0, out[-2000:] + err[-4000:]
  single = subprocess.run(module + ["single", str(tmp_path / "single.npz")], cwd=ROOT,
                          env=subprocess_env(devices=4), capture_output=True, text=True,
                          timeout=600)
  assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-4000:]
  multi, one = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
  assert sorted(multi.files) == sorted(one.files) and len(one.files) > 4
  for key in one.files:
    np.testing.assert_allclose(multi[key], one[key], rtol=1e-5, atol=1e-6, err_msg=key)
  # The two perturbations are different computations (m-sharpness with m = 4 per device
  # against the global batch's): the comparison above is not between two no-ops.
  per_device = [k for k in one.files if k.startswith("per_device")]
  assert any(not np.allclose(one[k], one[k.replace("per_device", "synchronized", 1)], atol=1e-6)
             for k in per_device)


def _flat(record, prefix=""):
  out = {}
  for key, value in record.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}/"))
    else:
      out[prefix + key] = value
  return out


def _tree_files(root):
  return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                if p.is_file() and not p.name.endswith(".lock"))


@pytest.mark.slow
def test_the_train_command_over_two_processes_equals_one_process_of_four(tmp_path):
  """`sam-jax --coordinator-address ... train` on 2 processes x 2 CPU devices: the same
  records as one process of 4 devices, files written once, and a resume across both."""
  import json

  from tests.data.synthetic import write_medmnist_npz
  from tests.train.test_loop import TINY, comparable, sam_jax_cmd

  npz = write_medmnist_npz(tmp_path / "tiny.npz", counts=(96, 32, 32), seed=3)
  common = ["train", "--dataset", str(npz), *TINY, "--optimizer", "sam", "--rho", "0.1",
            "--schedule", "constant", "--learning-rate", "0.005"]
  multi, single = tmp_path / "multi", tmp_path / "single"

  # Process 1 is given a directory it has never seen: it must need nothing from
  # process 0's disk, not even the saved config of the resume, which names none
  # of the run's options.
  elsewhere = tmp_path / "process_1_sees_nothing"

  def on_two_processes(*args):
    runs = two_processes(*args, workdirs=(multi, elsewhere))
    for returncode, out, err in runs:
      assert returncode == 0, out[-2000:] + err[-4000:]
    return [out for _, out, _ in runs]

  on_two_processes(*common, "--epochs", "1")
  first, second = on_two_processes("train", "--resume", "--epochs", "2")
  assert "resumed from step 3" in first and "epoch 2/2" in first
  assert "epoch 2/2" not in second and "resumed" not in second  # process 1 prints no log
  assert not [p for p in elsewhere.rglob("*") if p.is_file()]
  # A resume that changes the run is refused on every process, by process 0's check.
  for returncode, _, err in two_processes("train", "--resume", "--epochs", "3", "--rho", "0.2",
                                          workdirs=(multi, elsewhere)):
    assert returncode == 2 and "these options differ" in err and "Traceback" not in err, err
  one = subprocess.run(sam_jax_cmd(*common, "--epochs", "2", "--workdir", str(single)), cwd=ROOT,
                       env=subprocess_env(devices=4), capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-4000:]

  read = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
  got, want = comparable(read(multi)), comparable(read(single))
  assert len(got) == len(want) == 2
  for g, w in zip(got, want):
    flat_g, flat_w = _flat(g), _flat(w)
    assert flat_g.keys() == flat_w.keys()
    for key, value in flat_w.items():
      if isinstance(value, float):
        # Gloo's sums across processes add in another order than one process's:
        # float32 rounding. (At a learning rate of 0.05 this tiny BatchNorm net is
        # chaotic enough to grow 1e-7 into 1e-3 within 3 steps; at 0.005 it stays 1e-7.)
        assert flat_g[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
      else:
        assert flat_g[key] == value, key
  for name in ("multi", "single"):
    config = json.loads((tmp_path / name / "config.json").read_text())
    assert config["parallel"] == "sharded"
  # Written once, by process 0: the same records as the one-process run, the same
  # checkpoints (orbax lays out NumPy and device arrays differently inside them), and
  # nothing of process 1's.
  records = lambda d: [f for f in _tree_files(d) if not f.startswith("checkpoints/")]
  saved = lambda d: sorted({"/".join(f.split("/")[:3]) for f in _tree_files(d)
                            if f.startswith("checkpoints/")})
  assert records(multi) == records(single)
  assert saved(multi) == saved(single)
  assert {"checkpoints/last/3", "checkpoints/last/6"} <= set(saved(multi))
  assert not [f for f in _tree_files(multi) if "process_1" in f]


@pytest.mark.slow
@pytest.mark.parametrize("perturbation", ["per_device", "synchronized"])
def test_shard_map_runs_over_two_processes_equal_one_process_of_four(tmp_path, perturbation):
  """Per-device (m-sharpness across hosts) and synchronized perturbations from the CLI."""
  import json

  from tests.data.synthetic import write_medmnist_npz
  from tests.train.test_loop import TINY, comparable, sam_jax_cmd

  npz = write_medmnist_npz(tmp_path / "tiny.npz", counts=(96, 32, 32), seed=3)
  common = ["train", "--dataset", str(npz), *TINY, "--optimizer", "sam", "--rho", "0.1",
            "--schedule", "constant", "--learning-rate", "0.005", "--epochs", "1",
            "--parallel", "shard_map", "--perturbation", perturbation]
  port = free_port()
  workers = [subprocess.Popen(
      sam_jax_cmd("--coordinator-address", f"localhost:{port}", "--num-processes", "2",
                  "--process-id", str(i), *common, "--workdir", str(tmp_path / "multi")),
      cwd=ROOT, env=subprocess_env(devices=2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  for worker in workers:
    out, err = worker.communicate(timeout=600)
    assert worker.returncode == 0, out[-2000:] + err[-4000:]
  one = subprocess.run(sam_jax_cmd(*common, "--workdir", str(tmp_path / "single")), cwd=ROOT,
                       env=subprocess_env(devices=4), capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-4000:]
  read = lambda d: comparable([json.loads(line) for line in
                               (tmp_path / d / "metrics.jsonl").read_text().splitlines()])
  got, want = _flat(read("multi")[0]), _flat(read("single")[0])
  assert got.keys() == want.keys()
  for key, value in want.items():
    if isinstance(value, float):
      assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
