"""The command explains itself: every train option has a help line and its choices, and
``sam-jax list`` names everything the registries hold."""

import dataclasses

import pytest

from sam_jax import catalog, cli, models
from sam_jax.data import DATASETS
from sam_jax.train import config as config_lib
from sam_jax.train import objectives, optim


def test_every_train_option_is_described(capsys):
  with pytest.raises(SystemExit):
    cli._parse_train(["--help"])
  text = " ".join(capsys.readouterr().out.split())
  for field in dataclasses.fields(config_lib.TrainConfig):
    flag = "--" + field.name.replace("_", "-")
    assert flag in text
  help_of = config_lib.field_help()
  assert set(help_of) == {f.name for f in dataclasses.fields(config_lib.TrainConfig)}
  assert all(len(h) > 3 for h in help_of.values())
  # Choices come from the registries the checks use.
  assert "{" + ", ".join(optim.OPTIMIZERS) + "}" in text
  assert "{" + ", ".join(objectives.LOSSES) + "}" in text


@pytest.mark.parametrize("kind,names", [
    ("optimizers", optim.OPTIMIZERS), ("models", tuple(models.MODELS)),
    ("datasets", DATASETS), ("losses", tuple(objectives.LOSSES))])
def test_list_names_every_registered_thing(kind, names, capsys):
  assert cli.main(["list", kind]) == 0
  listed = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
  assert set(names) <= set(listed)


def test_list_of_everything_and_a_wrong_kind(capsys):
  assert cli.main(["list"]) == 0
  out = capsys.readouterr().out
  assert all(f"{kind}:" in out for kind in catalog.KINDS)
  with pytest.raises(SystemExit) as exit_:
    cli.main(["list", "optimisers"])
  assert exit_.value.code == 2
  assert "invalid choice: 'optimisers'" in capsys.readouterr().err
