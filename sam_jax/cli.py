"""The ``sam-jax`` command.

    sam-jax train --dataset breastmnist --model resnet18 --optimizer sam --rho 0.05 \\
                  --preset cpu --data-dir ../shared/data --workdir runs/breast-sam
    sam-jax train --config my_config.py --epochs 5          # file, then overrides
    sam-jax train --workdir runs/breast-sam --resume          # continue a run
    sam-jax eval runs/breast-sam --dataset breastmnist --split test

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

from sam_jax.train import config as config_lib

def _add_train_options(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, help="where records and checkpoints go")
  parser.add_argument("--preset", choices=config_lib.PRESETS, help="start from a preset")
  parser.add_argument("--config", help="a .py (get_config()) or .json config file")
  parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
  for field in dataclasses.fields(config_lib.TrainConfig):
    flag = "--" + field.name.replace("_", "-")
    kind = _scalar_type(field)
    if kind is bool:
      parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction,
                          default=None)
    elif field.name == "milestones":
      parser.add_argument(flag, dest=field.name, type=float, nargs="+", default=None)
    else:
      parser.add_argument(flag, dest=field.name, type=kind, default=None)


def _scalar_type(field: dataclasses.Field):
  """bool, float, int or str, from the field's annotation (a string here)."""
  text = str(field.type)
  if "bool" in text:
    return bool
  if "float" in text:
    return float
  if "int" in text:
    return int
  return str


def resolve_config(args: argparse.Namespace) -> config_lib.TrainConfig:
  overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_lib.TrainConfig)
               if getattr(args, f.name) is not None}
  if "milestones" in overrides:
    overrides["milestones"] = tuple(overrides["milestones"])
  saved = pathlib.Path(args.workdir) / "config.json"
  if args.resume and saved.exists():
    base = config_lib.from_dict(json.loads(saved.read_text()))
  elif args.config:
    base = config_lib.load_file(args.config)
    if args.preset:
      raise SystemExit("error: give --preset or --config, not both")
  elif args.preset:
    base = config_lib.preset(args.preset, overrides.get("dataset", "breastmnist"))
  else:
    base = config_lib.TrainConfig()
  return base.replace(**overrides)


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


def _parse_train(argv: Sequence[str]) -> argparse.Namespace:
  """The ``train`` options alone (for tests and scripts)."""
  parser = argparse.ArgumentParser(prog="sam-jax train")
  _add_train_options(parser)
  return parser.parse_args(list(argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="sam-jax", description=__doc__.splitlines()[0])
  commands = parser.add_subparsers(dest="command", required=True)
  train_parser = commands.add_parser("train", help="train and evaluate one configuration")
  _add_train_options(train_parser)
  eval_parser = commands.add_parser("eval", help="re-evaluate a saved model")
  eval_parser.add_argument("checkpoint", help="a run's work directory")
  eval_parser.add_argument("--dataset", help="dataset (default: the run's)")
  eval_parser.add_argument("--data-dir", dest="data_dir")
  eval_parser.add_argument("--split", nargs="+", default=["val", "test"])
  eval_parser.add_argument("--which", choices=("best", "last"), default="best")
  args = parser.parse_args(argv)
  from sam_jax.train.step import NonFiniteError

  try:
    return train(args) if args.command == "train" else evaluate(args)
  except (ValueError, FileNotFoundError, FileExistsError) as error:
    # Bad options and missing data: one clear line, not a traceback.
    print(f"sam-jax: error: {error}", file=sys.stderr)
    return 2
  except NonFiniteError as error:
    print(f"sam-jax: training stopped: {error}", file=sys.stderr)
    return 3


if __name__ == "__main__":
  sys.exit(main())
