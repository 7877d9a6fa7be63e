"""The README recipes for your own Flax code: NNX with nnx.Optimizer, Linen with TrainState."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import sam_jax

RHO, LR = 0.05, 0.1


def batch():
  x = jax.random.normal(jax.random.key(1), (32, 8))
  return x, (x[:, 0] > 0).astype(jnp.int32)


def test_nnx_recipe_perturbs_with_the_clean_statistics_and_keeps_them():
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.dense = nnx.Linear(8, 16, rngs=rngs)
      self.bn = nnx.BatchNorm(16, rngs=rngs)
      self.head = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x):
      return self.head(jax.nn.relu(self.bn(self.dense(x))))

  def loss_fn(model, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

  x, y = batch()
  model = Net(nnx.Rngs(0))
  before = nnx.clone(model)
  optimizer = nnx.Optimizer(model, optax.chain(sam_jax.sam(RHO), optax.sgd(LR)), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer, x, y):
    grad_fn = sam_jax.interop.nnx_grad_fn(model, loss_fn, x, y)
    loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads, grad_fn=grad_fn)
    return loss

  train_step(model, optimizer, x, y)

  # Independently: the clean gradient and statistics on one copy, the gradient at
  # w + eps on another copy that starts from the old statistics.
  clean = nnx.clone(before)
  g = nnx.grad(loss_fn)(clean, x, y)
  g_norm = optax.tree.norm(nnx.state(g, nnx.Param))
  perturbed = nnx.clone(before)
  nnx.update(perturbed, jax.tree.map(lambda w, gi: w + RHO * gi / g_norm,
                                     nnx.state(before, nnx.Param), nnx.state(g, nnx.Param)))
  g_p = nnx.state(nnx.grad(loss_fn)(perturbed, x, y), nnx.Param)
  want = jax.tree.map(lambda w, gp: w - LR * gp, nnx.state(before, nnx.Param), g_p)
  for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # BatchNorm moved once, by the clean pass.
  np.testing.assert_allclose(model.bn.mean[...], clean.bn.mean[...], rtol=1e-6)
  np.testing.assert_allclose(model.bn.var[...], clean.bn.var[...], rtol=1e-6)


def test_linen_train_state_recipe():
  import flax.linen as nn
  from flax.training import train_state

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      x = nn.BatchNorm(use_running_average=not train)(nn.Dense(16)(x))
      return nn.Dense(2)(nn.relu(x))

  class State(train_state.TrainState):
    batch_stats: dict

  x, y = batch()
  model = Net()
  variables = model.init(jax.random.key(0), x[:1], train=False)
  state = State.create(apply_fn=model.apply, params=variables["params"],
                       batch_stats=variables["batch_stats"],
                       tx=optax.chain(sam_jax.sam(RHO), optax.sgd(LR)))

  def loss_fn(params, batch_stats):
    logits, updated = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                  mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updated

  @jax.jit
  def train_step(state):
    (loss, updated), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params,
                                                                       state.batch_stats)
    grad_fn = sam_jax.grad_fn_from_loss(lambda p: loss_fn(p, state.batch_stats)[0])
    state, aux = sam_jax.interop.apply_gradients(state, grads=grads, grad_fn=grad_fn,
                                                 batch_stats=updated["batch_stats"])
    return state, loss, aux["perturbed"]["loss"]

  new, loss, perturbed_loss = train_step(state)
  assert float(perturbed_loss) > float(loss) and int(new.step) == 1
  g = jax.grad(lambda p: loss_fn(p, state.batch_stats)[0])(state.params)
  eps = jax.tree.map(lambda gi: RHO * gi / optax.tree.norm(g), g)
  g_p = jax.grad(lambda p: loss_fn(p, state.batch_stats)[0])(
      jax.tree.map(jnp.add, state.params, eps))
  for a, b in zip(jax.tree.leaves(new.params),
                  jax.tree.leaves(jax.tree.map(lambda w, gp: w - LR * gp, state.params, g_p))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  clean_stats = loss_fn(state.params, state.batch_stats)[1]["batch_stats"]
  for a, b in zip(jax.tree.leaves(new.batch_stats), jax.tree.leaves(clean_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-6)
