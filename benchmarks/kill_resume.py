"""Kill -9 at random moments of a run, resume, and compare with the uninterrupted run.

    python -m benchmarks.kill_resume [--trials 20] [--seed 0] [--out benchmarks/results/kill_resume]

A tiny SAM run (ResNet-18 at width 1/16 on a generated 28 px binary set, 4
steps per epoch, 3 epochs, a checkpoint every 2 steps and at every epoch
end) is first run whole, in a child process that records what it is doing
(steps, evaluations, checkpoint writes: begin and end) into an event file.
Each trial then starts the same run and sends SIGKILL inside one kind of
activity of the reference timeline (cycling steps, evaluations,
checkpoint writes: the k-th occurrence, plus a delay drawn within its
reference duration, timed by the trial's own events), runs ``sam-jax train
--resume`` to the end, and checks:

* ``results.json`` (timings aside) and every epoch record equal the
  uninterrupted run's;
* the work lost, steps dispatched before the kill minus the step resumed
  from, is at most one checkpoint interval.

The report (JSON and markdown) gives each trial's moment, the activity it
landed in, the steps lost, and the verdict. Exit status 1 if a trial failed.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHECKPOINT_EVERY_STEPS = 2
ACTIVITIES = ("step", "eval", "save")
TIMING_FIELDS = ("time_per_step_s", "first_step_s", "wall_seconds", "train_seconds")


def run_args(npz: pathlib.Path, workdir: pathlib.Path) -> list[str]:
  return ["train", "--dataset", str(npz), "--model", "resnet18", "--width", "0.0625",
          "--batch-size", "32", "--eval-batch-size", "64", "--optimizer", "sam", "--rho", "0.05",
          "--base-optimizer", "sgd", "--learning-rate", "0.05", "--epochs", "3", "--seed", "7",
          "--checkpoint-every-steps", str(CHECKPOINT_EVERY_STEPS), "--no-progress",
          "--workdir", str(workdir)]


# ---------------------------------------------------------------------------
# The child: the sam-jax command, with its activities recorded.


def child(events_path: str, argv: list[str]) -> int:
  """Runs ``sam-jax`` with steps, evaluations and saves written to ``events_path`` as
  ``<seconds since start> <begin|end|tick> <activity>`` lines (O_APPEND writes survive a
  SIGKILL: they are in the kernel once written)."""
  start = time.perf_counter()
  fd = os.open(events_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

  def event(kind: str, what: str) -> None:
    os.write(fd, f"{time.perf_counter() - start:.4f} {kind} {what}\n".encode())

  from sam_jax import cli
  from sam_jax.train import checkpoint, loop, records

  def traced(fn, what):
    def wrapper(*args, **kwargs):
      event("begin", what)
      try:
        return fn(*args, **kwargs)
      finally:
        event("end", what)
    return wrapper

  loop.evaluate_split = traced(loop.evaluate_split, "eval")
  checkpoint.Checkpointer.save = traced(checkpoint.Checkpointer.save, "save")
  progress_bars = records.progress_bars

  def counting_bars(enabled):
    make = progress_bars(enabled)

    def make_counting(**kwargs):
      bar = make(**kwargs)
      update = bar.update

      def counted(n=1):
        event("tick", "step")  # one step dispatched
        return update(n)
      bar.update = counted
      return bar
    return make_counting

  records.progress_bars = counting_bars
  return cli.main(argv)


# ---------------------------------------------------------------------------
# The parent: reference, trials, report.


def read_events(path: pathlib.Path) -> list[tuple[float, str, str]]:
  if not path.exists():
    return []
  out = []
  for line in path.read_text().splitlines():
    t, kind, what = line.split()
    out.append((float(t), kind, what))
  return out


def intervals(events, activity: str) -> list[tuple[float, float]]:
  """(start, end) of each occurrence of ``activity`` (a step: from one tick to the next)."""
  if activity == "step":
    ticks = [t for t, kind, _ in events if kind == "tick"]
    return list(zip(ticks[:-1], ticks[1:]))
  spans, opened = [], None
  for t, kind, what in events:
    if what == activity and kind == "begin":
      opened = t
    elif what == activity and kind == "end" and opened is not None:
      spans.append((opened, t))
      opened = None
  return spans


def landed_in(events) -> str:
  """What the killed process was doing: an unfinished eval or save, else a step."""
  open_ = {}
  for _, kind, what in events:
    if kind == "begin":
      open_[what] = open_.get(what, 0) + 1
    elif kind == "end":
      open_[what] -= 1
  for what in ("save", "eval"):
    if open_.get(what):
      return what
  if not any(kind == "tick" for _, kind, _ in events):
    return "start-up"
  return "step"


def comparable_results(workdir: pathlib.Path) -> dict:
  results = json.loads((workdir / "results.json").read_text())
  return {k: v for k, v in results.items() if k not in TIMING_FIELDS + ("device", "versions")}


def comparable_records(workdir: pathlib.Path) -> list[dict]:
  return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS}
          for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def command(events: pathlib.Path, argv: list[str]) -> list[str]:
  return [sys.executable, "-m", "benchmarks.kill_resume", "--child", str(events), "--", *argv]


def environment() -> dict:
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  return env


def starts(events, activity: str) -> int:
  """How many occurrences of ``activity`` have begun (a step begins at its tick)."""
  if activity == "step":
    return sum(kind == "tick" for _, kind, _ in events)
  return sum(kind == "begin" and what == activity for _, kind, what in events)


def trial(index: int, activity: str, occurrence: int, delay: float, npz, root,
          reference) -> dict:
  """Kills the run ``delay`` seconds after the ``occurrence``-th (1-based) ``activity``
  began, by the run's own event file (so compile-cache warmth does not shift the aim)."""
  workdir, events = root / f"trial{index}", root / f"trial{index}.events"
  env = environment()
  process = subprocess.Popen(command(events, run_args(npz, workdir)), cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  while process.poll() is None and starts(read_events(events), activity) < occurrence:
    time.sleep(0.002)
  time.sleep(delay)
  finished_first = process.poll() is not None
  process.send_signal(signal.SIGKILL)
  process.wait()
  killed_events = read_events(events)
  dispatched = sum(kind == "tick" for _, kind, _ in killed_events)
  where = "finished before the kill" if finished_first else landed_in(killed_events)
  resume = subprocess.run(command(root / f"trial{index}.resume.events",
                                  [*run_args(npz, workdir), "--resume"]),
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  resumed = re.search(r"resumed from step (\d+)", resume.stdout + resume.stderr)
  resumed_step = int(resumed.group(1)) if resumed else 0
  lost = max(dispatched - resumed_step, 0)
  same_results = resume.returncode == 0 and comparable_results(workdir) == reference["results"]
  same_records = resume.returncode == 0 and comparable_records(workdir) == reference["records"]
  ok = same_results and same_records and lost <= CHECKPOINT_EVERY_STEPS
  return {"trial": index, "aimed_at": f"{activity} {occurrence} + {delay * 1e3:.0f} ms",
          "landed_in": where, "steps_dispatched": dispatched, "resumed_from_step": resumed_step,
          "steps_lost": lost, "resume_exit": resume.returncode, "same_results": same_results,
          "same_epoch_records": same_records, "ok": ok,
          **({"resume_error": (resume.stderr.strip().splitlines() or [""])[-1][:300]}
             if resume.returncode else {})}


def write_report(report: dict, out: pathlib.Path) -> None:
  out.parent.mkdir(parents=True, exist_ok=True)
  out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
  lines = [
      "# Kill -9 and resume", "",
      f"`python -m benchmarks.kill_resume --trials {report['trials']} --seed {report['seed']}`"
      f" ({report['date']}, {report['machine']}).", "",
      f"Reference run: {report['reference_seconds']:.1f} s, {report['reference_steps']} steps, "
      f"checkpoint every {CHECKPOINT_EVERY_STEPS} steps and at epoch ends.", "",
      f"**{report['passed']} of {report['trials']} trials** resumed to the uninterrupted run's "
      f"results.json and epoch records with at most {CHECKPOINT_EVERY_STEPS} steps lost; "
      f"kills landed in: {report['landed']}.", "",
      "| trial | aimed at | landed in | steps dispatched | resumed from | lost | "
      "same results | same records |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for t in report["results"]:
    lines.append(f"| {t['trial']} | {t['aimed_at']} | {t['landed_in']} | "
                 f"{t['steps_dispatched']} | {t['resumed_from_step']} | {t['steps_lost']} | "
                 f"{t['same_results']} | {t['same_epoch_records']} |")
  out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ["--child"]:
    return child(argv[1], argv[3:])
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trials", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", help="report path without suffix (.json and .md are written)")
  args = parser.parse_args(argv)
  from tests.data.synthetic import write_medmnist_npz

  rng = np.random.default_rng(args.seed)
  with tempfile.TemporaryDirectory() as tmp:
    root = pathlib.Path(tmp)
    npz = write_medmnist_npz(root / "tiny.npz", counts=(128, 32, 32), seed=2)
    events = root / "reference.events"
    start = time.perf_counter()
    done = subprocess.run(command(events, run_args(npz, root / "reference")), cwd=ROOT,
                          env=environment(), capture_output=True, text=True, timeout=900)
    if done.returncode:
      raise SystemExit(f"the reference run failed: {done.stderr[-2000:]}")
    reference_seconds = time.perf_counter() - start
    timeline = read_events(events)
    reference = {"results": comparable_results(root / "reference"),
                 "records": comparable_records(root / "reference")}
    results = []
    for index in range(args.trials):
      activity = ACTIVITIES[index % len(ACTIVITIES)]
      spans = intervals(timeline, activity)
      occurrence = int(rng.integers(0, len(spans)))
      begin, end = spans[occurrence]
      delay = float(rng.uniform(0, end - begin))
      outcome = trial(index, activity, occurrence + 1, delay, npz, root, reference)
      print(json.dumps(outcome), flush=True)
      results.append(outcome)
  landed = {}
  for t in results:
    landed[t["landed_in"]] = landed.get(t["landed_in"], 0) + 1
  import datetime
  import platform

  report = {"trials": args.trials, "seed": args.seed, "passed": sum(t["ok"] for t in results),
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "reference_seconds": reference_seconds,
            "reference_steps": sum(kind == "tick" for _, kind, _ in timeline),
            "landed": ", ".join(f"{k} {v}" for k, v in sorted(landed.items())),
            "results": results}
  if args.out:
    write_report(report, pathlib.Path(args.out))
  print(json.dumps({k: v for k, v in report.items() if k != "results"}))
  return 0 if report["passed"] == args.trials else 1


if __name__ == "__main__":
  sys.exit(main())
