"""Test-wide settings: a persistent compilation cache inside the workspace."""

import os
import pathlib

import jax

_CACHE = pathlib.Path(__file__).resolve().parent.parent / ".cache" / "jax"
if os.environ.get("SAM_JAX_NO_COMPILE_CACHE") is None:
  jax.config.update("jax_compilation_cache_dir", str(_CACHE))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
