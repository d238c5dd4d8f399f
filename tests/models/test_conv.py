"""gemm_conv against XLA's convolution: values and gradients in float64, the
parameters of the U-Net with either implementation, and one real train step."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from unet_jax import losses, steps
from unet_jax.benchmarks.train_step import loss_metrics
from unet_jax.models import conv
from unet_jax.models.unet import UNet

CASES = {  # input shape, kernel size, strides, padding
    "2d_same": ((2, 9, 11, 3), (3, 3), (1, 1), "SAME"),
    "2d_strided_same": ((2, 9, 11, 3), (3, 3), (2, 2), "SAME"),
    "2d_strided_valid": ((2, 9, 11, 3), (3, 3), (2, 1), "VALID"),
    "2d_1x1": ((2, 7, 6, 3), (1, 1), (1, 1), "SAME"),
    "2d_explicit_padding": ((1, 8, 5, 2), (3, 2), (1, 1), ((2, 0), (1, 1))),
    "3d_in_plane": ((2, 8, 10, 5, 3), (3, 3, 1), (1, 1, 1), "SAME"),
    "3d_same": ((1, 7, 6, 5, 3), (3, 3, 3), (1, 1, 1), "SAME"),
    "3d_strided": ((2, 7, 6, 5, 3), (3, 3, 3), (2, 2, 2), "SAME"),
    "3d_patch_valid": ((2, 8, 8, 4, 3), (2, 2, 2), (2, 2, 2), "VALID"),
    "3d_1x1": ((1, 5, 4, 3, 3), (1, 1, 1), (1, 1, 1), "VALID"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_gemm_conv_equals_xla_conv_and_its_gradients(case):
    shape, kernel_size, strides, padding = case
    spec = ("NHWC", "HWIO", "NHWC") if len(kernel_size) == 2 else ("NDHWC", "DHWIO", "NDHWC")
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.standard_normal(shape))
        kernel = jnp.asarray(rng.standard_normal((*kernel_size, shape[-1], 4)))
        dn = lax.conv_dimension_numbers(x.shape, kernel.shape, spec)

        def apply(fn, x, kernel, bias):
            return fn(x, kernel, strides, padding, dimension_numbers=dn) + bias

        bias = jnp.asarray(rng.standard_normal(4))
        want, want_vjp = jax.vjp(functools.partial(apply, lax.conv_general_dilated), x, kernel, bias)
        got, got_vjp = jax.vjp(functools.partial(apply, conv.gemm_conv_general_dilated), x, kernel, bias)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        dy = jnp.asarray(rng.standard_normal(want.shape))
        for g, w in zip(got_vjp(dy), want_vjp(dy)):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-10)


def test_weight_grad_blocks_of_rows_add_up(monkeypatch):
    # A tiny block budget makes every output row its own block.
    monkeypatch.setattr(conv, "BLOCK_BYTES", 1)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 5, 3))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 3, 2))
    dn = lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
    grads = [jax.grad(lambda k, f=f: jnp.sum(jnp.sin(f(x, k, (1, 1), "SAME", dimension_numbers=dn))))(kernel)
             for f in (lax.conv_general_dilated, conv.gemm_conv_general_dilated)]
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-5, atol=1e-5)


def test_conv_impl_choice():
    assert conv.conv_general_dilated("gemm") is conv.gemm_conv_general_dilated
    assert conv.conv_general_dilated("xla") is (conv.in_plane_conv if jax.default_backend() == "cpu"
                                                else lax.conv_general_dilated)
    with pytest.raises(ValueError, match="conv_impl='fast'"):
        conv.conv_general_dilated("fast")
    with pytest.raises(ValueError, match="conv_impl='fast'"):
        UNet(conv_impl="fast").init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))


MODELS = {
    "classic_2d": (dict(features=4, depth=2), (1, 16, 16, 3)),
    "every_conv_3d": (dict(features=2, depth=2, attention=True, upsample="resize", deep_supervision=1,
                           block="residual", kernel_size=((3, 3, 1), (3, 3, 3), (3, 3, 3)),
                           pool_strides=((2, 2, 1), (2, 2, 2))), (1, 8, 8, 4, 1)),
    "transformer": (dict(features=2, depth=2, bottleneck="transformer"), (1, 16, 16, 1)),
}


@pytest.mark.parametrize("fields, shape", MODELS.values(), ids=MODELS.keys())
def test_parameters_are_the_same_with_either_convolution(fields, shape):
    def tree(impl):
        variables = UNet(**fields, conv_impl=impl).init(jax.random.PRNGKey(0), jnp.zeros(shape))
        return jax.tree_util.tree_flatten_with_path(variables)[0]

    xla, gemm = tree("xla"), tree("gemm")
    assert [(path, leaf.shape) for path, leaf in gemm] == [(path, leaf.shape) for path, leaf in xla]
    for (_, a), (_, b) in zip(gemm, xla):
        np.testing.assert_array_equal(a, b)  # the same initialisation too


def test_one_train_step_is_the_same_with_either_convolution():
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.standard_normal((2, 16, 16, 3)), jnp.float32),
             "mask": jnp.asarray(rng.random((2, 16, 16, 1)) > 0.7, jnp.float32),
             "valid": jnp.ones(2, bool)}
    results = {}
    for impl in ("xla", "gemm"):
        model = UNet(features=4, depth=2, conv_impl=impl)
        tx = steps.make_optimizer(1e-2, total_steps=10, schedule="constant")
        state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
        step = jax.jit(functools.partial(steps.train_step, loss_fn=losses.dice_loss, metrics_fn=loss_metrics))
        state, metrics = step(state, batch)
        results[impl] = (metrics.loss.total, state.params, state.batch_stats)
    np.testing.assert_allclose(results["gemm"][0], results["xla"][0], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), results["gemm"][1:],
                 results["xla"][1:])
