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
  (api,) = [b for b in python_blocks() if "sam_jax.sam(" in b]
  exec(compile(api, "README.md", "exec"), {})
  out = capsys.readouterr().out
  loss, perturbed = map(float, re.findall(r"[-+]?\d+\.\d+", out))
  assert perturbed > loss > 0.0  # the perturbed point is worse, as SAM expects
