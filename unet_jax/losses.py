"""Segmentation losses for binary (sigmoid) logits, in pure jax.numpy.

Every loss takes logits and 0/1 targets of shape [B, *spatial, 1] for any number
of spatial dimensions, and an optional per-example validity `weights` [B] so the
padding examples that fill the last evaluation batch contribute nothing.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[..., jnp.ndarray]


def _broadcast_weights(weights: jnp.ndarray | None, x: jnp.ndarray) -> jnp.ndarray:
    """Per-example weights [B] as [B, 1, ..., 1] (ones when None)."""
    if weights is None:
        return jnp.ones((x.shape[0],) + (1,) * (x.ndim - 1), jnp.float32)
    return jnp.asarray(weights, jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))


def dice_loss(logits: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray | None = None,
              smooth: float = 1.0) -> jnp.ndarray:
    """Soft Dice loss over the whole batch at once.

    `1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) + smooth)` with p = sigmoid(logits),
    the sums running over every pixel of every valid example (not a mean of
    per-example Dice), as in the reference PyTorch training step.
    """
    # Losses are computed in float32 whatever the compute dtype of the model.
    probs = jax.nn.sigmoid(logits.astype(jnp.float32))
    targets = targets.astype(jnp.float32)
    w = _broadcast_weights(weights, probs)
    intersection = jnp.sum(w * probs * targets)
    denominator = jnp.sum(w * probs) + jnp.sum(w * targets)
    return 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)


def bce_loss(logits: jnp.ndarray, targets: jnp.ndarray,
             weights: jnp.ndarray | None = None) -> jnp.ndarray:
    """Binary cross-entropy from logits, mean over the pixels of valid examples.

    A per-pixel mean, so averaging it over k micro-batches with the same number
    of valid examples equals the loss of the full batch (gradient accumulation is
    exact). An all-invalid batch gives 0.
    """
    logits = logits.astype(jnp.float32)
    w = _broadcast_weights(weights, logits)
    per_pixel = optax.sigmoid_binary_cross_entropy(logits, targets.astype(jnp.float32))
    count = jnp.sum(w) * (per_pixel.size // per_pixel.shape[0])
    return jnp.sum(w * per_pixel) / jnp.maximum(count, 1.0)


def dice_bce_loss(logits: jnp.ndarray, targets: jnp.ndarray,
                  weights: jnp.ndarray | None = None) -> jnp.ndarray:
    """`dice_loss + bce_loss`."""
    return dice_loss(logits, targets, weights) + bce_loss(logits, targets, weights)


LOSSES: dict[str, LossFn] = {
    "dice": dice_loss,
    "bce": bce_loss,
    "dice_bce": dice_bce_loss,
}


def get_loss(name: str) -> LossFn:
    """The loss function registered under `name`."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid names: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]
