"""Where the real data is: $SAM_JAX_DATA_DIR, else ../shared/data beside the repo."""

import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def real_data_dir() -> pathlib.Path:
  value = os.environ.get("SAM_JAX_DATA_DIR")
  return pathlib.Path(value) if value else ROOT.parent / "shared" / "data"


@pytest.fixture
def data_dir() -> pathlib.Path:
  path = real_data_dir()
  if not path.is_dir():
    pytest.skip(f"real data not found at {path} (set SAM_JAX_DATA_DIR to run these tests)")
  return path


def need(path: pathlib.Path) -> pathlib.Path:
  if not path.exists():
    pytest.skip(f"{path} is absent (set SAM_JAX_DATA_DIR to a copy of shared/data)")
  return path
