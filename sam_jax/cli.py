"""The ``sam-jax`` command.

    sam-jax train --dataset breastmnist --model resnet18 --optimizer sam --rho 0.05 \\
                  --preset cpu --data-dir ../shared/data --workdir runs/breast-sam
    sam-jax train --config my_config.py --epochs 5          # file, then overrides
    sam-jax train --workdir runs/breast-sam --resume          # continue a run
    sam-jax eval runs/breast-sam --dataset breastmnist --split test
    sam-jax grid run experiments/studies/sharpness_medical.py --preset cpu   # a study
    sam-jax grid status|report experiments/studies/sharpness_medical.py --preset cpu
    sam-jax compare runs/breast-*                              # any runs, with statistics
    sam-jax sharpness runs/breast-sam            # Hessian λ_max and ρ-sharpness -> sharpness.json
    sam-jax landscape runs/breast-sgd runs/breast-sam --out landscape.png
    sam-jax list optimizers                     # also: models, datasets, losses
    sam-jax predict runs/breast-sam scan1.png scan2.png --out predictions.csv

Options are applied in order: the preset (``--preset medmnist`` or ``cpu``),
then the config file (``--config``, ``.py`` with ``get_config()`` or
``.json``), then every option given on the command line. With ``--resume``
the run's own ``config.json`` is the starting point.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
from typing import Optional, Sequence

import numpy as np

from sam_jax.train import config as config_lib


class _Parser(argparse.ArgumentParser):
  """argparse, with a usage error on one line (the usage itself is in --help)."""

  def error(self, message: str):
    self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_train_options(parser: argparse.ArgumentParser) -> None:
  from sam_jax import catalog

  parser.add_argument("--workdir", required=True, help="where records and checkpoints go")
  parser.add_argument("--preset", choices=config_lib.PRESETS,
                      help="start from a preset: medmnist (the MedMNIST v2 protocol) or cpu "
                           "(the same at width 1/4, 20 epochs)")
  parser.add_argument("--config", help="a .py (get_config(); executed code) or .json config file")
  parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
  described, allowed = config_lib.field_help(), catalog.choices()
  defaults = config_lib.TrainConfig()
  # Choices are shown, not enforced by argparse: the config checks name the
  # field and list the known values in the same words for files and flags.
  for field in dataclasses.fields(config_lib.TrainConfig):
    flag = "--" + field.name.replace("_", "-")
    kind = config_lib.field_kind(field)
    text = described.get(field.name, "")
    if field.name in allowed:
      text += f" {{{', '.join(allowed[field.name])}}}"
    default = getattr(defaults, field.name)
    text = f"{text} (default: {default})".strip().replace("%", "%%")
    if kind is bool:
      parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                          default=None, help=text)
    elif field.name in config_lib.TUPLE_FIELDS:
      parser.add_argument(flag, dest=field.name, type=float, nargs="+", default=None,
                          metavar="X", help=text)
    else:
      parser.add_argument(flag, dest=field.name, type=kind, default=None,
                          metavar=kind.__name__.upper(), help=text)


def resolve_config(args: argparse.Namespace) -> config_lib.TrainConfig:
  overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_lib.TrainConfig)
               if getattr(args, f.name) is not None}
  for field in config_lib.TUPLE_FIELDS:
    if field in overrides:
      overrides[field] = tuple(overrides[field])
  saved = _saved_config(pathlib.Path(args.workdir)) if args.resume else None
  if saved is not None:
    base = config_lib.from_dict(saved)
    config_lib.check_resume_changes(base, overrides)
  elif args.config:
    base = config_lib.load_file(args.config)
    if args.preset:
      raise ValueError("give --preset or --config, not both")
  elif args.preset:
    base = config_lib.preset(args.preset, overrides.get("dataset", "breastmnist"))
  else:
    base = config_lib.TrainConfig()
  return base.replace(**overrides)


def _saved_config(workdir: pathlib.Path) -> Optional[dict]:
  """The run's ``config.json``, or None. In a run over several processes, process 0's
  (it writes the records; the others need not see its disk), so that all resume the same
  config."""
  def read():
    path = workdir / "config.json"
    return json.loads(path.read_text()) if path.exists() else None

  from sam_jax.train import checkpoint
  return checkpoint.from_process_0(read)


def train(args: argparse.Namespace) -> int:
  from sam_jax.train import loop

  config = resolve_config(args)
  results = loop.train_and_evaluate(config, args.workdir, resume=args.resume)
  test = results["test"] or {}
  print(json.dumps({
      "selected_epoch": results["selected_epoch"],
      "val_auc": (results["val"] or {}).get("auc"),
      "test_auc": test.get("auc"), "test_acc": test.get("acc"),
      "time_per_step_s": results["time_per_step_s"],
      "workdir": str(args.workdir),
  }))
  return 0


def evaluate(args: argparse.Namespace) -> int:
  from sam_jax.train import evaluate as evaluate_lib

  result = evaluate_lib.evaluate_checkpoint(
      args.checkpoint, dataset=args.dataset, data_dir=args.data_dir, splits=args.split,
      which=args.which)
  print(json.dumps(result, indent=2))
  return 0


def _study_paths(args: argparse.Namespace, study) -> tuple[pathlib.Path, pathlib.Path]:
  """(runs root, report file): ``experiments/results/<study>[_<preset>]`` by default, and
  the report beside it as ``<that>.md``."""
  suffix = "" if args.preset == "cpu" else f"_{args.preset}"
  root = pathlib.Path(args.workdir or pathlib.Path("experiments") / "results" / f"{study.name}{suffix}")
  return root, root.with_name(root.name + ".md")


def _commit_run(directory: pathlib.Path, message: str, attempts: int = 5) -> Optional[str]:
  """Commits a finished run's small records (never its checkpoints); None, or why not.

  Another git command (yours, while the grid runs) holds git's index lock for a
  moment: retried, and a commit that still fails is reported, never fatal to the grid.
  """
  import subprocess
  import time

  names = ("config.json", "metrics.jsonl", "results.json", "curves.png", "error.json")
  paths = [str(directory / n) for n in names if (directory / n).exists()]
  for attempt in range(attempts):
    result = subprocess.run(["git", "add", "--", *paths], capture_output=True, text=True)
    if result.returncode == 0:
      result = subprocess.run(["git", "commit", "-q", "-m", message, "--", *paths],
                              capture_output=True, text=True)
    if result.returncode == 0:
      return None
    if attempt + 1 < attempts:
      time.sleep(2.0 * (attempt + 1))
  text = (result.stderr or result.stdout).strip()
  return text.splitlines()[0] if text else f"git exited {result.returncode}"


def grid_command(args: argparse.Namespace) -> int:
  import fnmatch

  from sam_jax import studies

  study = studies.load_study(args.study, args.preset)
  if args.set:
    study = _override(study, args.set)
  root, report = _study_paths(args, study)
  if args.action == "status":
    print("\n".join(studies.status_lines(study, root)))
    return 0
  if args.action == "run":
    only = (lambda run: fnmatch.fnmatch(str(run.directory(root)), f"*{args.only}*")) \
        if args.only else None

    def on_done(run, directory):
      problem = _commit_run(directory, f"{study.name}: {run}") if args.commit else None
      if problem:
        print(f"{run}: not committed ({problem}); commit {directory} yourself", flush=True)
    quiet = lambda message: None
    wait = args.wait if args.wait is not None else args.executor != "slurm"
    counts = studies.run_grid(study, root, vmap_seeds=args.vmap_seeds,
                              retry_failed=args.retry_failed, only=only, on_done=on_done,
                              log=lambda m: print(m, flush=True),
                              run_log=quiet if args.quiet else lambda m: print(m, flush=True),
                              executor=args.executor, resources=_resources(args, study),
                              wait=wait)
    print(json.dumps(counts))
    if not wait:
      print(f"follow: sam-jax grid status {args.study} --preset {args.preset}; tables when done: "
            f"sam-jax grid report {args.study} --preset {args.preset}")
      return 0
  studies.write_study_report(study, root, report, args.preset)
  print(f"report: {report}")
  return 0


def _resources(args: argparse.Namespace, study):
  """The study's resources with the command line's on top."""
  from sam_jax.studies import executors as studies_executors

  fields = [f.name for f in dataclasses.fields(studies_executors.Resources)]
  given = {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}
  return studies_executors.read_resources({**study.resources, **given})


def _override(study, assignments: Sequence[str]):
  """The study with ``FIELD=VALUE`` applied to every run's config (values parsed as JSON)."""
  import dataclasses as dc

  changes = {}
  for item in assignments:
    field, sep, text = item.partition("=")
    if not sep:
      raise ValueError(f"--set takes FIELD=VALUE, got {item!r}.")
    try:
      changes[field.replace("-", "_")] = json.loads(text)
    except json.JSONDecodeError:
      changes[field.replace("-", "_")] = text
  runs = [dc.replace(run, config=run.config.replace(**changes)) for run in study.runs]
  return dc.replace(study, runs=runs)


def compare_command(args: argparse.Namespace) -> int:
  from sam_jax import studies

  print(studies.compare(args.runs, baseline=args.baseline,
                        out_dir=pathlib.Path(args.out) if args.out else None))
  return 0


def sharpness_command(args: argparse.Namespace) -> int:
  from sam_jax import landscape

  for workdir in args.runs:
    if (pathlib.Path(workdir) / "sharpness.json").exists() and not args.force:
      print(json.dumps({"run": str(workdir), "skipped": "sharpness.json exists (--force)"}))
      continue
    result = landscape.measure_run(workdir, examples=args.examples, rho=args.rho,
                                   ascent_steps=args.ascent_steps,
                                   power_iterations=args.power_iterations,
                                   data_dir=args.data_dir)
    print(json.dumps({"run": str(workdir), **{k: result[k] for k in (
        "hessian_top_eigenvalue", "power_iteration_converged", "rho_sharpness",
        "train_subset_loss")}}), flush=True)
  return 0


def landscape_command(args: argparse.Namespace) -> int:
  from sam_jax import landscape

  result = landscape.plot_lines(args.runs, args.out, labels=args.labels, radius=args.radius,
                                examples=args.examples, data_dir=args.data_dir)
  pathlib.Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=2))
  print(f"wrote {args.out}")
  return 0


def predict_command(args: argparse.Namespace) -> int:
  import csv
  import io

  from sam_jax.data import medmnist
  from sam_jax.train import inference

  run = inference.load_run(args.run, which=args.which)
  if len(args.inputs) == 1 and args.inputs[0].lower().endswith(".npz"):
    split = medmnist.load(args.inputs[0])[args.split]
    images, names = split.images, [f"{args.inputs[0]}:{args.split}:{i}" for i in range(len(split))]
  else:
    images = inference.read_images(args.inputs, run.image_shape, run.config.max_pixels)
    names = list(args.inputs)
  scores = run.predict(images, batch_size=args.batch_size)
  buffer = io.StringIO()
  writer = csv.writer(buffer)
  writer.writerow(["input", "predicted", *(f"p_{c}" for c in run.class_names)])
  for name, row in zip(names, scores):
    if run.task == "multilabel":
      predicted = ";".join(c for c, p in zip(run.class_names, row) if p > 0.5)
    else:
      predicted = run.class_names[int(np.argmax(row))]
    writer.writerow([name, predicted, *(f"{p:.6f}" for p in row)])
  if args.out:
    pathlib.Path(args.out).write_text(buffer.getvalue())
    print(f"wrote {len(names)} predictions to {args.out}", file=sys.stderr)
  else:
    sys.stdout.write(buffer.getvalue())
  return 0


def list_command(args: argparse.Namespace) -> int:
  from sam_jax import catalog

  for kind in [args.kind] if args.kind else catalog.KINDS:
    if not args.kind:
      print(f"{kind}:")
    for line in catalog.describe(kind):
      print(f"  {line}" if not args.kind else line)
  return 0


def _parse_train(argv: Sequence[str]) -> argparse.Namespace:
  """The ``train`` options alone (for tests and scripts)."""
  parser = _Parser(prog="sam-jax train")
  _add_train_options(parser)
  return parser.parse_args(list(argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = _Parser(prog="sam-jax", description=__doc__.splitlines()[0])
  parser.add_argument("--no-compile-cache", dest="compile_cache", action="store_false",
                      help="do not use the persistent compilation cache (default: "
                           "$JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/sam_jax/jax)")
  parser.add_argument("--cpu-devices", dest="cpu_devices", type=int,
                      help="CPU devices JAX makes of this machine's cores; a batch is split "
                           "over them with the math of one device (parallel 'auto'), which "
                           "runs XLA's single-threaded convolutions side by side (default: "
                           "$SAM_JAX_CPU_DEVICES, else one per core, at most 8; 1 turns it "
                           "off; no effect on GPU/TPU)")
  parser.add_argument("--cpu-schedule", dest="cpu_schedule", choices=("speed", "memory"),
                      help="how XLA:CPU orders a step: speed (XLA's default) or memory (its "
                           "concurrency-optimized scheduler off: a ResNet-18 SAM step at "
                           "224 px needs 915 MiB instead of 1122, 5-35%% slower) "
                           "(default: $SAM_JAX_CPU_SCHEDULE, else speed)")
  hosts = parser.add_argument_group(
      "several processes", "train over the devices of several processes (hosts) with JAX's "
      "distributed runtime: start the same command once per process; each feeds its devices' "
      "rows of every batch, and process 0 writes the records and checkpoints")
  hosts.add_argument("--distributed", action="store_true",
                     help="join jax.distributed; with no address, the cluster is detected "
                          "(SLURM, Open MPI, TPU pods, Kubernetes)")
  hosts.add_argument("--coordinator-address", dest="coordinator_address", metavar="HOST:PORT",
                     help="process 0's address (implies --distributed)")
  hosts.add_argument("--num-processes", dest="num_processes", type=int, metavar="N")
  hosts.add_argument("--process-id", dest="process_id", type=int, metavar="I")
  commands = parser.add_subparsers(dest="command", required=True)
  train_parser = commands.add_parser("train", help="train and evaluate one configuration")
  _add_train_options(train_parser)
  eval_parser = commands.add_parser("eval", help="re-evaluate a saved model")
  eval_parser.add_argument("checkpoint", help="a run's work directory")
  eval_parser.add_argument("--dataset", help="dataset (default: the run's)")
  eval_parser.add_argument("--data-dir", dest="data_dir")
  eval_parser.add_argument("--split", nargs="+", default=["val", "test"])
  eval_parser.add_argument("--which", choices=("best", "last"), default="best")
  grid_parser = commands.add_parser(
      "grid", help="run a study (a grid of runs), show its state, or write its report")
  grid_parser.add_argument("action", choices=("run", "status", "report"))
  grid_parser.add_argument("study", help="a study file defining get_study(preset)")
  grid_parser.add_argument("--preset", default="cpu", help="the study's preset (cpu, paper)")
  grid_parser.add_argument("--workdir", help="where the run directories go "
                           "(default experiments/results/<study>[_<preset>])")
  grid_parser.add_argument("--vmap-seeds", action="store_true",
                           help="train each cell's seeds in one vmapped program (GPU/TPU)")
  grid_parser.add_argument("--retry-failed", action="store_true",
                           help="run again the runs that recorded an error")
  grid_parser.add_argument("--only", help="run only the runs whose directory matches "
                           "this glob fragment (e.g. 'breastmnist/resnet18')")
  grid_parser.add_argument("--commit", action="store_true",
                           help="git-commit each finished run's records")
  grid_parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
  cluster = grid_parser.add_argument_group(
      "executors", "where the runs train: here (local), as a SLURM job array (slurm, needs "
      "sam_jax[slurm]) or as Ray tasks (ray, needs sam_jax[ray]); the resources are per run "
      "and override the study's own")
  cluster.add_argument("--executor", default="local", choices=("local", "slurm", "ray"))
  cluster.add_argument("--cpus", type=int, help="CPU cores per run (default 2)")
  cluster.add_argument("--gpus", type=int, help="GPUs per run (default 0)")
  cluster.add_argument("--mem-gb", dest="mem_gb", type=float, help="memory per run in GB")
  cluster.add_argument("--time-min", dest="time_min", type=int,
                       help="SLURM time limit per run in minutes (default 120; a run that "
                       "reaches it is requeued and resumes)")
  cluster.add_argument("--partition", help="SLURM partition")
  cluster.add_argument("--account", help="SLURM account")
  cluster.add_argument("--array-parallelism", dest="array_parallelism", type=int,
                       help="SLURM: at most this many runs at once (default 64)")
  cluster.add_argument("--submitit-cluster", dest="submitit_cluster", choices=("slurm", "local"),
                       help="local: submit the SLURM jobs as processes here (a dry run)")
  cluster.add_argument("--ray-address", dest="ray_address",
                       help="an existing Ray cluster ('auto', 'ray://HOST:10001'); default: "
                       "a Ray started here")
  cluster.add_argument("--wait", action=argparse.BooleanOptionalAction, default=None,
                       help="follow the runs to the end and write the report (default: yes, "
                       "except slurm, which submits and returns)")
  grid_parser.add_argument("--set", nargs="+", metavar="FIELD=VALUE",
                           help="override a config field in every run (e.g. epochs=20); use "
                           "with its own --workdir, since done runs are not rerun")
  compare_parser = commands.add_parser(
      "compare", help="tables with statistics and curves for any finished runs")
  compare_parser.add_argument("runs", nargs="+", help="run directories, folders of runs "
                              "(searched for results.json), or quoted globs")
  compare_parser.add_argument("--baseline", help="the label the others are paired with")
  compare_parser.add_argument("--out", help="also write compare.md and plots here")
  sharp_parser = commands.add_parser(
      "sharpness", help="Hessian top eigenvalue and rho-sharpness of trained runs")
  sharp_parser.add_argument("runs", nargs="+", help="run directories (the best checkpoint)")
  sharp_parser.add_argument("--examples", type=int, default=512,
                            help="training examples the loss is averaged over")
  sharp_parser.add_argument("--rho", type=float, default=0.05, help="radius of the ascent")
  sharp_parser.add_argument("--ascent-steps", type=int, default=5)
  sharp_parser.add_argument("--power-iterations", type=int, default=20)
  sharp_parser.add_argument("--data-dir", dest="data_dir")
  sharp_parser.add_argument("--force", action="store_true", help="measure again")
  land_parser = commands.add_parser(
      "landscape", help="training loss along a filter-normalized random direction, per run")
  land_parser.add_argument("runs", nargs="+", help="run directories")
  land_parser.add_argument("--out", required=True, help="the PNG to write (and .json beside)")
  land_parser.add_argument("--labels", nargs="+", help="one label per run")
  land_parser.add_argument("--radius", type=float, default=1.0)
  land_parser.add_argument("--examples", type=int, default=512)
  land_parser.add_argument("--data-dir", dest="data_dir")
  predict_parser = commands.add_parser(
      "predict", help="class probabilities of a trained run for image files or an .npz split")
  predict_parser.add_argument("run", help="a run's work directory")
  predict_parser.add_argument("inputs", nargs="+", help="image files, or one MedMNIST-layout .npz")
  predict_parser.add_argument("--which", choices=("best", "last"), default="best")
  predict_parser.add_argument("--split", default="test", help="the .npz split to predict")
  predict_parser.add_argument("--out", help="the CSV to write (default: standard output)")
  predict_parser.add_argument("--batch-size", type=int, default=256)
  list_parser = commands.add_parser(
      "list", help="the optimizers, models, datasets and losses, one line each")
  list_parser.add_argument("kind", nargs="?", choices=("optimizers", "models", "datasets",
                                                       "losses"),
                           help="what to list (default: all)")
  args = parser.parse_args(argv)
  from sam_jax.train import memory, parallel
  from sam_jax.train.step import NonFiniteError
  from sam_jax.train.workdir_lock import WorkdirBusyError

  try:
    if args.command != "list":
      memory.use_cpu_schedule(args.cpu_schedule)
      parallel.use_host_devices(args.cpu_devices)
    distributed = (args.distributed or args.coordinator_address is not None
                   or args.num_processes is not None or args.process_id is not None)
    if distributed:
      if args.command != "train":
        raise ValueError(f"--distributed is for train, not {args.command}.")
      parallel.start_distributed(args.coordinator_address, args.num_processes, args.process_id)
  except (ValueError, RuntimeError) as error:
    return _fail("error", error, 2)
  if args.compile_cache and args.command != "list":
    enable_compilation_cache()

  commands_by_name = {"train": train, "eval": evaluate, "grid": grid_command, "list": list_command,
                      "predict": predict_command,
                      "compare": compare_command, "sharpness": sharpness_command,
                      "landscape": landscape_command}
  try:
    return commands_by_name[args.command](args)
  except (ValueError, WorkdirBusyError) as error:
    # Bad options and bad data: one clear line, not a traceback.
    return _fail("error", error, 2)
  except OSError as error:
    # Missing files, permissions, a full disk: the user's to fix, so one line too.
    return _fail("error", _describe_os_error(error), 2)
  except NonFiniteError as error:
    return _fail("training stopped", error, 3)


def enable_compilation_cache(environ=None) -> Optional[str]:
  """JAX's persistent compilation cache, so that a second run of a step does not compile it.

  A cache already configured (``JAX_COMPILATION_CACHE_DIR``, or
  ``jax.config`` set by the caller) is kept; otherwise the cache goes to
  ``$XDG_CACHE_HOME/sam_jax/jax`` (``~/.cache/sam_jax/jax``). Compilations
  shorter than a second are not stored. Returns the directory in use.
  """
  import os

  import jax

  environ = os.environ if environ is None else environ
  configured = jax.config.jax_compilation_cache_dir
  if configured:
    return configured
  root = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  path = os.path.join(root, "sam_jax", "jax")
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  return path


def _fail(kind: str, error: object, code: int) -> int:
  text = " ".join(str(error).split("\n")).strip() or type(error).__name__
  print(f"sam-jax: {kind}: {text}", file=sys.stderr)
  return code


def _describe_os_error(error: OSError) -> str:
  """The library's own message, or ``strerror: path`` for the system's."""
  if error.strerror is None or not error.filename:
    return str(error)
  path = error.filename if error.filename2 is None else f"{error.filename} -> {error.filename2}"
  return f"{error.strerror}: {path}"


if __name__ == "__main__":
  sys.exit(main())
