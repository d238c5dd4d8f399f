"""Device mesh and batch placement: the same code on one CPU, one GPU, many GPUs
and many hosts; only the mesh changes.

Parameters are replicated and the batch is sharded along the one mesh axis
`data`, so jit compiles data parallelism (gradient all-reduce, BatchNorm
statistics over the global batch) from the shardings alone.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed() -> None:
    """Joins a multi-host run when the launcher set up the environment (SLURM,
    or JAX_COORDINATOR_ADDRESS); a no-op on one host."""
    if "SLURM_NTASKS" in os.environ and int(os.environ["SLURM_NTASKS"]) > 1 \
            or "JAX_COORDINATOR_ADDRESS" in os.environ:
        jax.distributed.initialize()


def make_mesh(devices: list | None = None) -> Mesh:
    """A one-axis mesh over `devices`, by default every device of every process."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(global_batch: int, num_devices: int, grad_accum_steps: int = 1,
                     name: str = "batch_size") -> int:
    """The per-process batch size; ValueError unless the global batch splits
    evenly over the devices (of every process) and accumulation micro-batches."""
    if global_batch < 1 or global_batch % (num_devices * grad_accum_steps):
        raise ValueError(f"{name}={global_batch} must be a positive multiple of the {num_devices} devices"
                         + (f" times grad_accum_steps={grad_accum_steps}" if grad_accum_steps > 1 else ""))
    return global_batch // jax.process_count()


def to_global(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles this process's share of a batch into global arrays sharded on `data`."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
