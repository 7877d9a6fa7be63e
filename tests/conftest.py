"""Test-wide settings: a persistent compilation cache inside the workspace."""

import os
import pathlib

import jax

_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".cache" / "jax"
if os.environ.get("SAM_JAX_NO_COMPILE_CACHE") is None:
  jax.config.update("jax_compilation_cache_dir", str(_CACHE))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


# Tests that start JAX in other processes (submitit jobs) take minutes; collected
# last (tests/studies/ sorts late), they ran alone at the end of a parallel run.
# Starting them first lets the other worker take the rest meanwhile.
_START_FIRST = ("tests/studies/test_executors.py",)


def pytest_collection_modifyitems(config, items):
  del config
  items.sort(key=lambda item: not any(item.nodeid.startswith(p) for p in _START_FIRST))
