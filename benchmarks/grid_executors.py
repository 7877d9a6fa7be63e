"""Wall time of one 4-run grid of tiny models under each executor, on this machine.

    python -m benchmarks.grid_executors --out benchmarks/results/grid_executors

The grid (Adam and SAM × 2 seeds, ResNet-18 at width 1/16, 64 synthetic 28-px
training images, 2 epochs) runs with ``--executor local`` (in this process,
one run after another), ``slurm`` on submitit's local cluster (each run a job
process; all at once) and ``ray`` (a Ray started here, one CPU per run). Each
executor writes its own run directories; the test metrics of every run must
equal the local executor's (checked, and recorded). Start-up is included: the
job processes import JAX and compile on their own, which is what a cluster
pays too.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import tempfile
import time

from sam_jax import studies
from sam_jax.studies import executors
from sam_jax.train import config as config_lib


def tiny_study(npz: str, **changes) -> studies.Study:
  """Adam and SAM × seeds 0 and 1 on ``npz`` (``changes`` go into every run's config);
  also the grid of ``tests/studies/test_executors.py``."""
  methods = {"adam": {}, "sam": dict(optimizer="sam", base_optimizer="adam", rho=0.05)}

  def configure(dataset, model, method):
    fields = dict(dataset=npz, model=model, width=0.0625, batch_size=32, eval_batch_size=64,
                  epochs=2, progress=False)
    return config_lib.TrainConfig(**{**fields, **methods[method], **changes})
  return studies.Study("tiny", studies.expand(
      [studies.Block(["tiny"], ["resnet18"], list(methods))], (0, 1), configure),
      baselines={"sam": "adam"}, description="a 4-run grid of tiny models")


def test_metrics(study: studies.Study, root: pathlib.Path) -> dict[str, dict]:
  return {str(run): json.loads((run.directory(root) / "results.json").read_text())["test"]
          for run in study.runs}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="benchmarks/results/grid_executors")
  parser.add_argument("--executors", nargs="+", default=list(executors.EXECUTORS))
  args = parser.parse_args()
  from tests.data.synthetic import write_medmnist_npz

  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    npz = str(write_medmnist_npz(tmp / "tiny.npz", counts=(64, 32, 32), seed=4))
    study = tiny_study(npz)
    reference = None
    for name in args.executors:
      resources = executors.Resources(cpus=1, submitit_cluster="local")
      root = tmp / name
      start = time.perf_counter()
      counts = studies.run_grid(study, root, executor=name, resources=resources,
                                log=lambda m: None)
      seconds = time.perf_counter() - start
      metrics = test_metrics(study, root)
      reference = reference or metrics
      rows.append(dict(executor=name, seconds=round(seconds, 1), done=counts["done"],
                       same_test_metrics_as_local=metrics == reference))
      print(rows[-1], flush=True)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  meta = dict(machine=platform.processor() or platform.machine(), runs=len(study.runs))
  out.with_suffix(".json").write_text(json.dumps(dict(meta, rows=rows), indent=2))
  lines = ["# 4-run grid: wall time per executor", "",
           "`python -m benchmarks.grid_executors` on this machine (2 CPU cores); Adam and SAM "
           "× 2 seeds, ResNet-18 width 1/16, 64 training images, 2 epochs.", "",
           "| executor | wall s | runs done | test metrics equal local's |", "|---|---|---|---|"]
  lines += [f"| {r['executor']} | {r['seconds']} | {r['done']} | "
            f"{'yes' if r['same_test_metrics_as_local'] else 'NO'} |" for r in rows]
  out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
