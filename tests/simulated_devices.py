"""Child processes for the tests: the suite's compilation cache, simulated CPU devices.

The device count is an XLA flag read once, when JAX starts, so a check on 4
devices needs its own process.
"""

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def subprocess_env(devices: int = 0, optimize: bool = True) -> dict:
  """This process's environment for a child: the suite's compilation cache,
  ``devices`` simulated CPU devices when given, LLVM's optimizations off
  with ``optimize=False``."""
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
  flags = [env.get("XLA_FLAGS", "")]
  if devices:
    flags.append(f"--xla_force_host_platform_device_count={devices}")
  if not optimize:
    flags.append("--xla_backend_optimization_level=0")
  env["XLA_FLAGS"] = " ".join(flags).strip()
  return env


def run_check(module: str, expected_ok_lines: int, devices: int = 4) -> None:
  """Runs ``python -m module``; asserts it succeeds and prints that many ``ok`` lines.

  The child compiles without LLVM's optimizations: these checks compile
  dozens of small steps and compare programs compiled alike, so the
  optimizations cost a third of their CPU time (parallel_check: 125 -> 81 s)
  and change nothing they compare.
  """
  result = subprocess.run([sys.executable, "-m", module], cwd=ROOT,
                          env=subprocess_env(devices, optimize=False),
                          capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
  checks = [line for line in result.stdout.splitlines() if line.startswith("ok ")]
  assert len(checks) == expected_ok_lines, result.stdout
