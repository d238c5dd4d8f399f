#!/usr/bin/env bash
# Train on every GPU of this machine (or those listed in GPUS) as one process:
# JAX sees all local devices and the mesh spans them, so the global batch is
# split across the GPUs and gradients are averaged over all of them.
#   launch/one_host.sh --config=configs/lgg.py --workdir=runs/lgg
#   GPUS=0,1 launch/one_host.sh --config=configs/lgg.py --workdir=runs/lgg --config.batch_size=32
# config.batch_size (and eval_batch_size) must be a multiple of the GPU count.
set -euo pipefail
if [ $# -eq 0 ]; then
  echo "usage: [GPUS=0,1,...] $0 --config=CONFIG --workdir=DIR [--config.key=value ...]" >&2
  exit 2
fi
if [ -n "${GPUS:-}" ]; then
  export CUDA_VISIBLE_DEVICES="$GPUS"
fi
exec python -m unet_jax.main "$@"
