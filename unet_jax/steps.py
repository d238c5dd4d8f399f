"""TrainState, the optimiser, and the pure train and eval steps.

`train.py` and `run.py` jit these with shardings (parameters replicated, batch sharded);
nothing here knows about devices, files or configs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from unet_jax.losses import LossFn

# (logits, targets, valid, loss) -> a clu metric collection of one batch
MetricsFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray, jnp.ndarray], Any]
# Parameters never decayed: the ViT/BERT convention for learned position embeddings.
NO_DECAY = ("position_embedding",)


class TrainState(train_state.TrainState):
    """All mutable training state in one pytree, saved whole by orbax."""

    batch_stats: Any
    rng: jax.Array  # raw uint32 key data, split every step (dropout)
    skipped: jax.Array  # int32: steps skipped for a non-finite loss, gradient or update, in all
    skipped_in_a_row: jax.Array  # int32: of those, the latest run of consecutive ones (0 after a good step)


def create_train_state(model, tx: optax.GradientTransformation, rng: jax.Array,
                       sample_input: jnp.ndarray) -> TrainState:
    """Initialises parameters (and BatchNorm statistics, if any) from a sample batch."""
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init({"params": init_rng, "dropout": init_rng}, sample_input, train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}), rng=state_rng,
                             skipped=jnp.zeros((), jnp.int32), skipped_in_a_row=jnp.zeros((), jnp.int32))


SCHEDULES = ("cosine", "constant", "poly")
OPTIMIZERS = ("adamw", "sgd")
POLY_POWER = 0.9  # nnU-Net's poly decay: lr * (1 - step / total) ** 0.9


def learning_rate_schedule(learning_rate: float, *, total_steps: int, warmup_steps: int = 0,
                           schedule: str = "cosine") -> optax.Schedule:
    """Linear warm-up over `warmup_steps`, then a cosine decay to zero, a
    constant rate, or nnU-Net's poly decay `(1 - t / T) ** 0.9` to zero at the
    last step."""
    decay_steps = max(total_steps - warmup_steps, 1)
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps,
                                                  max(total_steps, warmup_steps + 1), 0.0)
    if schedule == "constant":
        after = optax.constant_schedule(learning_rate)
    elif schedule == "poly":
        after = optax.polynomial_schedule(learning_rate, 0.0, POLY_POWER, decay_steps)
    else:
        raise ValueError(f"schedule={schedule!r}: choose one of {', '.join(SCHEDULES)}")
    return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps), after], [warmup_steps])


def make_optimizer(learning_rate: float, *, total_steps: int, warmup_steps: int = 0,
                   schedule: str = "cosine", weight_decay: float = 1e-4,
                   clip_norm: float | None = 1.0, optimizer: str = "adamw",
                   momentum: float = 0.99) -> optax.GradientTransformation:
    """AdamW, or SGD with Nesterov momentum (nnU-Net's: momentum 0.99, L2 weight
    decay added to the gradients), on `learning_rate_schedule`, after
    global-norm gradient clipping.

    Weight decay applies to convolution and dense kernels (every parameter of
    two or more dimensions) and to nothing else: not to biases, norm scales and
    offsets, nor to the transformer's position embeddings, as ViT training does.
    """
    lr = learning_rate_schedule(learning_rate, total_steps=total_steps, warmup_steps=warmup_steps,
                                schedule=schedule)
    chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
    if optimizer == "adamw":
        chain.append(optax.adamw(lr, weight_decay=weight_decay, mask=decay_mask))
    elif optimizer == "sgd":
        chain += [optax.add_decayed_weights(weight_decay, mask=decay_mask),
                  optax.sgd(lr, momentum=momentum, nesterov=True)]
    else:
        raise ValueError(f"optimizer={optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    return optax.chain(*chain)


def decay_mask(params: Any) -> Any:
    """True for the parameters that weight decay applies to (see `make_optimizer`)."""
    def decayed(path, p) -> bool:
        return p.ndim > 1 and getattr(path[-1], "key", None) not in NO_DECAY
    return jax.tree_util.tree_map_with_path(decayed, params)


def _variables(params, batch_stats) -> dict:
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def split_micro_batches(batch: dict[str, jnp.ndarray], k: int) -> dict[str, jnp.ndarray]:
    """[B, ...] -> [k, B/k, ...], micro-batch j taking rows j, j+k, j+2k, ...

    Interleaving keeps every device's rows spread over all micro-batches, so a
    batch sharded on its first axis needs no resharding.
    """
    def split(x):
        return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)
    return jax.tree.map(split, batch)


# (key, image, mask) -> (image, mask): augmentation of a whole batch on the devices
AugmentFn = Callable[[jax.Array, jnp.ndarray, jnp.ndarray], tuple[jnp.ndarray, jnp.ndarray]]


def train_step(state: TrainState, batch: dict[str, jnp.ndarray], *, loss_fn: LossFn, metrics_fn: MetricsFn,
               grad_accum_steps: int = 1, aux_weights: Sequence[float] = (),
               augment_fn: AugmentFn | None = None) -> tuple[TrainState, Any]:
    """One optimiser update from `grad_accum_steps` micro-batches of `batch`.

    `augment_fn` (on-device augmentation) transforms the whole global batch
    first, with a key of this step drawn from the state's RNG, so a resumed
    run augments exactly as an uninterrupted one.

    `aux_weights[i]` weighs the loss of the deep-supervision head on decoder
    level i + 1 (a model built with `deep_supervision=len(aux_weights)`); the
    reported loss and metrics (`metrics_fn`) are the main output's.

    Gradients are averaged over micro-batches, so the update equals the one
    from the whole batch at once for a per-pixel-mean loss (cross-entropy, l1,
    l2), but not for a batch-level ratio such as the Dice loss; BatchNorm
    statistics are computed per micro-batch and carried from one to the next.
    The loop is unrolled: under `lax.scan`, XLA's CPU convolutions ran over 10x
    slower.

    A step whose loss, gradients or updated parameters are not all finite (a
    NaN in the input, a learning rate that diverges) changes nothing but the
    step count, the RNG and the `skipped` counters, and its metrics are left
    out (zeros merge as nothing), so no NaN ever reaches the parameters.
    """
    rng, step_rng = jax.random.split(state.rng)
    if augment_fn is not None:  # dropout takes fold_in(step_rng, i) for i < grad_accum_steps
        image, mask = augment_fn(jax.random.fold_in(step_rng, grad_accum_steps), batch["image"], batch["mask"])
        batch = {**batch, "image": image, "mask": mask}
    micro_batches = split_micro_batches(batch, grad_accum_steps)
    grads_sum = jax.tree.map(jnp.zeros_like, state.params)
    batch_stats = state.batch_stats
    metrics = None
    for index in range(grad_accum_steps):
        micro = jax.tree.map(lambda x: x[index], micro_batches)

        def loss_of(params):
            (logits, aux), updates = state.apply_fn(
                _variables(params, batch_stats), micro["image"], train=True, with_aux=True,
                mutable=["batch_stats"], rngs={"dropout": jax.random.fold_in(step_rng, index)})
            loss = loss_fn(logits, micro["mask"], micro["valid"])
            total = loss + sum(weight * loss_fn(head, micro["mask"], micro["valid"])
                               for weight, head in zip(aux_weights, aux, strict=True))
            return total, (loss, logits, updates)

        (_, (loss, logits, updates)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
        batch_stats = updates.get("batch_stats", batch_stats)
        micro_metrics = metrics_fn(logits, micro["mask"], micro["valid"], loss)
        metrics = micro_metrics if metrics is None else metrics.merge(micro_metrics)
    grads = jax.tree.map(lambda g: g / grad_accum_steps, grads_sum)
    new = state.apply_gradients(grads=grads, batch_stats=batch_stats, rng=rng)
    finite = _all_finite((metrics.loss.total, grads, new.params, new.batch_stats))
    kept = jax.tree.map(lambda a, b: jnp.where(finite, a, b), (new.params, new.opt_state, new.batch_stats),
                        (state.params, state.opt_state, state.batch_stats))
    state = new.replace(params=kept[0], opt_state=kept[1], batch_stats=kept[2],
                        skipped=state.skipped + (~finite), skipped_in_a_row=jnp.where(finite, 0,
                                                                                     state.skipped_in_a_row + 1))
    return state, jax.tree.map(lambda m: jnp.where(finite, m, jnp.zeros_like(m)), metrics)


def _all_finite(tree: Any) -> jax.Array:
    """Whether every float in `tree` is finite (one reduction per leaf)."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.stack(leaves).all()


def eval_step(state: TrainState, batch: dict[str, jnp.ndarray], *, loss_fn: LossFn, metrics_fn: MetricsFn,
              predict_fn: Callable[[jnp.ndarray], jnp.ndarray]) -> tuple[Any, jnp.ndarray]:
    """Metrics of one batch (padding excluded) and its predictions (`predict_fn`
    of the logits: labels for segmentation, the outputs for regression)."""
    logits = state.apply_fn(_variables(state.params, state.batch_stats), batch["image"], train=False)
    loss = loss_fn(logits, batch["mask"], batch["valid"])
    return metrics_fn(logits, batch["mask"], batch["valid"], loss), predict_fn(logits)


def predict_step(state: TrainState, image: jnp.ndarray, *,
                 output_fn: Callable[[jnp.ndarray], jnp.ndarray]) -> jnp.ndarray:
    """`output_fn` of the logits of an image batch in inference mode (the
    probabilities a sliding window blends, say)."""
    return output_fn(state.apply_fn(_variables(state.params, state.batch_stats), image, train=False))
