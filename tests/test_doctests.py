"""The ``>>>`` examples in the library's docstrings run, as written."""

import doctest
import importlib
import pkgutil

import pytest

import sam_jax

MODULES = sorted(m.name for m in pkgutil.walk_packages(sam_jax.__path__, "sam_jax."))


def modules_with_examples():
  found = []
  for name in MODULES:
    module = importlib.import_module(name)
    if doctest.DocTestFinder().find(module) and any(
        t.examples for t in doctest.DocTestFinder().find(module)):
      found.append(name)
  return found


@pytest.mark.parametrize("name", modules_with_examples())
def test_docstring_examples_run(name):
  result = doctest.testmod(importlib.import_module(name), verbose=False,
                           optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0


def test_there_are_examples():
  assert {"sam_jax.optimizers.sam", "sam_jax.optimizers.asam", "sam_jax.auc.pesg"} <= set(
      modules_with_examples())
