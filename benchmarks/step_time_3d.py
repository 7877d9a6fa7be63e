"""ResNet-18 3D train steps, sam_jax against PyTorch, SGD and SAM, in one process.

    python -m benchmarks.step_time_3d [--configs 28:0.25:32 64:0.125:32]
                                      [--xla-configs 28] [--rounds 3]

Needs the ``bench`` extra (``pip install 'sam_jax[bench]'``: PyTorch, CPU).

For each ``size:width:batch`` configuration, the same network (ResNet-18,
CIFAR stem, 3x3x3 convolutions, BatchNorm, 2 classes, one input channel) is
trained on the same random batch by:

* sam_jax with ``conv_impl="auto"`` (the fast CPU convolutions), SGD and SAM
  (``sam_jax.sam(0.05)`` before SGD with momentum 0.9; the jitted step of
  ``sam-jax train``, state donated);
* sam_jax with ``conv_impl="xla"`` (XLA's own 3-D convolution, the state
  before this benchmark), for the configurations in ``--xla-configs`` only (a
  64^3 step takes minutes that way);
* with ``--accumulation-steps K``, sam_jax's step over K micro-batches (the
  option of ``sam-jax train``; BatchNorm then normalizes each micro-batch
  alone, so this is the user's alternative, not the same computation);
* PyTorch (``torch.set_num_threads`` = the CPU count JAX sees): ``Conv3d`` and
  ``BatchNorm3d``, SGD with momentum 0.9, and SAM as in davda54/sam (ascend to
  ``w + rho·g/||g||``, second forward-backward with BatchNorm momentum 0, step
  from ``w``).

Both models must have the same parameter count (checked). The methods take
turns in every round, each timed to completion (``block_until_ready``;
PyTorch is synchronous on a CPU), and the median is reported with the ratio
to PyTorch's same method. Writes ``step_time_3d_<backend>.json`` and ``.md``
into ``--out`` after every configuration.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import sam_jax
from benchmarks.timing import interleaved_medians
from sam_jax import models
from sam_jax.train import parallel
from sam_jax.train.losses import softmax_cross_entropy
from sam_jax.train.state import create_train_state
from sam_jax.train.step import make_train_step

LR, RHO = 0.01, 0.05


def torch_resnet18(width: float, num_classes: int = 2, dims: int = 3, stem: str = "cifar",
                   in_channels: int = 1):
  """ResNet-18 in PyTorch (2-D or 3-D), the layout of sam_jax's ResNet: the CIFAR stem, or
  the ImageNet stem (7x7 stride-2 convolution, 3x3 stride-2 max-pool)."""
  import torch.nn as tnn

  conv = tnn.Conv3d if dims == 3 else tnn.Conv2d
  norm = tnn.BatchNorm3d if dims == 3 else tnn.BatchNorm2d

  class Block(tnn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = conv(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = norm(cout)
      self.conv2 = conv(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = norm(cout)
      self.down = None
      if stride != 1 or cin != cout:
        self.down = tnn.Sequential(conv(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x):
      y = self.bn1(self.conv1(x)).relu()
      y = self.bn2(self.conv2(y))
      return (y + (x if self.down is None else self.down(x))).relu()

  base = max(1, int(round(64 * width)))
  if stem == "cifar":
    layers = [conv(in_channels, base, 3, 1, 1, bias=False), norm(base), tnn.ReLU()]
  else:
    pool = tnn.MaxPool3d if dims == 3 else tnn.MaxPool2d
    layers = [conv(in_channels, base, 7, 2, 3, bias=False), norm(base), tnn.ReLU(),
              pool(3, 2, 1)]
  cin = base
  for stage in range(4):
    cout = base * 2**stage
    for block in range(2):
      layers.append(Block(cin, cout, 2 if stage > 0 and block == 0 else 1))
      cin = cout
  pool = tnn.AdaptiveAvgPool3d(1) if dims == 3 else tnn.AdaptiveAvgPool2d(1)
  layers += [pool, tnn.Flatten(), tnn.Linear(cin, num_classes)]
  return tnn.Sequential(*layers)


def torch_steps(width: float, images: np.ndarray, labels: np.ndarray, stem: str = "cifar"):
  """PyTorch SGD and SAM steps (closures) and the model's parameter count.

  ``images`` are channels-last ``uint8`` (``N, *spatial, C``); 2-D or 3-D by their rank.
  """
  import torch

  dims = images.ndim - 2

  def build():
    torch.manual_seed(0)
    model = torch_resnet18(width, dims=dims, stem=stem, in_channels=images.shape[-1])
    return model, torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)

  # Channels first, normalized to [-1, 1] as sam_jax's default preprocessing does.
  x = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)
  x = x.permute(0, dims + 1, *range(1, dims + 1)).contiguous()
  y = torch.from_numpy(labels.astype(np.int64))
  loss_fn = torch.nn.CrossEntropyLoss()

  sgd_model, sgd_opt = build()

  def sgd_step():
    sgd_opt.zero_grad()
    loss_fn(sgd_model(x), y).backward()
    sgd_opt.step()

  sam_model, sam_opt = build()
  batchnorms = [m for m in sam_model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

  def sam_step():
    sam_opt.zero_grad()
    loss_fn(sam_model(x), y).backward()
    params = [p for p in sam_model.parameters() if p.grad is not None]
    with torch.no_grad():
      norm = torch.norm(torch.stack([p.grad.norm(2) for p in params]), 2)
      scale = RHO / (norm + 1e-12)
      eps = [p.grad * scale for p in params]
      for p, e in zip(params, eps):
        p.add_(e)
    for bn in batchnorms:  # the second pass leaves the running statistics alone
      bn.backup_momentum, bn.momentum = bn.momentum, 0.0
    sam_opt.zero_grad()
    loss_fn(sam_model(x), y).backward()
    for bn in batchnorms:
      bn.momentum = bn.backup_momentum
    with torch.no_grad():
      for p, e in zip(params, eps):
        p.sub_(e)
    sam_opt.step()

  count = sum(p.numel() for p in sgd_model.parameters())
  return {"sgd": sgd_step, "sam": sam_step}, count


def jax_steps(width: float, impl: Optional[str], batch: dict, accumulation_steps: int = 1,
              stem: str = "cifar"):
  """sam_jax SGD and SAM steps (closures over their states), their compile times and the
  parameter count; with ``accumulation_steps`` K > 1, the step of ``--accumulation-steps K``.
  ``impl=None``: the 2-D ResNet-18 (``batch`` of images), else the 3-D one with that
  ``conv_impl``. Placed as ``sam-jax train`` places it (``parallel="auto"``: split over
  the host devices of :func:`sam_jax.train.parallel.use_host_devices` where it can be)."""
  mode = parallel.resolve_mode("auto", batch["label"].shape[0],
                               accumulation_steps=accumulation_steps)
  if impl is None:
    model = models.create_model("resnet18", 2, width=width, stem=stem)
  else:
    model = models.create_model("resnet18_3d", 2, width=width, conv_impl=impl)
  apply_fn, params, model_state = models.from_linen(model, jax.random.key(0), batch["image"][:1])
  loss = softmax_cross_entropy()
  steps, compile_s = {}, {}
  for method, tx in {"sgd": optax.sgd(LR, momentum=0.9),
                     "sam": optax.chain(sam_jax.sam(RHO), optax.sgd(LR, momentum=0.9))}.items():
    placement = parallel.place(functools.partial(make_train_step, apply_fn, loss, tx,
                                                 accumulation_steps=accumulation_steps), mode)
    holder = {"state": placement.to_device(create_train_state(
        jax.tree.map(jnp.copy, params), jax.tree.map(jnp.copy, model_state), tx))}

    placed_batch = placement.place_batch(batch)

    def run(step=placement.step_fn, holder=holder, batch=placed_batch):
      holder["state"], metrics = step(holder["state"], batch, jax.random.key(0))
      jax.block_until_ready((holder["state"], metrics))

    start = time.perf_counter()
    run()  # compiles
    steps[method], compile_s[method] = run, time.perf_counter() - start
  return steps, compile_s, int(sum(x.size for x in jax.tree.leaves(params)))


def benchmark_config(size: int, width: float, batch_size: int, with_xla: bool, rounds: int,
                     accumulation: tuple[int, ...] = ()) -> dict:
  import torch

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch_size, size, size, size, 1), dtype=np.uint8)
  labels = rng.integers(0, 2, batch_size).astype(np.int32)
  batch = jax.device_put({"image": images, "label": labels})
  runs, counts, compile_s = {}, {}, {}
  variants = [("auto", 1)] + ([("xla", 1)] if with_xla else []) + [("auto", k) for k in accumulation]
  for impl, k in variants:
    framework = f"sam_jax ({impl})" if k == 1 else f"sam_jax ({impl}, {k} micro-batches)"
    steps, compiled_in, counts[framework] = jax_steps(width, impl, batch, k)
    for method, fn in steps.items():
      runs[(framework, method)] = fn
      compile_s[(framework, method)] = compiled_in[method]
  steps, counts["pytorch"] = torch_steps(width, images, labels)
  for method, fn in steps.items():
    fn()  # warm-up
    runs[("pytorch", method)] = fn
  if len(set(counts.values())) != 1:
    raise RuntimeError(f"parameter counts differ: {counts}")
  medians = interleaved_medians(runs, rounds, warm_up=False)  # compiled and warmed up above
  rows = []
  for (framework, method), median in medians.items():
    rows.append({"framework": framework, "method": method, "median_s": median,
                 "per_pytorch": median / medians[("pytorch", method)],
                 "sam_per_sgd": (median / medians[(framework, "sgd")]) if method == "sam" else None,
                 "compile_s": compile_s.get((framework, method)), "timed_steps": rounds})
  return {"size": size, "width": width, "batch_size": batch_size, "params": counts["pytorch"],
          "torch_threads": torch.get_num_threads(), "rows": rows}


def to_markdown(results: dict) -> str:
  lines = [f"# ResNet-18 3D train step, sam_jax vs PyTorch ({results['backend']}, jax {results['jax']}, "
           f"torch {results['torch']})", "",
           f"Median seconds per step over {results['rounds']} rounds (methods taking turns) after "
           f"compilation and a warm-up. sam_jax's steps are placed as `sam-jax train` places "
           f"them: " + (f"the batch split over {results['host_devices']} host devices as one "
                        f"sharded program." if results.get("host_devices") else "one device.")
           + f" Command: `{results['command']}`.", "",
           "| input | width | params | framework | method | s/step | / PyTorch | SAM / SGD | compile s |",
           "|---|---|---|---|---|---|---|---|---|"]
  for config in results["configs"]:
    for row in config["rows"]:
      ratio = "" if row["sam_per_sgd"] is None else f"{row['sam_per_sgd']:.2f}"
      compile_s = "" if row["compile_s"] is None else f"{row['compile_s']:.1f}"
      lines.append(f"| {config['batch_size']}x{config['size']}^3 | {config['width']} | {config['params']:,} | "
                   f"{row['framework']} | {row['method']} | {row['median_s']:.3f} | "
                   f"{row['per_pytorch']:.2f} | {ratio} | {compile_s} |")
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", nargs="+", default=["28:0.25:32", "64:0.125:32"], help="size:width:batch")
  parser.add_argument("--xla-configs", nargs="*", default=["28"],
                      help="sizes that also time conv_impl='xla' (slow: minutes per step at 64)")
  parser.add_argument("--accumulation-steps", type=int, nargs="*", default=[],
                      help="also time `--accumulation-steps K` for each K (BatchNorm then normalizes "
                           "each micro-batch alone; PyTorch keeps the whole batch)")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("benchmarks/results"))
  parser.add_argument("--append", action="store_true",
                      help="add these configurations to the existing table instead of replacing it")
  args = parser.parse_args()
  host_devices = parallel.use_host_devices()  # as `sam-jax train` does
  try:
    import torch
  except ImportError:
    raise SystemExit("benchmarks.step_time_3d needs PyTorch: pip install 'sam_jax[bench]'") from None
  torch.set_num_threads(os.cpu_count() or 1)
  backend = jax.default_backend()
  results = {"backend": backend, "jax": jax.__version__, "torch": torch.__version__,
             "host": platform.platform(), "rounds": args.rounds, "host_devices": host_devices,
             "command": f"python -m benchmarks.step_time_3d --configs {' '.join(args.configs)} "
                        f"--xla-configs {' '.join(args.xla_configs)} --rounds {args.rounds}"
                        + (f" --accumulation-steps {' '.join(map(str, args.accumulation_steps))}"
                           if args.accumulation_steps else ""),
             "configs": []}
  args.out.mkdir(parents=True, exist_ok=True)
  existing = args.out / f"step_time_3d_{backend}.json"
  if args.append and existing.is_file():
    previous = json.loads(existing.read_text())
    results["configs"] = previous["configs"]
    results["command"] = previous["command"] + "` then `" + results["command"] + " --append"
  for spec in args.configs:
    size, width, batch = spec.split(":")
    results["configs"].append(benchmark_config(int(size), float(width), int(batch),
                                               size in args.xla_configs, args.rounds,
                                               tuple(args.accumulation_steps)))
    (args.out / f"step_time_3d_{backend}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"step_time_3d_{backend}.md").write_text(to_markdown(results))
    print(to_markdown({**results, "configs": results["configs"][-1:]}), flush=True)


if __name__ == "__main__":
  main()
