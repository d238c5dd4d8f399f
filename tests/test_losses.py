"""Losses against float64 NumPy references; padding, accumulation and 3-D shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import losses

LOSSES = {name: jax.jit(fn) for name, fn in losses.LOSSES.items()}


def _batch(shape=(4, 8, 8, 1), seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=shape).astype(np.float32)
    targets = (rng.random(shape) > 0.7).astype(np.float32)
    targets[1] = 0.0  # an empty mask
    return logits, targets


def _ref_dice(logits, targets, smooth=1.0):
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    t = targets.astype(np.float64)
    return 1.0 - (2.0 * (p * t).sum() + smooth) / (p.sum() + t.sum() + smooth)


def _ref_bce(logits, targets):
    x, t = logits.astype(np.float64), targets.astype(np.float64)
    return np.mean(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x))))


REFERENCES = {"dice": _ref_dice, "bce": _ref_bce,
              "dice_bce": lambda *a: _ref_dice(*a) + _ref_bce(*a)}


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
@pytest.mark.parametrize("shape", [(4, 8, 8, 1), (2, 6, 6, 4, 1)])
def test_losses_match_numpy_in_2d_and_3d(name, shape):
    logits, targets = _batch(shape)
    loss = LOSSES[name](logits, targets, jnp.ones(shape[0], bool))
    assert loss.shape == ()
    np.testing.assert_allclose(loss, REFERENCES[name](logits, targets), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
@pytest.mark.parametrize("valid", [[True, True, True, False], [1.0, 0.0, 1.0, 0.0]])
def test_weights_drop_padded_examples(name, valid):
    logits, targets = _batch()
    keep = np.asarray(valid, bool)
    loss = LOSSES[name]
    padded = loss(logits, targets, jnp.asarray(valid))
    np.testing.assert_allclose(padded, loss(logits[keep], targets[keep]), rtol=1e-6)
    assert abs(float(padded) - float(loss(logits, targets))) > 1e-4


def test_bce_micro_batch_mean_equals_full_batch():
    logits, targets = _batch(shape=(6, 8, 8, 1))
    micro = [LOSSES["bce"](l, t) for l, t in zip(np.split(logits, 3), np.split(targets, 3))]
    np.testing.assert_allclose(np.mean(micro), LOSSES["bce"](logits, targets), rtol=1e-6)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_all_invalid_batch_is_finite_and_has_finite_gradient(name):
    logits, targets = _batch()
    loss_fn = losses.get_loss(name)
    weights = jnp.zeros(4, bool)
    loss, grad = jax.jit(jax.value_and_grad(loss_fn))(jnp.asarray(logits), targets, weights)
    assert np.isfinite(loss)
    assert np.all(np.isfinite(grad)) and not np.any(grad)


def test_unknown_loss_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown loss 'focal'; valid names: bce, dice, dice_bce"):
        losses.get_loss("focal")
