#!/bin/sh
# The studies' cpu grids (the two sharpness studies, then the 3-D baselines),
# one after the other, resumable:
#   nohup sh experiments/run_cpu_grids.sh > logs/grid_cpu.log 2>&1 &
# Rerun the same command after an interruption; finished runs are skipped.
set -e
export SAM_JAX_DATA_DIR="${SAM_JAX_DATA_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/shared/data}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$PWD/.cache/jax}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0.5
PY="${PYTHON:-.venv/bin/python}"
for study in gcsam_busi sharpness_medical medmnist3d; do
  "$PY" -m sam_jax.cli grid run "experiments/studies/$study.py" --preset cpu --quiet
done
