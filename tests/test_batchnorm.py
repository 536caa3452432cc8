"""BatchNorm re-estimation recovers the batch statistics whatever the module's momentum."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxquant.train.batchnorm import reestimate_batch_stats


class TwoNorms(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="first")(x)
        x = nn.Dense(3, name="dense")(x)
        return nn.BatchNorm(use_running_average=not train, momentum=0.5, name="second")(x)


def test_running_statistics_become_the_statistics_of_the_images():
    model = TwoNorms()
    x = jax.random.normal(jax.random.PRNGKey(0), (512, 4)) * jnp.array([1.0, 2.0, 0.5, 3.0]) + 7.0
    variables = model.init(jax.random.PRNGKey(1), x[:2], train=False)
    stale = jax.tree_util.tree_map(lambda v: v + 5.0, variables["batch_stats"])
    model_state = {"batch_stats": stale, "other": {"kept": 1}}
    state = reestimate_batch_stats(model, variables["params"], model_state, x)
    first = state["batch_stats"]["first"]
    np.testing.assert_allclose(first["mean"], np.mean(x, axis=0), rtol=1e-5)
    np.testing.assert_allclose(first["var"], np.var(x, axis=0), rtol=1e-4)
    # the second norm sees the dense output of the batch-normalised input (training mode)
    normalised = (x - np.mean(x, axis=0)) / np.sqrt(np.var(x, axis=0) + 1e-5)
    dense = variables["params"]["dense"]
    hidden = normalised @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    np.testing.assert_allclose(state["batch_stats"]["second"]["mean"], hidden.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state["batch_stats"]["second"]["var"], hidden.var(0), rtol=1e-3)
    assert state["other"] == {"kept": 1}


def test_eval_mode_with_reestimated_statistics_matches_training_mode_on_the_same_images():
    model = TwoNorms()
    x = jax.random.uniform(jax.random.PRNGKey(2), (256, 4)) * 4.0
    variables = model.init(jax.random.PRNGKey(3), x[:2], train=False)
    state = reestimate_batch_stats(model, variables["params"], {"batch_stats": variables["batch_stats"]}, x)
    train_out, _ = model.apply({**variables}, x, train=True, mutable=["batch_stats"])
    eval_out = model.apply({"params": variables["params"], **state}, x, train=False)
    np.testing.assert_allclose(eval_out, train_out, rtol=1e-4, atol=1e-4)
