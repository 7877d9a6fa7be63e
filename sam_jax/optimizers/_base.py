"""What every sharpness-aware transformation shares: the contract, norms, checks.

The ``grad_fn`` contract
========================
Each transformation in :mod:`sam_jax.optimizers` is an
:class:`optax.GradientTransformationExtraArgs`. Its ``update`` is called as::

    direction, state = tx.update(grads, state, params, grad_fn=grad_fn)

``grads``
    The clean gradient ``g = ∇L(w)`` of the minibatch loss at ``params``.
``params``
    The clean weights ``w``. Required: every method perturbs them.
``grad_fn(params) -> (grads, aux)``  (required keyword)
    Evaluates the gradient of the *same* minibatch loss, with the *same*
    dropout RNG, at other weights. ``aux`` is any pytree the caller wants back
    from that evaluation (the perturbed loss, logits, ...), or ``None``.
    ``grad_fn`` must be pure: CR-SAM calls it under :func:`jax.vmap`.
    :func:`grad_fn_from_loss` builds one from a loss function.
``aux_sink(name, aux)``  (optional keyword)
    Called once per adversarial evaluation, with a name (``"perturbed"`` for
    ``w + ε``, ``"perturbed_minus"`` for CR-SAM's ``w − ε``) and that
    evaluation's ``aux``. :func:`update_with_aux` passes a sink and returns
    what it collected, which is how a train step logs the perturbed loss.
``axis_name``  (optional keyword)
    A mapped device axis (``pmap``, ``shard_map`` or a ``vmap`` with an
    ``axis_name``). With it, ``grads`` and ``grad_fn`` are taken to be
    per-device, the perturbation is built from the local gradient
    (m-sharpness, as in the original SAM code), and the direction returned is
    averaged over the axis, so every device feeds the same direction to the
    base optimizer. For a perturbation synchronized across devices, pass
    averaged gradients and a ``grad_fn`` that averages, and no ``axis_name``:
    the transformation then computes exactly what one device computes on the
    global batch.

``examples``  (optional keyword; methods that select examples, i.e. ESAM)
    An :class:`Examples` bundle over the same minibatch: ``losses_fn(params)``
    returns the per-example losses ``(B,)`` at other weights (a forward pass,
    same batch, same dropout key), ``subset_grad_fn(params, indices)`` the
    gradient (and aux) of the mean loss over the examples ``indices`` (an int
    array of static length), ``losses`` the per-example losses at ``params``
    when the caller's clean pass has them (else ``losses_fn(params)`` is
    called) and ``valid`` which examples are real (``False`` for padding).
    :func:`examples_from_loss` builds one from a per-example loss; the train
    step passes one for losses that are a mean over examples. Methods that do
    not select examples ignore it.

What comes out is a *direction* for the rest of the chain (the base optimizer
turns it into an update), except for decoupled :func:`~sam_jax.wsam`, which
wraps its base optimizer and returns the update itself.

Place the sharpness transformation first in ``optax.chain``: a transformation
before it (weight decay, clipping) changes ``grads`` but not what ``grad_fn``
returns, so the two evaluation points would see different objectives.

Numerics
========
Norms and inner products are accumulated in float32, or in the leaf dtype
when it is wider (float64 under ``jax_enable_x64``): never narrower than
float32 for bfloat16 leaves, never rounded to float32 for float64 ones,
and every division by a norm adds ``eps``: a zero gradient gives a zero
perturbation and a finite direction. A non-finite clean gradient is not
hidden: its global norm is non-finite, so the perturbation, and hence the
direction, is non-finite in *every* leaf; nothing is masked or replaced, and
the first finiteness check downstream (the train step's) reports it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

Params = Any
Grads = Any
Aux = Any
GradFn = Callable[[Params], tuple[Grads, Aux]]
AuxSink = Callable[[str, Aux], None]
ScalarOrSchedule = Union[float, jax.Array, optax.Schedule]
MaskOrFn = Union[Any, Callable[[Params], Any], None]

PERTURBED = "perturbed"
PERTURBED_MINUS = "perturbed_minus"


# ----------------------------------------------------------------------------
# Tree arithmetic in float32, or wider.


def wide_dtype(*dtypes: Any) -> Any:
  """The wider of float32 and ``dtypes`` (float64 leaves stay float64)."""
  return jnp.result_type(jnp.float32, *dtypes)


def wide(x: jax.Array) -> jax.Array:
  """``x`` in :func:`wide_dtype` of its own dtype."""
  return x.astype(wide_dtype(x.dtype))


def global_norm(tree: Any) -> jax.Array:
  """L2 norm of all leaves together, accumulated in float32 (or the widest leaf dtype)."""
  leaves = jax.tree.leaves(tree)
  dtype = wide_dtype(*(x.dtype for x in leaves))
  if not leaves:
    return jnp.zeros([], dtype)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(dtype))) for x in leaves))


def tree_vdot(a: Any, b: Any) -> jax.Array:
  """Inner product ``<a, b>`` over all leaves, accumulated in float32."""
  dtype = wide_dtype(*(x.dtype for x in jax.tree.leaves(a) + jax.tree.leaves(b)))
  products = jax.tree.map(lambda x, y: jnp.sum(x.astype(dtype) * y.astype(dtype)), a, b)
  return sum(jax.tree.leaves(products), jnp.zeros([], dtype))


def tree_combine(*terms: tuple[Any, Any], like: Any) -> Any:
  """``Σ coef_i · tree_i`` computed in float32, cast to the dtypes of ``like``.

  Each term is ``(coef, tree)``; ``coef`` is a scalar or a tree of scalars
  with the structure of ``like``.
  """
  coefs = [c for c, _ in terms]
  trees = [t for _, t in terms]

  def combine(ref, *leaves):
    dtype = wide_dtype(ref.dtype, *(leaf.dtype for leaf in leaves))
    total = jnp.zeros(ref.shape, dtype)
    for coef, leaf in zip(coefs, leaves):
      total = total + jnp.asarray(coef).astype(dtype) * leaf.astype(dtype)
    return total.astype(ref.dtype)

  return jax.tree.map(combine, like, *trees)


def perturb(params: Params, perturbation: Any, sign: float = 1.0) -> Params:
  """``w + sign·ε``, each leaf kept in its parameter dtype."""
  def add(w, e):
    dtype = wide_dtype(w.dtype, e.dtype)
    return (w.astype(dtype) + sign * e.astype(dtype)).astype(w.dtype)

  return jax.tree.map(add, params, perturbation)


def sam_perturbation(
    grads: Grads,
    params: Params,
    rho: jax.Array,
    eps: float,
    adaptive: bool = False,
    normalize: bool = True,
) -> Any:
  """The SAM ascent step ``ε``.

  ``adaptive=False``: ``ε = ρ·g / (‖g‖ + eps)`` (Foret et al.).
  ``adaptive=True``: ``ε = ρ·w²⊙g / (‖|w|⊙g‖ + eps)``, the element-wise form
  of davda54/sam, dlrover WSAM and juntang-zhuang/GSAM (η = 0, every tensor).
  This is *not* the official ASAM; see :func:`sam_jax.asam`.
  ``normalize=False`` drops the division by the norm (USAM): ``ε = ρ·g`` or
  ``ρ·w²⊙g``.
  """
  rho = jnp.asarray(rho)
  if not adaptive:
    scale = rho / (global_norm(grads) + eps) if normalize else rho
    return jax.tree.map(lambda g: wide(g) * scale, grads)
  w_abs = jax.tree.map(lambda w: jnp.abs(wide(w)), params)
  scaled = jax.tree.map(lambda g, a: wide(g) * a, grads, w_abs)
  scale = rho / (global_norm(scaled) + eps) if normalize else rho
  return jax.tree.map(lambda s, a: s * a * scale, scaled, w_abs)


SKIP_MODES = ("auto", "cond", "select")


def check_skip(who: str, skip: str) -> None:
  if skip not in SKIP_MODES:
    raise ValueError(f"{who}: skip must be one of {', '.join(SKIP_MODES)}, got {skip!r}.")


def branch(take: jax.Array, if_true: Callable[[], Any], if_false: Callable[[], Any],
           skip: str) -> Any:
  """``if_true()`` when ``take``, else ``if_false()``: skipped or computed and selected.

  ``skip="cond"``: :func:`jax.lax.cond`, the branch not taken is not computed
  (the point of the cheap variants). ``"select"``: both are computed and the
  result selected, at the cost of both. ``"auto"``: ``cond``, except on CPU
  when the branch holds a convolution: XLA:CPU runs a convolution's gradient
  inside a conditional (or loop) body about 30x slower than outside
  (``benchmarks/cond_conv_cpu.py``)
  (jax-ml/jax#12868: there the weight gradient is not rewritten to the fast
  Eigen form), which made a ResNet step with a rarely taken SAM branch cost
  4-11x SGD's, while a ViT's (dots only) took LookSAM to 1.17x (see
  BUILD_NOTES). The two modes give the same result.

  Under :func:`jax.vmap` with a batched ``take`` (vmapped seeds) ``cond``
  becomes a select too. ``take`` must agree across devices when a branch
  holds a collective.
  """
  if skip == "auto":
    slow = jax.default_backend() == "cpu" and _holds_convolution(if_true)
    skip = "select" if slow else "cond"
  if skip == "cond":
    return jax.lax.cond(take, lambda _: if_true(), lambda _: if_false(), None)
  yes, no = if_true(), if_false()
  return jax.tree.map(lambda a, b: jnp.where(take, a, b), yes, no)


def _holds_convolution(fn: Callable[[], Any]) -> bool:
  """Whether tracing ``fn`` meets a convolution (nested jaxprs included).

  Traced once more at trace time, not compiled. A trace that fails here (an
  unusual ``grad_fn``) counts as holding one: ``select`` is always right.
  """
  try:
    closed = jax.make_jaxpr(fn)()
  except Exception:  # pylint: disable=broad-except
    return True

  def visit(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        return True
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          inner = getattr(sub, "jaxpr", sub)
          if hasattr(inner, "eqns") and visit(inner):
            return True
    return False

  return visit(closed.jaxpr)


def sam_or_clean(
    take: jax.Array,
    grads: Grads,
    params: Params,
    rho: jax.Array,
    eps: float,
    grad_fn: GradFn,
    who: str,
    skip: str = "auto",
    axis_name: Optional[str] = None,
) -> tuple[Grads, jax.Array]:
  """``(direction, taken)``: SAM's ``∇L(w + ε)`` when ``take``, else ``grads``.

  ``take`` first goes through :func:`take_if_nonfinite` (``taken`` is what
  was decided), then through :func:`branch`, so that with ``skip="cond"`` a
  step that does not take SAM does not compute the second forward/backward
  pass; the direction is averaged over ``axis_name``. The aux of ``grad_fn``
  is dropped: it exists on some steps only, and a jitted step's metrics
  need a fixed structure.
  """
  take = take_if_nonfinite(take, grads, axis_name)

  def adversarial():
    perturbation = sam_perturbation(grads, params, rho, eps)
    g_p = evaluate(grad_fn, perturb(params, perturbation), name=PERTURBED, aux_sink=None,
                   who=who)
    return jax.tree.map(lambda a, g: a.astype(g.dtype), g_p, grads)

  direction = branch(take, adversarial, lambda: grads, skip)
  return cross_device_mean(direction, axis_name), take


def take_if_nonfinite(take: jax.Array, grads: Grads, axis_name: Optional[str]) -> jax.Array:
  """``take`` forced on when ``grads`` is not finite, and made equal on every device.

  A non-finite clean gradient then goes through SAM's perturbation, which
  spreads it to every leaf (the documented behaviour: nothing hidden), rather
  than through the clean branch, which would leave one bad leaf among good
  ones. Across devices the decision is the logical or of the devices', so a
  collective inside ``grad_fn`` sees every device take the same branch.
  """
  take = jnp.logical_or(take, ~jnp.isfinite(global_norm(grads)))
  if axis_name is not None:
    take = jax.lax.pmax(take.astype(jnp.int32), axis_name).astype(bool)
  return take


def cross_device_mean(tree: Any, axis_name: Optional[str]) -> Any:
  """Average ``tree`` over ``axis_name``; identity when it is ``None``."""
  if axis_name is None:
    return tree
  return jax.lax.pmean(tree, axis_name)


# ----------------------------------------------------------------------------
# Hyperparameters: schedules and checks.


def value_at(value: ScalarOrSchedule, count: jax.Array) -> jax.Array:
  """A hyperparameter's value at step ``count`` (a float or a schedule)."""
  if callable(value):
    value = value(count)
  # The default float: float32, or float64 under jax_enable_x64 (a Python 0.05
  # rounded to float32 would be off by 1.5e-8 in a float64 computation).
  return jnp.asarray(value, jnp.result_type(float))


def _concrete(value: Any) -> Optional[np.ndarray]:
  """``value`` as a NumPy array, or ``None`` when it is traced."""
  try:
    return np.asarray(value)
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
    return None


def check_hyperparameter(
    name: str,
    value: Any,
    *,
    minimum: Optional[float] = None,
    maximum: Optional[float] = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> None:
  """Raises ``ValueError`` naming ``name`` if ``value`` is out of range.

  A schedule is checked at step 0. Traced values (the factory called by
  ``optax.inject_hyperparams`` inside a jitted update) cannot be checked and
  are let through: they were checked when the state was initialized.
  """
  if value is None:
    return
  what = name
  if callable(value):
    what = f"{name} (a schedule, at step 0)"
    try:
      value = value(0)
    except Exception:  # pylint: disable=broad-except
      return  # A schedule we cannot evaluate eagerly; nothing to check.
  concrete = _concrete(value)
  if concrete is None:
    return
  if concrete.dtype.kind not in "biuf" or concrete.ndim != 0:
    raise ValueError(f"{what} must be a real scalar, got {value!r}.")
  v = float(concrete)
  if not np.isfinite(v):
    raise ValueError(f"{what} must be finite, got {v}.")
  if minimum is not None and (v < minimum or (v == minimum and not min_inclusive)):
    bound = ">=" if min_inclusive else ">"
    raise ValueError(f"{what} must be {bound} {minimum}, got {v}.")
  if maximum is not None and (v > maximum or (v == maximum and not max_inclusive)):
    bound = "<=" if max_inclusive else "<"
    raise ValueError(f"{what} must be {bound} {maximum}, got {v}.")


def check_integer(who: str, name: str, value: Any, minimum: int) -> None:
  """Raises ``ValueError`` unless ``value`` is an integer ``>= minimum``.

  An integer array is accepted (``optax.inject_hyperparams`` passes one); a
  traced one cannot be checked and is let through, as in
  :func:`check_hyperparameter`.
  """
  if isinstance(value, (bool, float)):
    raise ValueError(f"{who}: {name} must be an int, got {value!r}.")
  concrete = _concrete(value)
  if concrete is None:
    return
  if concrete.ndim != 0 or concrete.dtype.kind not in "iu":
    raise ValueError(f"{who}: {name} must be an int, got {value!r}.")
  if int(concrete) < minimum:
    raise ValueError(f"{who}: {name} must be >= {minimum}, got {int(concrete)}.")


def concrete_float(value: Any) -> Optional[float]:
  """``float(value)`` for a concrete scalar; ``None`` for schedules/tracers."""
  if value is None or callable(value):
    return None
  concrete = _concrete(value)
  return None if concrete is None else float(concrete)


# ----------------------------------------------------------------------------
# Calling grad_fn.


def _split_output(output: Any, who: str) -> tuple[Grads, Aux]:
  if not (isinstance(output, tuple) and len(output) == 2):
    raise TypeError(
        f"{who}: grad_fn(params) must return a pair (grads, aux); got "
        f"{type(output).__name__}. Return (grads, None) when there is no aux, "
        "or build grad_fn with sam_jax.optimizers.grad_fn_from_loss."
    )
  return output


def require_grad_fn(grad_fn: Optional[GradFn], params: Params, who: str) -> GradFn:
  """Checks the extra arguments every sharpness transformation needs."""
  if grad_fn is None:
    raise ValueError(
        f"{who}.update needs the keyword argument grad_fn: a function "
        "params -> (grads, aux) that evaluates the gradient of the same "
        "minibatch loss at other parameters (see sam_jax.optimizers)."
    )
  if params is None:
    raise ValueError(f"{who}.update needs params (the clean weights).")
  return grad_fn


def evaluate(
    grad_fn: GradFn,
    params: Params,
    *,
    name: str,
    aux_sink: Optional[AuxSink],
    who: str,
) -> Grads:
  """``grad_fn(params)``; hands its aux to ``aux_sink`` under ``name``."""
  grads, aux = _split_output(grad_fn(params), who)
  if aux_sink is not None:
    aux_sink(name, aux)
  return grads


def evaluate_batched(
    grad_fn: GradFn,
    stacked_params: Params,
    *,
    names: tuple[str, ...],
    aux_sink: Optional[AuxSink],
    who: str,
) -> Grads:
  """Evaluates ``grad_fn`` at several points in one ``jax.vmap`` call.

  ``stacked_params`` carries the points along a new leading axis, in the order
  of ``names``; the gradients come back stacked the same way.
  """
  grads, aux = jax.vmap(lambda p: _split_output(grad_fn(p), who))(stacked_params)
  if aux_sink is not None:
    for i, name in enumerate(names):
      aux_sink(name, jax.tree.map(lambda x, i=i: x[i], aux))
  return grads


def grad_fn_from_loss(
    loss_fn: Callable[..., Any], *args: Any, has_aux: bool = False, **kwargs: Any
) -> GradFn:
  """A ``grad_fn`` for ``loss_fn(params, *args, **kwargs)``.

  Its aux is ``{"loss": value}``, plus ``{"aux": aux}`` when ``has_aux`` (then
  ``loss_fn`` returns ``(value, aux)``, as for ``jax.value_and_grad``).
  """

  def grad_fn(params):
    if has_aux:
      (value, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, *args, **kwargs
      )
      return grads, {"loss": value, "aux": aux}
    value, grads = jax.value_and_grad(loss_fn)(params, *args, **kwargs)
    return grads, {"loss": value}

  return grad_fn


class Examples(NamedTuple):
  """The minibatch example by example, for methods that select examples (``examples``)."""

  losses_fn: Callable[[Params], jax.Array]
  subset_grad_fn: Callable[[Params, jax.Array], tuple[Grads, Aux]]
  losses: Optional[jax.Array] = None
  valid: Optional[jax.Array] = None


def examples_from_loss(
    example_loss_fn: Callable[..., jax.Array], *batch: Any, valid: Optional[jax.Array] = None
) -> Examples:
  """An :class:`Examples` for ``example_loss_fn(params, *batch) -> (B,)``.

  Each array of ``batch`` has the examples on its leading axis; a subset's
  loss is the mean over its ``valid`` examples (all, when ``valid`` is
  ``None``), and its aux is ``{"loss": value}`` as in
  :func:`grad_fn_from_loss`.
  """

  def losses_fn(params):
    return example_loss_fn(params, *batch)

  def subset_grad_fn(params, indices):
    part = [jnp.take(b, indices, axis=0) for b in batch]
    weights = None if valid is None else jnp.take(valid, indices, axis=0)

    def mean_loss(p):
      losses = example_loss_fn(p, *part)
      if weights is None:
        return jnp.mean(losses)
      w = weights.astype(losses.dtype)
      return jnp.sum(losses * w) / jnp.maximum(jnp.sum(w), 1.0)

    value, grads = jax.value_and_grad(mean_loss)(params)
    return grads, {"loss": value}

  return Examples(losses_fn, subset_grad_fn, valid=valid)


def update_with_aux(
    tx: optax.GradientTransformationExtraArgs,
    grads: Grads,
    state: optax.OptState,
    params: Params,
    *,
    grad_fn: GradFn,
    **extra_args: Any,
) -> tuple[Any, optax.OptState, dict[str, Aux]]:
  """``tx.update`` that also returns the aux of every adversarial evaluation.

  Returns ``(updates, state, aux)`` where ``aux`` maps evaluation names
  (``"perturbed"``, ``"perturbed_minus"``) to what ``grad_fn`` returned there.
  It is empty for a chain without a sharpness-aware transformation. A name
  seen twice (two sharpness transformations in one chain) gets a suffix
  ``_1``, ``_2``, ...
  """
  check_composition(state)
  collected: dict[str, Aux] = {}

  def sink(name: str, aux: Aux) -> None:
    key, i = name, 0
    while key in collected:
      i += 1
      key = f"{name}_{i}"
    collected[key] = aux

  updates, state = tx.update(
      grads, state, params, grad_fn=grad_fn, aux_sink=sink, **extra_args
  )
  return updates, state, collected


# ----------------------------------------------------------------------------
# Which states belong to sharpness-aware transformations.

_SHARPNESS_STATE_TYPES: list[type] = []


def sharpness_state(cls: type) -> type:
  """Class decorator: marks a state type as a sharpness-aware one."""
  _SHARPNESS_STATE_TYPES.append(cls)
  return cls


def _is_sharpness_state(x: Any) -> bool:
  return isinstance(x, tuple(_SHARPNESS_STATE_TYPES))


def is_sharpness_aware(opt_state: optax.OptState) -> bool:
  """Whether an optimizer state holds the state of a sharpness transformation.

  A train step uses this to decide who averages gradients across devices: a
  sharpness transformation averages its own direction (see ``axis_name``); a
  plain optax chain needs averaged gradients.
  """
  found = []

  def visit(x):
    if _is_sharpness_state(x):
      found.append(x)
      return True
    return False

  jax.tree.leaves(opt_state, is_leaf=visit)
  return bool(found)


def check_composition(opt_state: optax.OptState) -> None:
  """Refuses a sharpness transformation inside ``optax.MultiSteps`` or
  ``optax.apply_if_finite``, where it would be silently wrong.

  ``MultiSteps`` calls its inner update at every micro-step with the running
  mean of the gradients, so a sharpness method inside it perturbs with that
  mean, evaluates ``grad_fn`` on the current micro-batch only, and emits the
  last micro-batch's adversarial gradient. ``apply_if_finite`` checks the
  clean gradient only, so a non-finite gradient at the perturbed point goes
  through. Both work around the *rest* of the chain: the sharpness
  transformation first, then ``MultiSteps(base, k)`` (each micro-batch is
  perturbed with its own gradient, as m-sharpness is) or
  ``apply_if_finite(base, n)`` (which then checks the adversarial direction).
  Called by :func:`update_with_aux` (and so by the train step); a check of
  the state's structure, free at run time.
  """
  wrappers = (optax.MultiStepsState, optax.ApplyIfFiniteState)

  def visit(x):
    if isinstance(x, wrappers) and is_sharpness_aware(
        x.inner_opt_state if isinstance(x, optax.MultiStepsState) else x.inner_state):
      name = "MultiSteps" if isinstance(x, optax.MultiStepsState) else "apply_if_finite"
      inner = "MultiSteps(base_optimizer, k)" if name == "MultiSteps" else \
          "apply_if_finite(base_optimizer, n)"
      why = ("feeds it accumulated gradients and keeps one micro-batch" if name == "MultiSteps"
             else "checks only the clean gradient")
      raise ValueError(
          f"a sharpness transformation inside optax.{name} is silently wrong ({name} {why}); "
          f"put it first and wrap the rest: optax.chain(sam_jax.sam(rho), optax.{inner}).")
    return isinstance(x, wrappers)

  jax.tree.leaves(opt_state, is_leaf=visit)


def zero_count() -> jax.Array:
  """The initial step counter of every transformation's state."""
  return jnp.zeros([], jnp.int32)


# ----------------------------------------------------------------------------
# Masks: which leaves are "weights" in the sense of a method.


def leaf_name(path: tuple[Any, ...]) -> Optional[str]:
  """The last named key on a pytree path (dict key or attribute), if any."""
  for entry in reversed(path):
    if isinstance(entry, jax.tree_util.DictKey):
      return str(entry.key)
    if isinstance(entry, jax.tree_util.GetAttrKey):
      return entry.name
  return None


def resolve_mask(
    mask: MaskOrFn,
    params: Params,
    default: Callable[[tuple[Any, ...], jax.Array], bool],
    who: str = "",
    selects: str = "",
) -> Any:
  """A pytree of Python bools with the structure of ``params``.

  The default mask picks leaves by their Flax names; when it picks none (a
  tree named otherwise, e.g. ``{"w1": ..., "w2": ...}``) the method would
  silently be plain SAM, so that is an error naming the leaves. An explicit
  ``mask`` is taken as given, even when it selects nothing.
  """
  if mask is None:
    resolved = jax.tree_util.tree_map_with_path(default, params)
    if who and not any(jax.tree.leaves(resolved)):
      names = [jax.tree_util.keystr(path) for path, _ in
               jax.tree_util.tree_flatten_with_path(params)[0]]
      shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
      raise ValueError(
          f"{who}: its default mask selects {selects} by their Flax names, and none of the "
          f"leaves {shown} is one, so {who} would be plain SAM. Pass mask= (a pytree of bools "
          "like params, or a function of params returning one) to say which leaves to use.")
    return resolved
  if callable(mask):
    mask = mask(params)
  return jax.tree.map(bool, mask)
