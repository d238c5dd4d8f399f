"""The variants benchmark sets every variant up with the demo's recipe."""

import json
import os

from configs import demo
from unet_jax.benchmarks import variants


def test_every_variant_gets_the_demo_recipe_and_3d_ones_get_volumes(tmp_path):
    recipe = demo.get_config()
    configs = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    assert set(variants.VARIANTS) <= {f[:-3] for f in os.listdir(configs)}
    for name in ("lgg_res_attention", "lgg_3d"):
        config = variants.phantom_config(name, str(tmp_path), epochs=3)
        assert config.num_epochs == 3 and config.learning_rate == recipe.learning_rate
        assert config.loss == recipe.loss and config.model == variants.load(name).model
        manifest = json.load(open(os.path.join(config.data.data_dir, "manifest.json")))
        if name == "lgg_3d":
            assert manifest["image_shape"] == [64, 64, variants.DEPTH_3D, 3] and config.batch_size == 2
        else:
            assert manifest["image_shape"] == [64, 64, 3] and config.batch_size == recipe.batch_size


def test_sliding_window_benchmark_runs_the_real_inference_on_a_whole_volume():
    from unet_jax.benchmarks import sliding_window

    row = sliding_window.measure_jax((20, 18, 10), (16, 16, 8), features=2, depth=1, batch=4, overlap=0.5,
                                     repeats=1)
    assert row["shape"] == [20, 18, 10] and row["patch"] == [16, 16, 8]
    assert row["params"] > 0 and row["voxels_per_s"] > 0 and row["seconds"] > 0


def test_predict_files_benchmark_times_one_file_end_to_end(tmp_path):
    from unet_jax.benchmarks import predict_files

    result = predict_files.main(["--shape", "24", "24", "12", "--patch", "16", "16", "8", "--features", "2",
                                 "--repeats", "1", "--out_dir", str(tmp_path), "--json", str(tmp_path / "r.json")])
    ours = result["unet_jax"]
    assert ours["seconds"] > 0 and ours["voxels_per_s"] > 0 and ours["windows"] > 0
    assert (tmp_path / "unet_jax" / "flair.nii.gz").is_file() and "torch+monai" not in result
    assert json.load(open(tmp_path / "r.json"))["unet_jax"]["seconds"] == ours["seconds"]


def test_input_vs_step_benchmark_measures_both_sides_of_2d_and_3d_training(prepared_dir, lesion_volume_dir, capsys):
    from unet_jax.benchmarks import input_vs_step

    verdicts = input_vs_step.main(["--data_dir", prepared_dir, "--patch_data_dir", lesion_volume_dir,
                                   "--patch_size", "16", "16", "8", "--workers", "0", "--batch", "4", "--batch_3d",
                                   "4", "--features", "2", "--depth", "1", "--batches", "2", "--steps", "1",
                                   "--warmup", "0"])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    for dataset, shape in (("2d", [32, 32, 3]), ("3d_patches", [16, 16, 8, 2])):
        mine = {(r["measure"], r["augment"]): r for r in rows if r["dataset"] == dataset}
        assert set(mine) == {("host", "host"), ("host", "none"), ("augment", "device"), ("step", "none"),
                             ("step", "device")}
        assert all(r["examples_per_s"] > 0 and r["shape"] == shape for r in mine.values())
        assert mine["step", "device"]["params"] == mine["step", "none"]["params"] > 0
    assert [v.split(":")[0] for v in verdicts] == ["2d", "3d_patches"]
    assert all("bound by the" in v and "moving it to the device" in v for v in verdicts)
