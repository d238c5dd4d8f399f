"""The U-Net builder: parameter counts, shapes in 2-D and 3-D, bad sizes, gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unet_jax import tasks
from unet_jax.models.transformer import TransformerOptions
from unet_jax.models.unet import UNet


def _params(model, shape):
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))


def test_classic_lgg_unet_matches_the_pytorch_parameter_count():
    # torch_unet_reference.py's UNet(3, 1, 32) with BatchNorm has 7,763,041 parameters.
    assert _params(UNet(), (1, 64, 64, 3)) == 7_763_041


@pytest.mark.parametrize("norm,expected", [("batch", 7_763_041), ("group", 7_763_041),
                                           ("instance", 7_763_041), ("none", 7_760_097)])
def test_norms_and_bias_rule(norm, expected):
    # Every norm has a scale and a bias per channel; without a norm each 3x3 conv
    # has a bias instead: one parameter per channel less, over convs of widths
    # 2*(32+64+128+256) + 2*512 + 2*(256+128+64+32) = 2944.
    assert _params(UNet(norm=norm), (1, 32, 32, 3)) == expected


def test_shapes_2d_and_3d_in_plane():
    model = UNet(features=4, depth=2)
    x = jnp.ones((2, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    assert jax.jit(model.apply)(variables, x).shape == (2, 32, 32, 1)
    model3 = UNet(features=4, depth=3, kernel_size=(3, 3, 1), pool_strides=(2, 2, 1), norm="none")
    v = jnp.ones((1, 16, 16, 4, 1))
    variables3 = jax.jit(model3.init)(jax.random.PRNGKey(0), v)
    out = jax.jit(model3.apply)(variables3, v)
    assert out.shape == (1, 16, 16, 4, 1) and out.dtype == jnp.float32
    kernel = variables3["params"]["enc_0"]["conv_0"]["kernel"]
    assert kernel.shape == (3, 3, 1, 1, 4)


def test_per_level_kernels_and_strides_for_thin_volumes():
    """128x128x16 volumes with in-plane kernels and pooling at the fine levels and
    full 3-D ones below: kernels follow their level in encoder and decoder."""
    model = UNet(features=2, depth=3, norm="none",
                 kernel_size=((3, 3, 1), (3, 3, 1), (3, 3, 3), (3, 3, 3)),
                 pool_strides=((2, 2, 1), (2, 2, 1), (2, 2, 2)))
    x = jnp.ones((1, 128, 128, 16, 1))
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    params = variables["params"]
    assert params["enc_0"]["conv_0"]["kernel"].shape == (3, 3, 1, 1, 2)
    assert params["enc_2"]["conv_0"]["kernel"].shape == (3, 3, 3, 4, 8)
    assert params["bottleneck"]["conv_0"]["kernel"].shape == (3, 3, 3, 8, 16)
    assert params["dec_2"]["conv_0"]["kernel"].shape == (3, 3, 3, 16, 8)
    assert params["dec_0"]["conv_0"]["kernel"].shape == (3, 3, 1, 4, 2)
    assert jax.eval_shape(model.apply, variables, x).shape == (1, 128, 128, 16, 1)
    with pytest.raises(ValueError, match="kernel_size has 2 levels; need depth \\+ 1 = 4"):
        UNet(depth=3, kernel_size=((3, 3, 1), (3, 3, 3))).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match="pool_strides has 2 levels; need depth = 3"):
        UNet(depth=3, pool_strides=((2, 2, 1), (2, 2, 1))).init(jax.random.PRNGKey(0), x)


def test_sizes_the_depth_cannot_divide_are_rejected():
    with pytest.raises(ValueError, match=r"input size \(36, 36\) is not divisible by the total pooling "
                                         r"factor \(8, 8\)"):
        UNet(features=4, depth=3).init(jax.random.PRNGKey(0), jnp.ones((1, 36, 36, 3)))


def test_gradient_reaches_every_parameter_and_bf16_keeps_f32_params():
    model = UNet(features=4, depth=2, dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))

    def loss(params):
        out, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        assert out.dtype == jnp.float32
        return jnp.mean(out**2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)


def test_upconv_equals_a_transposed_convolution():
    # A kernel-equals-stride transposed convolution, written out in NumPy:
    # out[s*i + a, s*j + b] = x[i, j] @ W[a, b] + bias.
    from unet_jax.models.layers import UpConv

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4, 5))
    layer = UpConv(6, (2, 3))
    variables = layer.init(jax.random.PRNGKey(1), x)
    variables = jax.tree.map(lambda v: v + 0.1 if v.ndim == 1 else v, variables)  # non-zero bias
    out = np.asarray(layer.apply(variables, x))
    w = np.asarray(variables["params"]["kernel"]).reshape(5, 2, 3, 6)
    bias = np.asarray(variables["params"]["bias"])
    ref = np.zeros((2, 6, 12, 6))
    xn = np.asarray(x, np.float64)
    for a in range(2):
        for b in range(3):
            ref[:, a::2, b::3] = np.einsum("nijc,co->nijo", xn, w[:, a, b]) + bias
    assert out.shape == (2, 6, 12, 6)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block,attention,expected", [("residual", False, 8_114_241),
                                                      ("plain", True, 8_286_245),
                                                      ("residual", True, 8_637_445)])
def test_residual_and_attention_parameter_counts(block, attention, expected):
    assert _params(UNet(block=block, attention=attention), (1, 64, 64, 3)) == expected


@pytest.mark.slow
def test_attention_coefficients_in_unit_interval_and_gradients_reach_everything():
    model = UNet(features=4, depth=2, block="residual", attention=True)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)

    def loss(params):
        out, state = model.apply({**variables, "params": params}, x, train=True,
                                 mutable=["batch_stats", "intermediates"])
        return jnp.mean(out**2), state["intermediates"]

    grads, inter = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    for level, size in ((0, 16), (1, 8)):
        (alpha,) = inter[f"attention_{level}"]
        assert alpha.shape == (2, size, size, 1)
        assert float(alpha.min()) > 0 and float(alpha.max()) < 1
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)


def test_residual_block_shortcut_is_identity_or_projection():
    from unet_jax.models.layers import ResidualBlock

    same = jax.eval_shape(lambda: ResidualBlock(8).init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 8)), False))
    wider = jax.eval_shape(lambda: ResidualBlock(8).init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 3)), False))
    assert "shortcut" not in same["params"]
    assert wider["params"]["shortcut"]["kernel"].shape == (1, 1, 3, 8)
    with pytest.raises(ValueError, match="block='dense'"):
        UNet(block="dense").init(jax.random.PRNGKey(0), jnp.ones((1, 16, 16, 3)))


TINY = TransformerOptions(hidden=16, num_layers=2, num_heads=2, mlp_dim=32, dropout=0.1)
TINY_TRANSFORMER = dict(bottleneck="transformer", transformer=TINY)


@pytest.mark.slow
@pytest.mark.parametrize("variant", [dict(), dict(block="residual"), dict(attention=True),
                                     dict(block="residual", attention=True), TINY_TRANSFORMER,
                                     dict(upsample="resize")],
                         ids=["plain", "residual", "attention", "residual_attention", "transformer", "resize"])
def test_each_variant_lowers_its_loss_on_phantoms(variant, prepared_dir):
    import functools

    from unet_jax import losses, steps
    from unet_jax.data import pipeline

    batch = next(iter(pipeline.eval_dataset(prepared_dir, "train", batch_size=16)))
    batch = {k: jnp.asarray(batch[k]) for k in ("image", "mask", "valid")}
    model = UNet(features=4, depth=2, **variant)
    tx = steps.make_optimizer(1e-2, total_steps=20, schedule="constant")
    state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), batch["image"][:1])
    step = jax.jit(functools.partial(steps.train_step, loss_fn=losses.dice_ce_loss,
                                     metrics_fn=tasks.Segmentation().batch_metrics))
    seen = []
    for _ in range(6):
        state, m = step(state, batch)
        seen.append(float(m.compute()["loss"]))
    assert seen[-1] < seen[0] - 0.05, seen


@pytest.mark.slow
@pytest.mark.parametrize("variant,loss,out_channels,data", [
    (dict(kernel_size=(3, 3, 1), pool_strides=(2, 2, 1), norm="none"), "dice_ce", 1, "volume_dir"),
    (dict(kernel_size=((3, 3, 1), (3, 3, 3), (3, 3, 3)), pool_strides=((2, 2, 1), (2, 2, 2))), "dice_ce", 1,
     "volume_dir"),
    (dict(), "dice_ce", 2, "prepared_dir"),
    (dict(), "l1", 1, "prepared_dir"),
], ids=["3d_in_plane", "3d_mixed", "softmax_2_classes", "regression_l1"])
def test_3d_and_head_variants_lower_their_loss(variant, loss, out_channels, data, request):
    import functools

    from unet_jax import steps
    from unet_jax.data import pipeline

    batch = next(iter(pipeline.eval_dataset(request.getfixturevalue(data), "train", batch_size=8)))
    batch = {k: jnp.asarray(batch[k]) for k in ("image", "mask", "valid")}
    model = UNet(features=4, depth=2, out_channels=out_channels, **variant)
    tx = steps.make_optimizer(1e-2, total_steps=20, schedule="constant")
    state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), batch["image"][:1])
    task = tasks.make_task("regression" if loss == "l1" else "segmentation", out_channels)
    step = jax.jit(functools.partial(steps.train_step, loss_fn=task.loss(loss), metrics_fn=task.batch_metrics))
    seen = []
    for _ in range(6):
        state, m = step(state, batch)
        seen.append(float(m.compute()["loss"]))
    assert seen[-1] < seen[0] - 0.02, seen


@pytest.mark.parametrize("config_name,expected", [("lgg_keras_model1", 7_763_041),
                                                  ("lgg_keras_model2", 10_650_817),
                                                  ("lgg_res_attention", 8_637_445),
                                                  ("lgg_transunet", 93_212_001),
                                                  ("lgg_3d", 1_288_945)])
def test_variant_config_parameter_counts(config_name, expected):
    # Reported in document 002: 7,774,049 and 10,655,809; the configs' docstrings
    # account for the differences.
    import importlib

    from unet_jax import run

    config = importlib.import_module(f"configs.{config_name}").get_config()
    # 256x256 LGG slices (the transformer's position embeddings depend on the
    # size), 128x128x16 volumes for the 3-D config.
    shape = (1, 128, 128, 16, 3) if config_name == "lgg_3d" else (1, 256, 256, 3)
    assert _params(run.build_model(config), shape) == expected


@pytest.mark.slow
def test_transformer_bottleneck_shapes_counts_dropout_and_gradients():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 3))
    model = UNet(features=4, depth=2, **TINY_TRANSFORMER)
    assert _params(model, (1, 32, 32, 3)) == 12_013
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    # 32 / 4 = an 8x8 bottleneck map: 64 tokens of width 16.
    assert variables["params"]["bottleneck"]["position_embedding"].shape == (64, 16)

    def run(params, rng):
        out, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"],
                             rngs={"dropout": rng})
        return out

    a = jax.jit(run)(variables["params"], jax.random.PRNGKey(2))
    b = jax.jit(run)(variables["params"], jax.random.PRNGKey(3))
    assert a.shape == (2, 32, 32, 1) and not np.allclose(a, b)  # dropout is on in training
    grads = jax.jit(jax.grad(lambda p: jnp.mean(run(p, jax.random.PRNGKey(2)) ** 2)))(variables["params"])
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)
    patched = UNet(features=4, depth=2, bottleneck="transformer", transformer=dataclasses.replace(TINY, patch_size=2))
    v2 = jax.jit(patched.init)(jax.random.PRNGKey(0), x)
    assert v2["params"]["bottleneck"]["position_embedding"].shape == (16, 16)
    assert jax.jit(patched.apply)(v2, x).shape == (2, 32, 32, 1)
    with pytest.raises(ValueError, match="not divisible by transformer.patch_size=3"):
        UNet(features=4, depth=2, bottleneck="transformer",
             transformer=dataclasses.replace(TINY, patch_size=3)).init(jax.random.PRNGKey(0), x)


def test_resize_upsampling_shapes_and_count():
    # A 3x3 conv in place of each 2x2 transposed conv: (9 - 4) * Cin * Cout more,
    # summed over the four levels (512->256, 256->128, 128->64, 64->32).
    extra = 5 * (512 * 256 + 256 * 128 + 128 * 64 + 64 * 32)
    assert _params(UNet(upsample="resize"), (1, 64, 64, 3)) == 7_763_041 + extra
    model3 = UNet(features=4, depth=2, kernel_size=(3, 3, 1), pool_strides=(2, 2, 1), upsample="resize")
    v = jnp.ones((1, 16, 16, 4, 1))
    assert jax.jit(model3.apply)(jax.jit(model3.init)(jax.random.PRNGKey(0), v), v).shape == (1, 16, 16, 4, 1)
    with pytest.raises(ValueError, match="upsample='nearest'"):
        UNet(upsample="nearest").init(jax.random.PRNGKey(0), jnp.ones((1, 16, 16, 3)))


def test_submodules_are_named_by_role_and_level():
    model = UNet(features=2, depth=2, attention=True, deep_supervision=1, decoder_num_convs=3)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.ones((1, 16, 16, 3)))["params"]
    assert sorted(params) == ["aux_head_1", "bottleneck", "dec_0", "dec_1", "enc_0", "enc_1", "gate_0", "gate_1",
                              "head", "up_0", "up_1"]
    assert sorted(params["enc_0"]) == ["conv_0", "conv_0_norm", "conv_1", "conv_1_norm"]
    # decoder_num_convs: three convolutions in every decoder block, two in the encoder
    assert sorted(k for k in params["dec_1"] if not k.endswith("_norm")) == ["conv_0", "conv_1", "conv_2"]
    assert sorted(params["up_0"]) == ["bias", "kernel"]
    vit = UNet(features=2, depth=2, **TINY_TRANSFORMER)
    bottleneck = jax.eval_shape(vit.init, jax.random.PRNGKey(0), jnp.ones((1, 16, 16, 3)))["params"]["bottleneck"]
    assert sorted(bottleneck) == ["encoder_norm", "layer_0", "layer_1", "patch_embedding", "position_embedding",
                                  "to_features"]
    assert sorted(bottleneck["layer_0"]) == ["attention", "attention_norm", "mlp_in", "mlp_norm", "mlp_out"]
    # One more conv per decoder level: (3*3*w*w) per level of widths 2 and 4.
    assert _params(UNet(features=2, depth=2, decoder_num_convs=3), (1, 16, 16, 3)) == \
        _params(UNet(features=2, depth=2), (1, 16, 16, 3)) + 9 * (2 * 2 + 4 * 4) + 2 * (2 + 4)


@pytest.mark.parametrize("padding", ["SAME", ((1, 1), (0, 2), (0, 0))])
def test_in_plane_conv_equals_the_3d_convolution_and_its_gradients(padding):
    from unet_jax.models.conv import in_plane_conv

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 7, 5, 3))
    k = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 1, 3, 4))
    dn = jax.lax.conv_dimension_numbers(x.shape, k.shape, ("NHWDC", "HWDIO", "NHWDC"))

    def conv3d(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1, 1), padding, dimension_numbers=dn)

    def folded(x, k):
        return in_plane_conv(x, k, (1, 1, 1), padding, dimension_numbers=dn)

    np.testing.assert_allclose(folded(x, k), conv3d(x, k), atol=1e-5)
    for argnum in (0, 1):
        grad = [jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnum)(x, k) for f in (folded, conv3d)]
        np.testing.assert_allclose(grad[0], grad[1], atol=1e-4)
    # Anything else (a 3x3x3 kernel, a stride) is the 3-D convolution itself.
    k3 = jax.random.normal(jax.random.PRNGKey(2), (3, 3, 3, 3, 4))
    np.testing.assert_array_equal(in_plane_conv(x, k3, (1, 1, 1), "SAME", dimension_numbers=dn),
                                  jax.lax.conv_general_dilated(x, k3, (1, 1, 1), "SAME", dimension_numbers=dn))
    np.testing.assert_array_equal(in_plane_conv(x, k, (2, 2, 1), "SAME", dimension_numbers=dn),
                                  jax.lax.conv_general_dilated(x, k, (2, 2, 1), "SAME", dimension_numbers=dn))
