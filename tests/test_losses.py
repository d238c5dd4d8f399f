"""Losses against float64 NumPy references (sigmoid, softmax and regression);
padding, accumulation and 3-D shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import losses, tasks

ALL_LOSSES = {**losses.SEGMENTATION_LOSSES, **losses.REGRESSION_LOSSES}
LOSSES = {name: jax.jit(fn) for name, fn in ALL_LOSSES.items()}


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


def _ref_softmax_dice(logits, labels, smooth=1.0):
    x = logits.astype(np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    t = np.eye(x.shape[-1])[labels[..., 0].astype(int)]
    axes = tuple(range(x.ndim - 1))
    per_class = 1 - (2 * (p * t).sum(axes) + smooth) / (p.sum(axes) + t.sum(axes) + smooth)
    return per_class[1:].mean()


def _ref_softmax_ce(logits, labels):
    x = logits.astype(np.float64)
    log_p = x - x.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    return -np.take_along_axis(log_p, labels.astype(int), axis=-1).mean()


def _ref_focal(logits, targets, gamma=2.0):
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    p_t = np.where(targets > 0.5, p, 1 - p)
    return np.mean(-((1 - p_t) ** gamma) * np.log(p_t))


def _ref_tversky(logits, targets, alpha=0.3, beta=0.7, smooth=1.0):
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    t = targets.astype(np.float64)
    tp, fp, fn = (p * t).sum(), (p * (1 - t)).sum(), ((1 - p) * t).sum()
    return 1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def _softmax64(logits):
    x = logits.astype(np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def _ref_softmax_focal(logits, labels, gamma=2.0):
    p_t = np.take_along_axis(_softmax64(logits), labels.astype(int), axis=-1)
    return np.mean(-((1 - p_t) ** gamma) * np.log(p_t))


def _ref_softmax_tversky(logits, labels, alpha=0.3, beta=0.7, smooth=1.0):
    p = _softmax64(logits)
    t = np.eye(p.shape[-1])[labels[..., 0].astype(int)]
    axes = tuple(range(p.ndim - 1))
    tp, fp, fn = (p * t).sum(axes), (p * (1 - t)).sum(axes), ((1 - p) * t).sum(axes)
    return (1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth))[1:].mean()


def _ref_soft_jaccard(y, t, smooth=1.0):
    y, t = y.astype(np.float64), t.astype(np.float64)
    return 1 - (np.minimum(y, t).sum() + smooth) / (np.maximum(y, t).sum() + smooth)


REFERENCES = {"dice": _ref_dice, "bce": _ref_bce, "ce": _ref_bce,
              "dice_bce": lambda *a: _ref_dice(*a) + _ref_bce(*a),
              "dice_ce": lambda *a: _ref_dice(*a) + _ref_bce(*a),
              "l1": lambda y, t: np.abs(y.astype(np.float64) - t).mean(),
              "l2": lambda y, t: np.square(y.astype(np.float64) - t).mean(),
              "soft_jaccard": _ref_soft_jaccard, "focal": _ref_focal, "tversky": _ref_tversky,
              "dice_focal": lambda *a: _ref_dice(*a) + _ref_focal(*a),
              "dice_tversky": lambda *a: _ref_dice(*a) + _ref_tversky(*a)}
SOFTMAX_REFERENCES = {"dice": _ref_softmax_dice, "ce": _ref_softmax_ce,
                      "dice_ce": lambda *a: _ref_softmax_dice(*a) + _ref_softmax_ce(*a),
                      "focal": _ref_softmax_focal, "tversky": _ref_softmax_tversky,
                      "dice_focal": lambda *a: _ref_softmax_dice(*a) + _ref_softmax_focal(*a),
                      "dice_tversky": lambda *a: _ref_softmax_dice(*a) + _ref_softmax_tversky(*a)}


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("shape", [(4, 8, 8, 1), (2, 6, 6, 4, 1)])
def test_losses_match_numpy_in_2d_and_3d(name, shape):
    logits, targets = _batch(shape)
    loss = LOSSES[name](logits, targets, jnp.ones(shape[0], bool))
    assert loss.shape == ()
    np.testing.assert_allclose(loss, REFERENCES[name](logits, targets), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
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


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_all_invalid_batch_is_finite_and_has_finite_gradient(name):
    logits, targets = _batch()
    loss_fn = ALL_LOSSES[name]
    weights = jnp.zeros(4, bool)
    loss, grad = jax.jit(jax.value_and_grad(loss_fn))(jnp.asarray(logits), targets, weights)
    assert np.isfinite(loss)
    assert np.all(np.isfinite(grad)) and not np.any(grad)


@pytest.mark.parametrize("name", sorted(SOFTMAX_REFERENCES))
@pytest.mark.parametrize("shape", [(4, 8, 8), (2, 6, 6, 4)])
def test_softmax_losses_match_numpy_for_three_classes(name, shape):
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=2.0, size=(*shape, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=(*shape, 1)).astype(np.float32)
    labels[1] = 0  # an example without foreground
    loss = LOSSES[name](logits, labels, jnp.ones(shape[0], bool))
    np.testing.assert_allclose(loss, SOFTMAX_REFERENCES[name](logits, labels), rtol=1e-5)


def test_two_class_softmax_dice_is_the_sigmoid_dice_of_the_logit_difference():
    # softmax([0, z])[1] = sigmoid(z): a 2-channel head reduces to the 1-channel one.
    logits, targets = _batch()
    two = np.concatenate([np.zeros_like(logits), logits], axis=-1)
    np.testing.assert_allclose(LOSSES["dice"](two, targets), LOSSES["dice"](logits, targets), rtol=1e-6)
    np.testing.assert_allclose(LOSSES["ce"](two, targets), LOSSES["ce"](logits, targets), rtol=1e-6)
    for name in ("focal", "tversky"):
        np.testing.assert_allclose(LOSSES[name](two, targets), LOSSES[name](logits, targets), rtol=1e-5)


def test_tversky_with_equal_weights_is_dice_with_twice_the_smoothing():
    logits, targets = _batch()
    np.testing.assert_allclose(losses.tversky_loss(logits, targets, alpha=0.5, beta=0.5, smooth=1.0),
                               losses.dice_loss(logits, targets, smooth=2.0), rtol=1e-6)


def test_focal_loss_weighs_hard_pixels_above_easy_ones():
    # gamma=0 is the cross-entropy; with gamma=2 a confident right pixel counts
    # (1 - p)^2 times as much, a wrong one almost fully.
    logits, targets = _batch()
    np.testing.assert_allclose(losses.focal_loss(logits, targets, gamma=0.0), LOSSES["bce"](logits, targets),
                               rtol=1e-6)
    easy, hard = jnp.full((1, 1, 1, 1), 4.0), jnp.full((1, 1, 1, 1), -4.0)
    one = jnp.ones((1, 1, 1, 1))
    ratio = losses.focal_loss(easy, one) / losses.cross_entropy_loss(easy, one)
    np.testing.assert_allclose(ratio, (1 - jax.nn.sigmoid(4.0)) ** 2, rtol=1e-5)
    assert losses.focal_loss(hard, one) / losses.cross_entropy_loss(hard, one) > 0.96


def test_regression_losses_refuse_shapes_that_would_broadcast():
    with pytest.raises(ValueError, match="set model.out_channels"):
        losses.l1_loss(jnp.zeros((2, 4, 4, 3)), jnp.zeros((2, 4, 4, 1)))


def test_each_task_knows_its_losses():
    assert tasks.make_task("regression").loss("l1") is losses.l1_loss
    with pytest.raises(ValueError, match="loss='dice' is not a regression loss; choose one of l1, l2, soft_jaccard"):
        tasks.make_task("regression").loss("dice")
    with pytest.raises(ValueError, match="loss='l1' is not a segmentation loss; choose one of bce, ce, dice"):
        tasks.make_task("segmentation").loss("l1")
    with pytest.raises(ValueError, match="task='classification'"):
        tasks.make_task("classification")
