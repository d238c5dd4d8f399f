"""Losses for the three heads, in pure jax.numpy: Dice, cross-entropy, focal,
Tversky and their sums for segmentation; l1, l2 and the soft Jaccard for regression.

Segmentation: one output channel is a sigmoid (binary), C > 1 channels a
softmax over C classes; targets are labels [B, *spatial, 1] (0/1, or 0..C-1).
Regression: the raw outputs are compared with float targets of the same shape.

Every loss works for any number of spatial dimensions and takes an optional
per-example validity `weights` [B], so the padding examples that fill the last
evaluation batch contribute nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

# (outputs [B, *spatial, C], targets [B, *spatial, 1 or C], weights [B] or None) -> scalar
LossFn = Callable[..., jnp.ndarray]


def _broadcast_weights(weights: jnp.ndarray | None, x: jnp.ndarray) -> jnp.ndarray:
    """Per-example weights [B] as [B, 1, ..., 1] (ones when None)."""
    if weights is None:
        return jnp.ones((x.shape[0],) + (1,) * (x.ndim - 1), jnp.float32)
    return jnp.asarray(weights, jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))


def _pixel_mean(per_pixel: jnp.ndarray, weights: jnp.ndarray | None) -> jnp.ndarray:
    """Mean over the elements of valid examples; 0 for an all-invalid batch.

    A per-element mean, so averaging it over k micro-batches with the same
    number of valid examples equals the loss of the full batch (gradient
    accumulation is exact)."""
    w = _broadcast_weights(weights, per_pixel)
    count = jnp.sum(w) * (per_pixel.size // per_pixel.shape[0])
    return jnp.sum(w * per_pixel) / jnp.maximum(count, 1.0)


def one_hot_targets(targets: jnp.ndarray, num_channels: int) -> jnp.ndarray:
    """Labels [B, *spatial, 1] as float targets with `num_channels` channels: the
    0/1 mask itself for one channel, one-hot over the classes otherwise."""
    if num_channels == 1:
        return targets.astype(jnp.float32)
    return jax.nn.one_hot(targets[..., 0].astype(jnp.int32), num_channels, dtype=jnp.float32)


def probabilities(logits: jnp.ndarray) -> jnp.ndarray:
    """Class probabilities [..., C]: the sigmoid of one channel, else the softmax."""
    return jax.nn.sigmoid(logits) if logits.shape[-1] == 1 else jax.nn.softmax(logits, axis=-1)


def dice_loss(logits: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray | None = None,
              smooth: float = 1.0) -> jnp.ndarray:
    """Soft Dice loss over the whole batch at once.

    `1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)`, the sums running
    over every pixel of every valid example (not a mean of per-example Dice),
    as in the reference PyTorch training step. One channel: p = sigmoid(logits).
    C channels: p = softmax(logits), and the loss is the mean of the per-class
    losses of the foreground classes 1..C-1.

    A ratio of batch sums, not a per-pixel mean: with gradient accumulation the
    mean of the micro-batches' Dice losses differs from the whole batch's (for
    `cross_entropy_loss` the two are equal).
    """
    intersection, pred_sum, target_sum = _soft_counts(logits, targets, weights)
    return _foreground_mean(1.0 - (2.0 * intersection + smooth) / (pred_sum + target_sum + smooth))


def _soft_counts(logits: jnp.ndarray, targets: jnp.ndarray,
                 weights: jnp.ndarray | None) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Per class [C], over every pixel of the valid examples: sum(p t), sum(p)
    and sum(t), p the probabilities (in float32 whatever the model's compute
    dtype) and t the one-hot targets."""
    probs = probabilities(logits.astype(jnp.float32))
    onehot = one_hot_targets(targets, probs.shape[-1])
    w = _broadcast_weights(weights, probs)
    axes = tuple(range(probs.ndim - 1))
    return jnp.sum(w * probs * onehot, axis=axes), jnp.sum(w * probs, axis=axes), jnp.sum(w * onehot, axis=axes)


def _foreground_mean(per_class: jnp.ndarray) -> jnp.ndarray:
    """A one-channel head's only value, else the mean over classes 1..C-1."""
    return per_class[0] if per_class.shape[0] == 1 else jnp.mean(per_class[1:])


def cross_entropy_loss(logits: jnp.ndarray, targets: jnp.ndarray,
                       weights: jnp.ndarray | None = None) -> jnp.ndarray:
    """Cross-entropy from logits, mean over the pixels of valid examples: binary
    (sigmoid) for one channel, categorical (softmax) for C channels."""
    logits = logits.astype(jnp.float32)
    if logits.shape[-1] == 1:
        per_pixel = optax.sigmoid_binary_cross_entropy(logits, targets.astype(jnp.float32))
    else:
        per_pixel = optax.softmax_cross_entropy_with_integer_labels(logits, targets[..., 0].astype(jnp.int32))
    return _pixel_mean(per_pixel, weights)


def focal_loss(logits: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray | None = None,
               gamma: float = 2.0) -> jnp.ndarray:
    """Focal loss (Lin et al. 2017), mean over the pixels of valid examples:
    `-(1 - p_t)^gamma log p_t`, p_t the probability of the true class (sigmoid
    for one channel, softmax for C), so confidently right pixels count little
    and the rare, hard ones (small lesions, lung under pathology) count more.
    A per-pixel mean, so gradient accumulation is exact."""
    logits = logits.astype(jnp.float32)
    if logits.shape[-1] == 1:
        t = targets.astype(jnp.float32)
        # log p_t = log sigmoid(x) for t = 1 and log sigmoid(-x) for t = 0 (any t in [0, 1] blends them).
        log_p = t * jax.nn.log_sigmoid(logits) + (1 - t) * jax.nn.log_sigmoid(-logits)
    else:
        log_p = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), targets.astype(jnp.int32), axis=-1)
    return _pixel_mean(-((1.0 - jnp.exp(log_p)) ** gamma) * log_p, weights)


def tversky_loss(logits: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray | None = None,
                 alpha: float = 0.3, beta: float = 0.7, smooth: float = 1.0) -> jnp.ndarray:
    """Tversky loss (Salehi et al. 2017) over the whole batch at once:
    `1 - (TP + smooth) / (TP + alpha FP + beta FN + smooth)` with soft counts,
    the mean over the foreground classes as `dice_loss`. beta > alpha weighs
    missed foreground above false alarms (recall over precision);
    alpha = beta = 0.5 is `dice_loss` with twice the smoothing."""
    tp, pred_sum, target_sum = _soft_counts(logits, targets, weights)
    fp, fn = pred_sum - tp, target_sum - tp
    return _foreground_mean(1.0 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth))


def dice_ce_loss(logits: jnp.ndarray, targets: jnp.ndarray,
                 weights: jnp.ndarray | None = None) -> jnp.ndarray:
    """`dice_loss + cross_entropy_loss`."""
    return dice_loss(logits, targets, weights) + cross_entropy_loss(logits, targets, weights)


def dice_focal_loss(logits: jnp.ndarray, targets: jnp.ndarray,
                    weights: jnp.ndarray | None = None) -> jnp.ndarray:
    """`dice_loss + focal_loss`."""
    return dice_loss(logits, targets, weights) + focal_loss(logits, targets, weights)


def dice_tversky_loss(logits: jnp.ndarray, targets: jnp.ndarray,
                      weights: jnp.ndarray | None = None) -> jnp.ndarray:
    """`dice_loss + tversky_loss`."""
    return dice_loss(logits, targets, weights) + tversky_loss(logits, targets, weights)


def regression_pair(outputs: jnp.ndarray, targets: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Outputs and targets as float32, refusing shapes that would broadcast."""
    if outputs.shape != targets.shape:
        raise ValueError(f"regression outputs {outputs.shape} and targets {targets.shape} differ in shape; "
                         "set model.out_channels to the targets' channel count")
    return outputs.astype(jnp.float32), targets.astype(jnp.float32)


def l1_loss(outputs: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray | None = None) -> jnp.ndarray:
    """Mean absolute error over the elements of valid examples (regression)."""
    y, t = regression_pair(outputs, targets)
    return _pixel_mean(jnp.abs(y - t), weights)


def l2_loss(outputs: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray | None = None) -> jnp.ndarray:
    """Mean squared error over the elements of valid examples (regression)."""
    y, t = regression_pair(outputs, targets)
    return _pixel_mean(jnp.square(y - t), weights)


def soft_jaccard_loss(outputs: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray | None = None,
                      smooth: float = 1.0) -> jnp.ndarray:
    """`1 - (sum(min(y, t)) + smooth) / (sum(max(y, t)) + smooth)` over the whole
    batch: the grey-level Jaccard of document 000 as a loss, for non-negative
    targets (regression). Outputs are used as they are, so a negative output
    lowers the overlap and is pushed up."""
    y, t = regression_pair(outputs, targets)
    w = _broadcast_weights(weights, y)
    return 1.0 - (jnp.sum(w * jnp.minimum(y, t)) + smooth) / (jnp.sum(w * jnp.maximum(y, t)) + smooth)


SEGMENTATION_LOSSES: dict[str, LossFn] = {
    "dice": dice_loss,
    # "bce" and "ce" name one loss, as do "dice_bce" and "dice_ce": the channel
    # count chooses sigmoid or softmax.
    "bce": cross_entropy_loss,
    "ce": cross_entropy_loss,
    "dice_bce": dice_ce_loss,
    "dice_ce": dice_ce_loss,
    "focal": focal_loss,
    "tversky": tversky_loss,
    "dice_focal": dice_focal_loss,
    "dice_tversky": dice_tversky_loss,
}
REGRESSION_LOSSES: dict[str, LossFn] = {
    "l1": l1_loss,
    "l2": l2_loss,
    "soft_jaccard": soft_jaccard_loss,
}
