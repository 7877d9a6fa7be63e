"""sam_jax: sharpness-aware optimizers for JAX/Optax, with medical imaging tools.

The public API is small: the optimizer factories (each an Optax
``GradientTransformationExtraArgs``) and the helpers a training loop needs to
call them. Models, data and training live in their subpackages.
"""

from sam_jax import auc, interop
from sam_jax.optimizers import (
  ae_sam,
  asam,
  crsam,
  esam,
  evaluation_params,
  friendly_sam,
  gcsam,
  grad_fn_from_loss,
  gsam,
  is_sharpness_aware,
  looksam,
  momentum_sam,
  randomized_sam,
  sam,
  stable_sam,
  update_with_aux,
  wsam,
)

__version__ = "0.1.0"


def __getattr__(name):
  # load_run needs models, orbax and the loop: imported on first use only.
  if name == "load_run":
    from sam_jax.train.inference import load_run
    return load_run
  raise AttributeError(f"module 'sam_jax' has no attribute {name!r}")

__all__ = [
    "ae_sam",
    "asam",
    "auc",
    "crsam",
    "esam",
    "evaluation_params",
    "friendly_sam",
    "gcsam",
    "grad_fn_from_loss",
    "gsam",
    "interop",
    "is_sharpness_aware",
    "load_run",
    "looksam",
    "momentum_sam",
    "randomized_sam",
    "sam",
    "stable_sam",
    "update_with_aux",
    "wsam",
]
