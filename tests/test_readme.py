"""The README's Python examples run as written."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def python_blocks():
  text = (ROOT / "README.md").read_text()
  return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_examples():
  assert python_blocks()


def test_api_example_runs(capsys):
  (api,) = [b for b in python_blocks()
            if "sam_jax.sam(" in b and "auc.pesg(" not in b and "interop" not in b]
  exec(compile(api, "README.md", "exec"), {})
  out = capsys.readouterr().out
  loss, perturbed = map(float, re.findall(r"[-+]?\d+\.\d+", out))
  assert perturbed > loss > 0.0  # the perturbed point is worse, as SAM expects


def test_models_and_data_example_runs(capsys, monkeypatch):
  import pytest
  from tests.data.conftest import real_data_dir
  data_dir = real_data_dir()
  if not (data_dir / "medmnist" / "breastmnist.npz").exists():
    pytest.skip(f"BreastMNIST not found under {data_dir} (set SAM_JAX_DATA_DIR)")
  monkeypatch.setenv("SAM_JAX_DATA_DIR", str(data_dir))
  (example,) = [b for b in python_blocks() if "load_dataset" in b]
  exec(compile(example, "README.md", "exec"), {})
  out = capsys.readouterr().out
  assert "binary" in out and "'train': 546" in out and "(8, 2)" in out


def test_auc_example_runs(capsys):
  (example,) = [b for b in python_blocks() if "auc.pesg(" in b]
  exec(compile(example, "README.md", "exec"), {})
  out = capsys.readouterr().out
  train_auc, alpha = map(float, re.findall(r"[-+]?\d+\.\d+", out))
  assert train_auc > 0.95 and alpha > 0.0  # AUC-M + PESG under SAM ranks the positives first


def test_readme_train_commands_parse():
  """Every ``sam-jax train`` line of the README's shell examples names real options."""
  import shlex

  from sam_jax import cli

  text = (ROOT / "README.md").read_text()
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split("#")[0].strip()
      if line.startswith("sam-jax train"):
        argv = [a for a in shlex.split(line)[2:] if a != "..."]  # "..." elides options
        commands.append(argv if "--workdir" in argv else [*argv, "--workdir", "w"])
  assert len(commands) >= 5
  for argv in commands:
    cli._parse_train(argv)  # exits on an unknown option or a bad value
