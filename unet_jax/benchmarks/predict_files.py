"""End-to-end cost of segmenting one NIfTI file, optionally side by side with a
MONAI pipeline running the same network in PyTorch, as a ratio.

  python -m unet_jax.benchmarks.predict_files --shape 182 218 182 --patch 128 128 16 \\
      --torch_reference ../shared/bench/torch_unet_reference.py [--repeats 3] [--tta] [--features 16]

Setup (not timed): one synthetic --shape float32 FLAIR-like NIfTI (an
ellipsoid head with smooth shading and noise on a zero background, a few
bright blobs; 1 mm voxels), and the 3-D WMH U-Net of configs/wmh_3d.py
(--patch and --features override it) with randomly initialised parameters.

Ours (timed): `unet_jax.predict.predict_files` on that file with a `Predictor`
of the config and a FLAIR-only manifest as data_prep.volumes writes it: read
(SimpleITK), z-score over the non-zero voxels, crop to their bounding box,
sliding windows of the patch on the device mesh (overlap and Gaussian
blending of config.data.sliding_window, the config's eval_batch_size windows
at a time), labels put back on the full grid and written as .nii.gz, plus
its predictions.csv (no overlays).

MONAI (timed, in a process of its own so the thread pools do not compete):
the U-Net of torch_unet_reference.py with each level's kernels and pooling
set as the config has them (in-plane 3x3x1 / 2x2x1 on the fine levels, no
normalisation) and our random parameters copied in (a strict state-dict
load, so the two networks are the same), in channels_last_3d as that file
runs it by default (--torch_contiguous: NCDHW), under torch.inference_mode():
LoadImage (SimpleITK where MONAI has no NIfTI reader installed), CropForeground
box of the non-zero voxels, NormalizeIntensity(nonzero=True),
sliding_window_inference(roi=patch, same batch, same overlap, mode=gaussian)
of the sigmoid (softmax for several classes), threshold (argmax), labels put
back on the full grid, SaveImage (or SimpleITK) as uint8 .nii.gz.

--tta: both sides average the 8 flips of every window (ours: Predictor
tta=True; MONAI: the flips inside sliding_window_inference's predictor, the
same computation). Each side warms up once (compilation excluded), then the
median of --repeats runs. Prints a table (seconds per case, voxels/s, the
ratio) and how far the two label maps agree; --json writes it all.
torch and MONAI are imported only with --torch_reference, in that process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from unet_jax.benchmarks.sliding_window import load_torch_reference, median_seconds

INPUT_NAME = "flair.nii.gz"  # the synthetic scan; both sides write their labels under this name


# --- setup ---------------------------------------------------------------------------

def synthetic_flair(shape, seed: int = 0) -> np.ndarray:
    """A float32 FLAIR-like head [X, Y, Z]: an ellipsoid filling 85% of each
    axis with smooth shading, Gaussian noise and six bright blobs (lesions),
    exactly zero outside (so a non-zero crop has something to crop)."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    head = sum((g / 0.85) ** 2 for g in grid) < 1
    shading = 300 + 40 * np.cos(2.5 * grid[0]) * np.cos(2 * grid[1]) + 30 * grid[2]
    image = shading + rng.normal(0, 15, shape).astype(np.float32)
    for _ in range(6):  # lesions inside the inner half of the head
        centre = [int((0.5 + rng.uniform(-0.25, 0.25)) * n) for n in shape]
        sigma = rng.uniform(1.5, 4.0)
        box = tuple(slice(max(c - int(4 * sigma), 0), c + int(4 * sigma) + 1) for c in centre)
        d2 = sum((np.arange(b.start, min(b.stop, n)) - c).reshape([-1 if i == a else 1 for i in range(3)]) ** 2
                 for a, (b, c, n) in enumerate(zip(box, centre, shape)))
        image[box] += 250 * np.exp(-d2 / (2 * sigma ** 2)).astype(np.float32)
    return np.where(head, np.maximum(image, 1.0), 0.0).astype(np.float32)


def write_input(folder: str, shape, seed: int = 0) -> str:
    """The synthetic scan written as `folder`/flair.nii.gz (1 mm voxels); its path."""
    from unet_jax.data.medical_io import Geometry, Volume, write_volume

    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, INPUT_NAME)
    write_volume(path, Volume(synthetic_flair(shape, seed), Geometry.identity(3, (1.0, 1.0, 1.0))))
    return path


def flair_manifest(crop: bool) -> dict:
    """The manifest data_prep.volumes writes for a FLAIR-only folder layout
    (what Predictor reads: channels, normalisation, spacing, crop, slices)."""
    return {
        "dataset": "volumes", "source_layout": "folders", "layout": "volumes", "image_shape": None,
        "num_channels": 1, "channels": ["FLAIR*"], "label_pattern": None, "mask_pattern": None,
        "image_dtype": "float32", "mask": "uint8 labels", "num_classes": 2, "labelled": True,
        "preprocessing": {"intensity": [{"method": "zscore", "foreground": "nonzero"}], "label_map": {},
                          "spacing": None, "crop": "nonzero bounding box" if crop else None,
                          "slices": None, "slice_size": None},
        "splits": {"train": {"num_patients": 1, "num_examples": 1, "num_slices": 1, "patients": []}},
    }


def wmh_config(patch=None, features: int | None = None):
    """configs/wmh_3d.py with `patch` and `features` (None: the config's)."""
    from configs import wmh_3d

    config = wmh_3d.get_config()
    if patch:
        config.data.patch_size = tuple(int(p) for p in patch)
    if features:
        config.model.features = int(features)
    return config


def build_predictor(config, manifest: dict, *, tta: bool, batch_size: int | None):
    """A Predictor of `config` with randomly initialised parameters (no workdir)."""
    from unet_jax import parallel, run
    from unet_jax.builders import input_shape
    from unet_jax.predict import Predictor

    mesh = parallel.make_mesh()
    model = run.build_model(config)
    state = run.initial_state(config, model, mesh, input_shape(config, manifest), total_steps=1)
    return Predictor(config, manifest, state, mesh, tta=tta, batch_size=batch_size)


def torch_model_spec(config) -> dict:
    """What the PyTorch side needs to build the same U-Net; ValueError for
    variants torch_unet_reference.py cannot mirror."""
    from unet_jax.run import build_model

    model = build_model(config)
    convs = model.level_convs()
    unsupported = {"block": model.block != "plain", "attention": model.attention,
                   "upsample": model.upsample != "transpose", "bottleneck": model.bottleneck != "conv",
                   "norm": model.norm not in ("batch", "none"), "mixed_precision": config.mixed_precision,
                   "num_convs": set(convs) != {2} or model.decoder_num_convs != 2}
    if any(unsupported.values()):
        raise ValueError(f"the PyTorch reference U-Net cannot mirror {[k for k, v in unsupported.items() if v]}")
    return {"in_channels": 1, "out_channels": model.out_channels, "features": model.features,
            "depth": model.depth, "norm": model.norm, "kernels": [list(k) for k in model.level_kernels(3)],
            "strides": [list(s) for s in model.level_strides(3)]}


def torch_weights(params, batch_stats, spec: dict) -> dict[str, np.ndarray]:
    """Our U-Net's variables as the state dict of `build_torch_unet(spec)`
    (channels-last kernels [*k, Cin, Cout] to [Cout, Cin, *k]; an up-conv's
    matmul kernel [Cin, prod(s) * F] to ConvTranspose3d's [Cin, F, *s])."""
    depth, out = spec["depth"], {}

    def conv(prefix, p):
        out[f"{prefix}.weight"] = np.transpose(np.asarray(p["kernel"]), (4, 3, 0, 1, 2))
        if "bias" in p:
            out[f"{prefix}.bias"] = np.asarray(p["bias"])

    def block(prefix, name):
        for i in range(2):  # reference.block: conv, norm, ReLU, conv, norm, ReLU
            conv(f"{prefix}.{3 * i}", params[name][f"conv_{i}"])
            if spec["norm"] == "batch":
                norm, stats = params[name][f"conv_{i}_norm"], batch_stats[name][f"conv_{i}_norm"]
                out.update({f"{prefix}.{3 * i + 1}.{k}": np.asarray(v) for k, v in
                            (("weight", norm["scale"]), ("bias", norm["bias"]), ("running_mean", stats["mean"]),
                             ("running_var", stats["var"]), ("num_batches_tracked", np.int64(0)))})

    for level in range(depth):
        block(f"down.{level}", f"enc_{level}")
    block("bottom", "bottleneck")
    for i, level in enumerate(reversed(range(depth))):
        block(f"dec.{i}", f"dec_{level}")
        kernel, bias = np.asarray(params[f"up_{level}"]["kernel"]), np.asarray(params[f"up_{level}"]["bias"])
        out[f"ups.{i}.weight"] = kernel.reshape(kernel.shape[0], *spec["strides"][level], bias.size
                                                ).transpose(0, 4, 1, 2, 3)
        out[f"ups.{i}.bias"] = bias
    conv("out", params["head"])
    return out


def num_windows(image: np.ndarray, patch, overlap: float, crop: bool) -> int:
    """Windows our sliding window visits for `image` (cropped as preprocessing does)."""
    from unet_jax import inference

    shape = image.shape
    if crop and image.any():
        shape = tuple(int(i.max()) - int(i.min()) + 1 for i in np.nonzero(image))
    return int(np.prod([len(inference.window_starts(max(n, p), p, overlap)) for n, p in zip(shape, patch)]))


# --- the two sides ----------------------------------------------------------------------

def measure_ours(predictor, input_path: str, out_dir: str, repeats: int) -> dict:
    """`predict_files` on the one scan: warm-up (compiles), then the median of `repeats`."""
    import jax

    from unet_jax.predict import predict_files

    def run(path):
        return predict_files(predictor, path, out_dir, overwrite=True, overlays=False, progress=False)

    first_s = median_seconds(run, input_path, 1)
    seconds = median_seconds(run, input_path, repeats)
    device = jax.devices()[0]
    return {"side": "unet_jax", "version": jax.__version__, "platform": device.platform,
            "device": str(device.device_kind), "devices": jax.device_count(), "cpus": os.cpu_count(),
            "params": int(sum(x.size for x in jax.tree.leaves(predictor.states[0].params))),
            "first_s": round(first_s, 3), "seconds": round(seconds, 3),
            "output": os.path.join(out_dir, INPUT_NAME)}


def build_torch_unet(reference, spec: dict):
    """reference.UNet with each level's kernels and pooling as `spec` gives
    them (convs with biases and no BatchNorm for norm "none"), in eval mode."""
    import torch
    from torch import nn

    class LevelUNet(reference.UNet):
        """The reference's forward with a pooling of its own per level."""

        def forward(self, x):
            skips = []
            for block, pool in zip(self.down, self.pools):
                x = block(x)
                skips.append(x)
                x = pool(x)
            x = self.bottom(x)
            for up, dec, skip in zip(self.ups, self.dec, reversed(skips)):
                x = dec(torch.cat([up(x), skip], dim=1))
            return self.out(x)

    depth, kernels, strides, norm = spec["depth"], spec["kernels"], spec["strides"], spec["norm"]
    net = LevelUNet(in_ch=spec["in_channels"], out_ch=spec["out_channels"], base=spec["features"], depth=depth,
                    dims=3)

    def adapt(block, kernel):
        for i, layer in enumerate(block):
            if isinstance(layer, nn.Conv3d):
                block[i] = nn.Conv3d(layer.in_channels, layer.out_channels, tuple(kernel),
                                     padding=tuple(k // 2 for k in kernel), bias=norm == "none")
            elif isinstance(layer, nn.BatchNorm3d) and norm == "none":
                block[i] = nn.Identity()

    for level, block in enumerate(net.down):
        adapt(block, kernels[level])
    adapt(net.bottom, kernels[depth])
    for i, level in enumerate(reversed(range(depth))):
        adapt(net.dec[i], kernels[level])
        net.ups[i] = nn.ConvTranspose3d(net.ups[i].in_channels, net.ups[i].out_channels, tuple(strides[level]),
                                        stride=tuple(strides[level]))
    net.pools = nn.ModuleList(nn.MaxPool3d(tuple(s), stride=tuple(s)) for s in strides)
    return net.eval()


def measure_monai(spec: dict) -> dict:
    """The MONAI side, in this process (see the module doc); `spec` is what
    `main` wrote: input, output folder, weights, model, window, repeats."""
    import monai
    import torch
    from monai.inferers import sliding_window_inference
    from monai.transforms import CropForeground, NormalizeIntensity
    from monai.utils import optional_import

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    model = build_torch_unet(load_torch_reference(spec["torch_reference"]), spec["model"])
    weights = np.load(spec["weights"])
    model.load_state_dict({k: torch.from_numpy(np.array(weights[k])) for k in weights.files}, strict=True)
    # channels_last_3d, as torch_unet_reference.py runs by default: faster convolutions on CPU
    # (4.2 s against 5.6 s for a batch of four 128x128x16 windows, measured on 2 cores).
    layout = torch.contiguous_format if spec["torch_contiguous"] else torch.channels_last_3d
    model = model.to(memory_format=layout)
    out_dir, patch, batch = spec["out_dir"], tuple(spec["patch"]), spec["batch"]
    os.makedirs(out_dir, exist_ok=True)
    sigmoid = spec["model"]["out_channels"] == 1
    flips = [tuple(a + 2 for a in c) for n in range(1, 4) for c in itertools.combinations(range(3), n)] \
        if spec["tta"] else []
    cropper = CropForeground(select_fn=lambda x: x != 0, margin=0, allow_smaller=True)
    normalize = NormalizeIntensity(nonzero=True)
    windows = []

    def activation(x):
        logits = model(x.contiguous(memory_format=layout))
        return torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=1)

    def predictor(x):
        windows.append(x.shape[0])
        total = activation(x)
        for dims in flips:
            total = total + torch.flip(activation(torch.flip(x, dims)), dims)
        return total / (1 + len(flips))

    if optional_import("nibabel")[1] or optional_import("itk")[1]:  # MONAI's own NIfTI I/O
        from monai.data import MetaTensor
        from monai.transforms import LoadImage, SaveImage

        io = "monai LoadImage/SaveImage"
        loader = LoadImage(image_only=True, ensure_channel_first=True)
        saver = SaveImage(output_dir=out_dir, output_postfix="", output_ext=".nii.gz", output_dtype=np.uint8,
                          resample=False, separate_folder=False, print_log=False)

        def load(path):
            image = loader(path)
            return image, image  # [1, X, Y, Z] and what SaveImage needs (its meta)

        def save(labels, image):
            saver(MetaTensor(labels, meta=image.meta))  # the meta holds the affine
    else:
        import SimpleITK as sitk

        io = "SimpleITK (MONAI has no NIfTI reader here: no nibabel or itk)"

        def load(path):
            image = sitk.ReadImage(path)
            array = np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0), np.float32)
            return torch.from_numpy(array)[None], image  # [1, X, Y, Z] as MONAI's readers give it

        def save(labels, image):
            out = sitk.GetImageFromArray(np.ascontiguousarray(labels[0].numpy().transpose(2, 1, 0)))
            out.CopyInformation(image)
            sitk.WriteImage(out, os.path.join(out_dir, INPUT_NAME), useCompression=True)

    def run(path):
        with torch.inference_mode():
            image, source = load(path)
            start, end = cropper.compute_bounding_box(image) if spec["crop"] else ([0] * 3, list(image.shape[1:]))
            box = (slice(None), *(slice(int(a), int(b)) for a, b in zip(start, end)))
            x = normalize(cropper.crop_pad(image, start, end) if spec["crop"] else image)
            probs = sliding_window_inference(x[None], patch, batch, predictor, overlap=spec["overlap"],
                                             mode=spec["mode"])[0]
            labels = (probs[:1] > 0.5) if sigmoid else probs.argmax(dim=0, keepdim=True)
            full = torch.zeros(image.shape, dtype=torch.uint8)
            full[box] = torch.as_tensor(labels).to(torch.uint8)
            save(full, source)

    first_s = median_seconds(run, spec["input"], 1)
    per_case = sum(windows)
    seconds = median_seconds(run, spec["input"], spec["repeats"])
    return {"side": "torch+monai", "version": f"{torch.__version__}/{monai.__version__}", "io": io,
            "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "memory_format": "contiguous" if spec["torch_contiguous"] else "channels_last_3d",
            "params": int(sum(p.numel() for p in model.parameters())), "windows": per_case,
            "first_s": round(first_s, 3), "seconds": round(seconds, 3),
            "output": os.path.join(out_dir, INPUT_NAME)}


# --- the command --------------------------------------------------------------------------

def agreement(ours_path: str, theirs_path: str) -> dict:
    """How far two label files agree: the share of equal voxels and the Dice of their foregrounds."""
    from unet_jax.data.medical_io import read_volume

    a, b = read_volume(ours_path).array > 0, read_volume(theirs_path).array > 0
    both = int(a.sum() + b.sum())
    return {"equal_voxels": round(float((a == b).mean()), 6),
            "foreground_dice": round(2 * float((a & b).sum()) / both, 4) if both else 1.0,
            "foreground_voxels": [int(a.sum()), int(b.sum())]}


def table(result: dict) -> str:
    ours, theirs, voxels = result["unet_jax"], result.get("torch+monai"), result["voxels"]
    lines = [f"one {'x'.join(map(str, result['shape']))} FLAIR .nii.gz -> labels .nii.gz: patch "
             f"{'x'.join(map(str, result['patch']))}, overlap {result['overlap']}, {result['mode']} blending, "
             f"batch {result['batch']}, TTA {'8 flips' if result['tta'] else 'off'}, crop "
             f"{'non-zero box' if result['crop'] else 'none'}",
             f"{'side':<14}{'s/case':>9}{'voxels/s':>12}{'first run s':>13}{'windows':>9}{'params':>10}"
             "  device / threads"]
    rows = [(ours, f"jax {ours['version']} {ours['platform']} ({ours['device']}) x{ours['devices']}, "
                   f"{ours['cpus']} CPUs")]
    if theirs:
        rows.append((theirs, f"torch/monai {theirs['version']}, {theirs['threads']} threads "
                             f"(interop {theirs['interop_threads']}), {theirs['memory_format']}; I/O {theirs['io']}"))
    for row, where in rows:
        lines.append(f"{row['side']:<14}{row['seconds']:>9.2f}{voxels / row['seconds']:>12,.0f}"
                     f"{row['first_s']:>13.2f}{row['windows']:>9}{row['params']:>10,}  {where}")
    if theirs:
        agree = result["agreement"]
        lines.append(f"ours / MONAI time: {result['ours_over_monai']:.3f}  (speedup {result['speedup']:.2f}x); "
                     f"label maps agree on {100 * agree['equal_voxels']:.3f}% of voxels, foreground Dice "
                     f"{agree['foreground_dice']:.4f} ({agree['foreground_voxels'][0]} vs "
                     f"{agree['foreground_voxels'][1]} voxels)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[182, 218, 182])
    parser.add_argument("--patch", type=int, nargs=3, default=None, help="default: the config's (128 128 16)")
    parser.add_argument("--features", type=int, default=None, help="default: the config's (16)")
    parser.add_argument("--batch", type=int, default=None, help="windows at a time; default: eval_batch_size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tta", action="store_true", help="both sides average the 8 flips of every window")
    parser.add_argument("--crop", action=argparse.BooleanOptionalAction, default=True,
                        help="both sides crop to the non-zero bounding box (the manifest's crop)")
    parser.add_argument("--torch_reference", default="", help="path of torch_unet_reference.py: also run MONAI")
    parser.add_argument("--torch_threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--torch_contiguous", action="store_true",
                        help="run the PyTorch U-Net in NCDHW rather than channels_last_3d (slower on CPU)")
    parser.add_argument("--out_dir", default="", help="keep the input and both label maps here (default: a "
                                                      "temporary folder, removed)")
    parser.add_argument("--json", default="", help="also write the result here")
    parser.add_argument("--torch_only", default="", help=argparse.SUPPRESS)  # the subprocess's spec file
    args = parser.parse_args(argv)
    if args.torch_only:
        with open(args.torch_only) as f:
            print(json.dumps(measure_monai(json.load(f))), flush=True)
        return {}
    with tempfile.TemporaryDirectory(prefix="predict_files_bench_") as tmp:
        return _run(args, args.out_dir or tmp)


def _run(args, work: str) -> dict:
    import jax

    config = wmh_config(args.patch, args.features)
    manifest = flair_manifest(args.crop)
    input_path = write_input(os.path.join(work, "input"), args.shape)
    predictor = build_predictor(config, manifest, tta=args.tta, batch_size=args.batch)
    patch, window = list(predictor.patch), config.data.sliding_window
    result = {"shape": list(args.shape), "patch": patch, "features": config.model.features,
              "batch": predictor.batch_size, "overlap": window.overlap, "mode": window.importance,
              "tta": predictor.tta, "crop": args.crop, "repeats": args.repeats,
              "voxels": int(np.prod(args.shape))}
    ours = measure_ours(predictor, input_path, os.path.join(work, "unet_jax"), args.repeats)
    from unet_jax.data.medical_io import read_volume

    ours["windows"] = num_windows(read_volume(input_path).array, patch, window.overlap, args.crop)
    result["unet_jax"] = ours
    if args.torch_reference:
        spec = torch_model_spec(config)
        weights = os.path.join(work, "torch_weights.npz")
        state = jax.device_get(predictor.states[0])
        np.savez(weights, **torch_weights(state.params, state.batch_stats, spec))
        spec_path = os.path.join(work, "monai_spec.json")
        with open(spec_path, "w") as f:
            json.dump({"input": input_path, "out_dir": os.path.join(work, "monai"), "weights": weights,
                       "torch_reference": os.path.abspath(args.torch_reference), "model": spec, "patch": patch,
                       "batch": predictor.batch_size, "overlap": window.overlap, "mode": window.importance,
                       "tta": predictor.tta, "crop": args.crop, "repeats": args.repeats,
                       "threads": args.torch_threads, "torch_contiguous": args.torch_contiguous}, f)
        # Its own process, so the two frameworks' thread pools do not compete.
        done = subprocess.run([sys.executable, "-m", "unet_jax.benchmarks.predict_files", "--torch_only", spec_path],
                              capture_output=True, text=True)
        if done.returncode:
            sys.stderr.write(done.stderr[-4000:])
            raise RuntimeError(f"the MONAI side failed (exit {done.returncode})")
        theirs = json.loads(done.stdout.strip().splitlines()[-1])
        result["torch+monai"] = theirs
        result["ours_over_monai"] = round(ours["seconds"] / theirs["seconds"], 3)
        result["speedup"] = round(theirs["seconds"] / ours["seconds"], 3)
        result["agreement"] = agreement(ours["output"], theirs["output"])
    for row in (result["unet_jax"], result.get("torch+monai")):
        if row:
            row["voxels_per_s"] = round(result["voxels"] / row["seconds"])
    print(table(result), flush=True)
    if args.json:
        from unet_jax.files import write_json

        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
