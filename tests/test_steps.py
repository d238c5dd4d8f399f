"""Train and eval steps: gradient accumulation equals the full batch, and 1 and 4
devices give the same losses (BatchNorm statistics over the global batch)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unet_jax import losses, parallel, steps, tasks
from unet_jax.models.unet import UNet

SEG = tasks.Segmentation()


def _train_step(loss_fn, **kwargs):
    return functools.partial(steps.train_step, loss_fn=loss_fn, metrics_fn=SEG.batch_metrics, **kwargs)


def _batch(n, size=16, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.random((n, size, size, 3), np.float32)
    mask = (image[..., :1] > 0.6).astype(np.float32)
    return {"image": image, "mask": mask, "valid": np.ones(n, bool),
            "patient_index": np.zeros(n, np.int32), "slice": np.arange(n, dtype=np.int32)}


def _state(norm, tx=None):
    model = UNet(features=4, depth=2, norm=norm)
    tx = tx or steps.make_optimizer(1e-2, total_steps=10, schedule="constant", weight_decay=1e-4, clip_norm=None)
    return steps.create_train_state(model, tx, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))


def test_split_micro_batches_interleaves_rows():
    x = {"a": jnp.arange(8)}
    np.testing.assert_array_equal(steps.split_micro_batches(x, 2)["a"], [[0, 2, 4, 6], [1, 3, 5, 7]])


@pytest.mark.slow
def test_gradient_accumulation_equals_the_full_batch():
    # Plain SGD with rate 1, so the update is the averaged gradient itself (Adam
    # would hide a wrong scale, since it normalises the gradient).
    state = _state("none", optax.sgd(1.0))
    batch = jax.tree.map(jnp.asarray, _batch(8))
    full = jax.jit(_train_step(losses.cross_entropy_loss, grad_accum_steps=1))
    accum = jax.jit(_train_step(losses.cross_entropy_loss, grad_accum_steps=4))
    s1, m1 = full(state, batch)
    s4, m4 = accum(state, batch)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert abs(float(m1.compute()["loss"]) - float(m4.compute()["loss"])) < 1e-6
    # The update really moved the parameters (the comparison is not vacuous).
    assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
               zip(jax.tree.leaves(s1.params), jax.tree.leaves(state.params))) > 1e-3


@pytest.mark.skipif(jax.device_count() < 4, reason="needs 4 (simulated) devices; tests/conftest.py sets them")
@pytest.mark.slow
def test_one_and_four_devices_give_the_same_losses():
    batches = [_batch(8, seed=s) for s in range(3)]
    results = []
    for devices in (jax.devices()[:1], jax.devices()[:4]):
        mesh = parallel.make_mesh(devices)
        repl, data = parallel.replicated(mesh), parallel.batch_sharded(mesh)
        step = jax.jit(_train_step(losses.dice_ce_loss, grad_accum_steps=1),
                       in_shardings=(repl, data), out_shardings=(repl, repl))
        # SGD: parameters then differ only as much as the gradients do (Adam's
        # first steps are sign-like and turn rounding noise into full steps).
        state = jax.device_put(_state("batch", optax.sgd(0.1)), repl)
        losses_seen = []
        for b in batches:
            state, m = step(state, parallel.to_global(b, mesh))
            losses_seen.append(float(m.compute()["loss"]))
        results.append((losses_seen, state))
    (l1, s1), (l4, s4) = results
    np.testing.assert_allclose(l1, l4, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s1.batch_stats), jax.tree.leaves(s4.batch_stats)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s4.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_eval_step_excludes_padding():
    state = _state("batch")
    b = _batch(4)
    step = jax.jit(functools.partial(steps.eval_step, loss_fn=losses.dice_loss, metrics_fn=SEG.batch_metrics,
                                     predict_fn=SEG.predict))
    m_all, preds = step(state, jax.tree.map(jnp.asarray, b))
    assert preds.shape == (4, 16, 16) and preds.dtype == jnp.uint8  # labels
    padded = {k: np.concatenate([v, np.zeros_like(v[:2])]) for k, v in b.items()}
    m_pad, _ = step(state, jax.tree.map(jnp.asarray, padded))
    for k, v in m_all.compute().items():
        np.testing.assert_allclose(v, m_pad.compute()[k], rtol=1e-5, err_msg=k)


def test_optimizer_schedules_and_weight_decay_mask():
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
    tx = steps.make_optimizer(0.1, total_steps=100, warmup_steps=10, schedule="cosine", weight_decay=0.5,
                              clip_norm=1.0)
    opt = tx.init(params)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero, opt, params)
    # Zero gradient: only weight decay moves anything, kernels only; at step 0 the
    # warm-up learning rate is 0.
    assert float(jnp.abs(updates["bias"]).max()) == 0.0
    opt = jax.tree.map(lambda x: x, opt)
    for _ in range(5):
        updates, opt = tx.update(zero, opt, params)
    assert float(jnp.abs(updates["bias"]).max()) == 0.0 and float(jnp.abs(updates["kernel"]).max()) > 0
    with pytest.raises(ValueError, match="schedule='linear'"):
        steps.make_optimizer(0.1, total_steps=10, schedule="linear")


def test_poly_schedule_is_nnunets_decay_after_warmup():
    lr = steps.learning_rate_schedule(0.01, total_steps=110, warmup_steps=10, schedule="poly")
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.005)
    for t in (10, 40, 85, 109):
        assert float(lr(t)) == pytest.approx(0.01 * (1 - (t - 10) / 100) ** 0.9, rel=1e-5)
    assert float(lr(110)) == pytest.approx(0.0, abs=1e-9)


def test_sgd_is_nesterov_with_l2_weight_decay_on_kernels_only():
    """Three steps of make_optimizer('sgd') against a float64 NumPy Nesterov
    SGD whose gradients get weight_decay * kernel added (L2, not decoupled)."""
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(3, 2)).astype(np.float32), "bias": rng.normal(size=2).astype(np.float32)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(3)]
    lr, mu, wd = 0.1, 0.9, 0.01
    tx = steps.make_optimizer(lr, total_steps=10, schedule="constant", weight_decay=wd, clip_norm=None,
                              optimizer="sgd", momentum=mu)
    p, opt = {k: jnp.asarray(v) for k, v in params.items()}, None
    opt = tx.init(p)
    ref = {k: v.astype(np.float64) for k, v in params.items()}
    velocity = {k: np.zeros_like(v) for k, v in ref.items()}
    for g in grads:
        updates, opt = tx.update({k: jnp.asarray(v) for k, v in g.items()}, opt, p)
        p = optax.apply_updates(p, updates)
        for k in ref:
            g64 = g[k] + (wd * ref[k] if k == "kernel" else 0.0)
            velocity[k] = mu * velocity[k] + g64
            ref[k] = ref[k] - lr * (g64 + mu * velocity[k])
    for k in ref:
        np.testing.assert_allclose(np.asarray(p[k]), ref[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="optimizer='adam'"):
        steps.make_optimizer(0.1, total_steps=10, optimizer="adam")


@pytest.mark.slow
def test_mixed_precision_step_keeps_float32_state_and_learns():
    model = UNet(features=4, depth=2, norm="batch", dtype=jnp.bfloat16)
    tx = steps.make_optimizer(1e-2, total_steps=10, schedule="constant")
    state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
    step = jax.jit(_train_step(losses.dice_ce_loss, grad_accum_steps=2))
    batch = jax.tree.map(jnp.asarray, _batch(8))
    seen = []
    for _ in range(4):
        state, m = step(state, batch)
        seen.append(float(m.compute()["loss"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((state.params, state.opt_state))
               if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating))
    assert np.isfinite(seen).all() and seen[-1] < seen[0]


@pytest.mark.slow
def test_deep_supervision_heads_are_trained_by_their_weights_only():
    model = UNet(features=4, depth=3, norm="none", deep_supervision=2)
    x = jnp.zeros((1, 16, 16, 3))
    variables = model.init(jax.random.PRNGKey(0), x)
    logits, aux = model.apply(variables, x, with_aux=True)
    assert logits.shape == (1, 16, 16, 1) and [a.shape for a in aux] == [(1, 16, 16, 1)] * 2
    np.testing.assert_array_equal(model.apply(variables, x), logits)  # without aux: the logits alone
    state = steps.create_train_state(model, optax.sgd(0.1), jax.random.PRNGKey(0), x)
    batch = jax.tree.map(jnp.asarray, _batch(4))
    results = {}
    for weights in ((0.0, 0.0), (0.5, 0.25)):
        step = jax.jit(_train_step(losses.dice_ce_loss, aux_weights=weights))
        new, m = step(state, batch)
        moved = {k: float(jnp.abs(new.params[k]["kernel"] - state.params[k]["kernel"]).max())
                 for k in ("aux_head_1", "aux_head_2", "head")}
        results[weights] = (moved, float(m.compute()["loss"]))
    (off, loss_off), (on, loss_on) = results[(0.0, 0.0)], results[(0.5, 0.25)]
    assert off["aux_head_1"] == off["aux_head_2"] == 0.0 and off["head"] > 0
    assert on["aux_head_1"] > 0 and on["aux_head_2"] > 0
    assert loss_on == pytest.approx(loss_off)  # the reported loss is the main output's
    with pytest.raises(ValueError, match="deep_supervision=3 must lie in"):
        UNet(features=4, depth=3, deep_supervision=3).init(jax.random.PRNGKey(0), x)


def test_weight_decay_spares_biases_norms_and_position_embeddings():
    params = {"enc_0": {"conv_0": {"kernel": jnp.ones((3, 3, 1, 2)), "bias": jnp.ones(2)}},
              "bottleneck": {"position_embedding": jnp.ones((4, 8)), "patch_embedding": {"kernel": jnp.ones((1, 1, 2, 8))}},
              "norm": {"scale": jnp.ones(2)}}
    mask = steps.decay_mask(params)
    assert mask == {"enc_0": {"conv_0": {"kernel": True, "bias": False}},
                    "bottleneck": {"position_embedding": False, "patch_embedding": {"kernel": True}},
                    "norm": {"scale": False}}


def test_a_nan_batch_is_skipped_and_leaves_the_state_as_it_was():
    state = _state("batch")
    step = jax.jit(_train_step(losses.dice_ce_loss, grad_accum_steps=2))
    bad = _batch(4)
    bad["image"][1, 3, 3, 0] = np.nan  # one pixel of one example, as a corrupt slice would bring
    after, metrics = step(state, jax.tree.map(jnp.asarray, bad))
    for a, b in zip(jax.tree.leaves((state.params, state.opt_state, state.batch_stats)),
                    jax.tree.leaves((after.params, after.opt_state, after.batch_stats))):
        np.testing.assert_array_equal(a, b)
    assert int(after.step) == 1 and int(after.skipped) == 1 and int(after.skipped_in_a_row) == 1
    assert not np.array_equal(after.rng, state.rng)  # the step still counts and moves on
    assert float(metrics.loss.count) == 0  # merges as nothing into the epoch's metrics
    after, metrics = step(after, jax.tree.map(jnp.asarray, bad))
    assert int(after.skipped) == int(after.skipped_in_a_row) == 2
    good, metrics = step(after, jax.tree.map(jnp.asarray, _batch(4)))
    assert int(good.skipped) == 2 and int(good.skipped_in_a_row) == 0
    assert np.isfinite(float(metrics.compute()["loss"]))
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(good.params))
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(good.params), jax.tree.leaves(state.params)))


def test_an_update_that_overflows_is_skipped():
    # Finite loss and gradients, but a rate that sends the parameters to inf.
    state = _state("none", optax.sgd(float("inf")))
    after, _ = jax.jit(_train_step(losses.dice_ce_loss))(state, jax.tree.map(jnp.asarray, _batch(4)))
    assert int(after.skipped) == 1
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(after.params)):
        np.testing.assert_array_equal(a, b)


def test_augment_fn_transforms_the_batch_inside_the_step():
    state = _state("none", optax.sgd(1.0))
    batch = jax.tree.map(jnp.asarray, _batch(4))
    keys = []

    def flip(key, image, mask):
        keys.append(key)
        return image[:, :, ::-1], mask[:, :, ::-1]

    augmented, _ = jax.jit(_train_step(losses.cross_entropy_loss, augment_fn=flip))(state, batch)
    flipped = {**batch, "image": batch["image"][:, :, ::-1], "mask": batch["mask"][:, :, ::-1]}
    plain, _ = jax.jit(_train_step(losses.cross_entropy_loss))(state, flipped)
    for a, b in zip(jax.tree.leaves(augmented.params), jax.tree.leaves(plain.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert len(keys) == 1  # one key per step, for the whole global batch
