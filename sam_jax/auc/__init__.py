"""Deep AUC maximization: AUC objectives and their optimizers, after LibAUC.

Objectives are pure functions over scores in ``[0, 1]`` (the sigmoid of a
logit) and labels; those with per-example state take dataset indices and
return ``(loss, new_state)``. Optimizers are Optax transformations that
compose with the sharpness methods::

    tx = optax.chain(sam_jax.sam(0.05), sam_jax.auc.pesg(0.1, momentum=0.9,
                                                        momentum_convention="libauc"))

Where LibAUC's code and its documented formula disagree, the documented
formula is the default and the code's behaviour an option (each docstring
says which).
"""

from sam_jax.auc._dam import DAMState, dual_mask
from sam_jax.auc.ap import APState, ap_loss, ap_state
from sam_jax.auc.aucm import aucm_loss, aucm_variables
from sam_jax.auc.imbalance import balanced_class_weights, focal_loss, weighted_cross_entropy
from sam_jax.auc.pauc import (
    TwoWayKLState,
    pauc_cvar_loss,
    pauc_cvar_state,
    pauc_kl_loss,
    pauc_kl_state,
    tpauc_kl_loss,
    tpauc_kl_state,
)
from sam_jax.auc.pesg import pesg
from sam_jax.auc.soap import soap
from sam_jax.auc.sopa import sopa
from sam_jax.auc.sopa_s import sopa_s
from sam_jax.auc.surrogates import SURROGATES, get_surrogate

__all__ = [
    "APState", "DAMState", "SURROGATES", "TwoWayKLState", "ap_loss", "ap_state", "aucm_loss",
    "aucm_variables", "balanced_class_weights", "dual_mask", "focal_loss", "get_surrogate",
    "pauc_cvar_loss", "pauc_cvar_state", "pauc_kl_loss", "pauc_kl_state", "pesg", "soap",
    "sopa", "sopa_s", "tpauc_kl_loss", "tpauc_kl_state", "weighted_cross_entropy",
]
