"""From a config to an optax chain: the learning-rate schedule and the optimizer.

The chain is ``sharpness method → clipping → weight decay → base optimizer``:
the sharpness transformation comes first because it must see the raw
gradient that its ``grad_fn`` also returns (weight decay enters after it,
like the base optimizer's own decay in davda54/sam, GSAM and WSAM, and
unlike google-research/sam, which puts L2 in the loss). Decoupled WSAM wraps
``weight decay → base optimizer`` instead. A one-pass method that perturbs
along the base's own step (Momentum-SAM) comes last:
``clipping → weight decay → base optimizer → method``.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import optax

import sam_jax
import sam_jax.auc
from sam_jax.train import objectives
from sam_jax.train.config import TrainConfig

DAM_OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "pesg": sam_jax.auc.pesg,
    "soap": sam_jax.auc.soap,
    "sopa": sam_jax.auc.sopa,
    "sopa_s": sam_jax.auc.sopa_s,
}
BASE_OPTIMIZERS = ("sgd", "adam", "adamw") + tuple(DAM_OPTIMIZERS)
SHARPNESS_METHODS: dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {
    "sam": sam_jax.sam,
    "asam": sam_jax.asam,
    "gsam": sam_jax.gsam,
    "wsam": sam_jax.wsam,
    "crsam": sam_jax.crsam,
    "gcsam": sam_jax.gcsam,
    "friendly_sam": sam_jax.friendly_sam,
    "stable_sam": sam_jax.stable_sam,
    "looksam": sam_jax.looksam,
    "ae_sam": sam_jax.ae_sam,
    "randomized_sam": sam_jax.randomized_sam,
    "esam": sam_jax.esam,
}
# One-pass methods: placed after the base optimizer, whose step they read.
AFTER_BASE_METHODS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "momentum_sam": sam_jax.momentum_sam,
}
METHODS = {**SHARPNESS_METHODS, **AFTER_BASE_METHODS}
OPTIMIZERS = BASE_OPTIMIZERS + tuple(METHODS)
SCHEDULES = ("constant", "multistep", "cosine")
# Config field -> the factories' argument (GSAM calls its radius rho_max).
_HYPERPARAMETERS = ("rho", "rho_min", "eta", "alpha", "gamma", "beta", "sigma", "lmbda",
                    "period", "threshold", "ema_decay", "probability",
                    "adaptive", "adaptive_perturbation", "decouple")


def check_names(config: TrainConfig) -> None:
  if config.optimizer not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {config.optimizer!r}; known: {', '.join(OPTIMIZERS)}.")
  if config.base_optimizer not in BASE_OPTIMIZERS:
    raise ValueError(f"unknown base optimizer {config.base_optimizer!r}; known: "
                     f"{', '.join(BASE_OPTIMIZERS)}.")
  if config.schedule not in SCHEDULES:
    raise ValueError(f"unknown schedule {config.schedule!r}; known: {', '.join(SCHEDULES)}.")
  if config.loss not in objectives.LOSSES:
    raise ValueError(f"unknown loss {config.loss!r}; known: {', '.join(objectives.LOSSES)}.")
  base = config.base_optimizer if config.optimizer in METHODS else config.optimizer
  if config.loss in ("aucm", "aucm_v1") and base != "pesg":
    raise ValueError(f"loss {config.loss!r} is a min-max objective whose dual variable only "
                     f"PESG updates; use --optimizer pesg (or a sharpness method with "
                     f"--base-optimizer pesg), not {base!r}.")
  if base == "pesg" and config.loss not in ("aucm", "aucm_v1"):
    raise ValueError(f"pesg optimizes the AUC-margin loss; use --loss aucm (or aucm_v1), not "
                     f"{config.loss!r} (soap, sopa and sopa_s suit the other losses).")
  if config.dam_mode not in (None, "sgd", "adam"):
    raise ValueError(f"dam_mode must be 'sgd' or 'adam', got {config.dam_mode!r}.")
  if config.momentum_convention != "heavy_ball" and base != "pesg":
    raise ValueError(f"momentum_convention {config.momentum_convention!r} is PESG's option; "
                     f"{base!r} uses heavy-ball momentum.")
  for field in ("dam_mode", "epoch_decay", "clip_value"):
    if getattr(config, field) is not None and base not in DAM_OPTIMIZERS:
      raise ValueError(f"{field} applies to {', '.join(DAM_OPTIMIZERS)}, not {base!r}.")


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
  total = max(1, config.epochs * steps_per_epoch)
  lr = config.learning_rate
  if config.schedule == "constant":
    schedule = optax.constant_schedule(lr)
  elif config.schedule == "multistep":
    boundaries = {int(round(m * total)): config.decay_factor for m in config.milestones}
    schedule = optax.piecewise_constant_schedule(lr, boundaries)
  else:
    schedule = optax.cosine_decay_schedule(lr, total)
  warmup = int(round(config.warmup_epochs * steps_per_epoch))
  if warmup:
    schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), schedule], [warmup])
  return schedule


def milestone_steps(config: TrainConfig, steps_per_epoch: int) -> tuple[int, ...]:
  """Steps at which a multistep schedule decays (the DAM recipes' stage boundaries)."""
  if config.schedule != "multistep":
    return ()
  total = max(1, config.epochs * steps_per_epoch)
  return tuple(sorted({int(round(m * total)) for m in config.milestones} - {0}))


def dam_kwargs(config: TrainConfig, name: str, steps_per_epoch: int) -> dict[str, Any]:
  """Arguments of a deep-AUC optimizer from the config (``None`` fields keep its defaults)."""
  kwargs: dict[str, Any] = {"weight_decay": config.weight_decay, "momentum": config.momentum,
                            "nesterov": config.nesterov, "seed": config.seed}
  for field, arg in (("dam_mode", "mode"), ("epoch_decay", "epoch_decay"),
                     ("clip_value", "clip_value")):
    if getattr(config, field) is not None:
      kwargs[arg] = getattr(config, field)
  if config.reset_reference:
    kwargs["reference_resets"] = milestone_steps(config, steps_per_epoch)
  if config.libauc_code:
    kwargs["reference_init"] = "noise"
  if name == "pesg":
    kwargs.update(margin=config.margin, momentum_convention=config.momentum_convention)
  return kwargs


def _base(name: str, schedule: optax.Schedule, config: TrainConfig,
          steps_per_epoch: int = 1) -> optax.GradientTransformation:
  if name in DAM_OPTIMIZERS:
    return DAM_OPTIMIZERS[name](schedule, **dam_kwargs(config, name, steps_per_epoch))
  if name == "sgd":
    return optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
  if name == "adam":
    return optax.adam(schedule)
  return optax.adamw(schedule, weight_decay=config.weight_decay)


def sharpness_kwargs(config: TrainConfig, method: str) -> dict[str, Any]:
  """The config's sharpness hyperparameters that ``method`` takes."""
  factory = METHODS[method]
  accepted = inspect.signature(factory).parameters
  kwargs = {}
  for field in _HYPERPARAMETERS:
    value = getattr(config, field)
    if value is None:
      continue
    name = "rho_max" if (field == "rho" and method == "gsam") else field
    if name not in accepted:
      raise ValueError(f"{method} takes no {field!r} (its hyperparameters: "
                       f"{', '.join(p for p in accepted if p not in ('eps', 'mask', 'base', 'seed'))}).")
    kwargs[name] = value
  if method in ("randomized_sam", "esam"):
    kwargs["seed"] = config.seed  # each seed of a study draws its own steps or weight masks
  return kwargs


def build_optimizer(config: TrainConfig, steps_per_epoch: int) -> tuple[optax.GradientTransformation,
                                                                         optax.Schedule]:
  """``(tx, schedule)`` for ``config``; raises ``ValueError`` naming bad options."""
  check_names(config)
  schedule = learning_rate_schedule(config, steps_per_epoch)
  method = config.optimizer if config.optimizer in METHODS else None
  base_name = config.base_optimizer if method else config.optimizer
  base = _base(base_name, schedule, config, steps_per_epoch)
  # adamw and the deep-AUC optimizers apply their own weight decay.
  decay = (optax.add_decayed_weights(config.weight_decay)
           if config.weight_decay and base_name in ("sgd", "adam") else None)
  clip = optax.clip_by_global_norm(config.grad_clip) if config.grad_clip else None

  if method is None:
    return optax.chain(*[t for t in (clip, decay, base) if t is not None]), schedule
  kwargs = sharpness_kwargs(config, method)
  if method == "gsam" and config.rho_min is not None:
    total = config.epochs * steps_per_epoch
    kwargs.update(learning_rate=schedule, lr_max=config.learning_rate,
                  lr_min=float(min(schedule(0), schedule(max(total - 1, 0)))))
  if method == "wsam" and kwargs.get("decouple", True):
    inner = optax.chain(*[t for t in (decay, base) if t is not None])
    wsam = sam_jax.wsam(base_optimizer=inner, learning_rate=schedule, **kwargs)
    return optax.chain(*[t for t in (clip, wsam) if t is not None]), schedule
  if method in AFTER_BASE_METHODS:
    after = AFTER_BASE_METHODS[method](**kwargs)
    return optax.chain(*[t for t in (clip, decay, base, after) if t is not None]), schedule
  sharpness = SHARPNESS_METHODS[method](**kwargs)
  return optax.chain(*[t for t in (sharpness, clip, decay, base) if t is not None]), schedule
