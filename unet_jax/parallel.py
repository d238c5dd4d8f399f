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

from unet_jax.errors import ConfigError

DATA_AXIS = "data"


def initialize_distributed() -> None:
    """Joins a multi-process run through JAX's distributed runtime when a
    launcher set one up: SLURM with several tasks (everything from SLURM's
    environment), or JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and
    JAX_PROCESS_ID (launch/local_processes.sh); a no-op otherwise. CPU
    processes talk over gloo."""
    if "JAX_COORDINATOR_ADDRESS" in os.environ:
        missing = [k for k in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if k not in os.environ]
        if missing:
            raise ConfigError(f"JAX_COORDINATOR_ADDRESS is set but {' and '.join(missing)} not; set both, or "
                              "use launch/local_processes.sh")
        _use_gloo_on_cpu()
        jax.distributed.initialize(num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]))
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        _use_gloo_on_cpu()
        jax.distributed.initialize()


def _use_gloo_on_cpu() -> None:
    # Without a collectives implementation, CPU devices of several processes cannot all-reduce.
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


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


def device_flags(flag: bool, mesh: Mesh) -> jax.Array:
    """This process's `flag` once per local device, as one global boolean
    array sharded on `data`: `jnp.any` of it, inside a jitted step, is true
    where the flag is true on any process."""
    return jax.make_array_from_process_local_data(batch_sharded(mesh), np.full(len(mesh.local_devices), flag))
