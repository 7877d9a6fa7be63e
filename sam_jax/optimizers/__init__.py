"""Sharpness-aware optimizers as Optax transformations.

Every factory returns an :class:`optax.GradientTransformationExtraArgs`
whose ``update(grads, state, params, *, grad_fn)`` takes the clean gradient
and a function that evaluates gradients of the same minibatch at other
weights, and returns the direction the rest of the chain should see::

    tx = optax.chain(sam_jax.sam(rho=0.05),
                     optax.add_decayed_weights(5e-4),
                     optax.sgd(0.1, momentum=0.9))
    updates, state = tx.update(grads, state, params, grad_fn=grad_fn)

The full contract (``grad_fn``'s aux, ``aux_sink``, ``axis_name``, ``examples``, numerics)
is in :mod:`sam_jax.optimizers._base`.
"""

from sam_jax.optimizers._base import (
    Examples,
    GradFn,
    check_composition,
    examples_from_loss,
    global_norm,
    grad_fn_from_loss,
    is_sharpness_aware,
    sharpness_state,
    update_with_aux,
)
from sam_jax.optimizers.ae_sam import AESAMState, ae_sam
from sam_jax.optimizers.asam import ASAMState, asam
from sam_jax.optimizers.crsam import CRSAMState, crsam
from sam_jax.optimizers.esam import ESAMState, esam, selects_examples
from sam_jax.optimizers.friendly_sam import FriendlySAMState, friendly_sam
from sam_jax.optimizers.gcsam import GCSAMState, gcsam
from sam_jax.optimizers.gsam import GSAMState, gsam
from sam_jax.optimizers.looksam import LookSAMState, looksam
from sam_jax.optimizers.momentum_sam import MomentumSAMState, evaluation_params, momentum_sam
from sam_jax.optimizers.randomized_sam import RandomizedSAMState, randomized_sam
from sam_jax.optimizers.sam import SAMState, sam
from sam_jax.optimizers.stable_sam import StableSAMState, stable_sam
from sam_jax.optimizers.wsam import WSAMState, wsam

__all__ = [
    "AESAMState",
    "ASAMState",
    "CRSAMState",
    "ESAMState",
    "Examples",
    "FriendlySAMState",
    "GCSAMState",
    "GSAMState",
    "GradFn",
    "LookSAMState",
    "MomentumSAMState",
    "RandomizedSAMState",
    "SAMState",
    "StableSAMState",
    "WSAMState",
    "ae_sam",
    "asam",
    "crsam",
    "esam",
    "evaluation_params",
    "examples_from_loss",
    "friendly_sam",
    "gcsam",
    "global_norm",
    "grad_fn_from_loss",
    "gsam",
    "is_sharpness_aware",
    "looksam",
    "momentum_sam",
    "randomized_sam",
    "sam",
    "selects_examples",
    "sharpness_state",
    "stable_sam",
    "check_composition",
    "update_with_aux",
    "wsam",
]
