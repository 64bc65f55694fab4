"""Schedules outside Keras: a JAX/optax training loop pruned by tfprune.

The whole step, schedule and mask update included, is one `jax.jit` function:
`schedule(step)` traces, and the mask is chosen with `jnp.where`, not a Python
branch. Run with the JAX backend so the schedule returns JAX arrays:

    KERAS_BACKEND=jax python examples/jax_optax_loop.py
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import tfprune  # noqa: E402
from tfprune import masking  # noqa: E402


def init(key):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (32, 64)) * 0.2,
        "b1": jnp.zeros(64),
        "w2": jax.random.normal(k2, (64, 1)) * 0.2,
        "b2": jnp.zeros(1),
    }


def forward(params, x):
    return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def main(steps=200, seed=0):
    key = jax.random.PRNGKey(seed)
    x = jax.random.normal(key, (512, 32))
    y = (x[:, :4].sum(axis=1, keepdims=True) > 0).astype("float32")
    params = init(jax.random.PRNGKey(seed + 1))
    pruned = ("w1", "w2")
    masks = {name: jnp.ones_like(params[name], dtype=bool) for name in pruned}
    schedule = tfprune.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=150, frequency=10)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)

    def loss_fn(params, masks, xb, yb):
        masked = {k: (v * masks[k] if k in masks else v) for k, v in params.items()}
        return optax.sigmoid_binary_cross_entropy(forward(masked, xb), yb).mean()

    @jax.jit
    def train_step(params, opt_state, masks, step, batch):
        should_prune, sparsity = schedule(step)
        new_masks = {}
        for name in pruned:
            recomputed = masking.Unstructured()(jnp.abs(params[name] * masks[name]), sparsity)[0]
            new_masks[name] = jnp.where(should_prune, recomputed, masks[name])
        grads = jax.grad(loss_fn)(params, new_masks, x[batch], y[batch])
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        params = {k: (v * new_masks[k] if k in new_masks else v) for k, v in params.items()}
        return params, opt_state, new_masks

    for step in range(1, steps + 1):
        batch = jax.random.randint(jax.random.fold_in(key, step), (64,), 0, 512)
        params, opt_state, masks = train_step(params, opt_state, masks, step, batch)

    accuracy = float(((forward(params, x) > 0) == (y > 0)).mean())
    sparsities = [float((params[name] == 0).mean()) for name in pruned]
    print(f"accuracy {accuracy:.3f}, sparsity per layer {[round(s, 4) for s in sparsities]}")
    return accuracy, sparsities


if __name__ == "__main__":
    main()
