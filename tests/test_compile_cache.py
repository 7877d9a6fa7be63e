"""The CLI keeps JAX's persistent compilation cache in a user directory by default."""

from __future__ import annotations

import jax
import pytest

from sam_jax import cli


@pytest.fixture
def no_cache_configured():
  saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", None)
  yield
  jax.config.update("jax_compilation_cache_dir", saved[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])


def test_the_cache_goes_to_the_user_cache_directory(no_cache_configured, tmp_path):
  path = cli.enable_compilation_cache({"XDG_CACHE_HOME": str(tmp_path)})
  assert path == str(tmp_path / "sam_jax" / "jax")
  assert jax.config.jax_compilation_cache_dir == path
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0


def test_a_configured_cache_is_kept(no_cache_configured, tmp_path):
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
  assert cli.enable_compilation_cache({"XDG_CACHE_HOME": str(tmp_path)}) == str(tmp_path / "mine")


def test_the_flag_turns_it_off(no_cache_configured, tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  missing = str(tmp_path / "no-such-run")
  assert cli.main(["--no-compile-cache", "eval", missing]) == 2  # fails fast: no run there
  assert jax.config.jax_compilation_cache_dir is None
  assert cli.main(["eval", missing]) == 2
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "sam_jax" / "jax")
