"""Data-parallel training over several processes, on JAX's own multi-process machinery.

One process per host (or per GPU), each driving its local devices; together they form one
global `jax.sharding.Mesh` with a ``"data"`` axis over *every* process's devices. The
train step of `rnn_jax.train.make_train_step` (``mesh=``) then runs unchanged: the
parameters and optimizer state are replicated, each global batch is split along its first
axis, and the compiler inserts the gradient all-reduce (NCCL on GPUs, ICI on TPUs, gloo
between CPU processes). Nothing here sends a byte itself.

Typical use (every process runs the same program):

    from rnn_jax import distributed, train

    distributed.initialize("10.0.0.1:1234", num_processes=4, process_id=i)  # or () in SLURM
    mesh = distributed.global_mesh()
    state = distributed.replicate(state, mesh)            # host values, same on every process
    step = train.make_train_step(loss_fn, optimizer, mesh=mesh)
    rows = data.batch_indices(seed, n, global_batch, t)    # the same on every process
    batch = distributed.take({"x": x, "y": y}, rows, mesh)  # each process reads its own rows
    state, metrics = step(state, batch)

What is sharded: the batch (and so the forward/backward activations). What is replicated:
parameters, optimizer state, RNG, metrics. Per step the processes exchange one all-reduce
of the gradients (the parameter count in float32) and a few scalars.

Global batches are built from *global row numbers*: process ``p`` is asked only for the
rows of its own devices' shards, so the sequence of global batches, and so the training run,
is the same whatever the number of processes (up to the reduction order of the all-reduce).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rnn_jax.data import batches as data_batches
from rnn_jax.train import DATA_AXIS, PyTree, make_mesh, replicate

__all__ = [
    "eval_batches",
    "global_batch",
    "global_mesh",
    "initialize",
    "is_main_process",
    "replicate",
    "sync",
    "take",
]


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 120,
) -> None:
    """Joins this process to the others (``jax.distributed.initialize``); call it first.

    Args:
      coordinator: ``"host:port"`` of process 0's coordination service. With
        ``num_processes`` and ``process_id`` it names the group explicitly (the local
        launcher, `rnn_jax.launch`, does this). With all three None, JAX detects the
        cluster itself (SLURM, Open MPI, Kubernetes/JobSet, Cloud TPU).
      num_processes: how many processes take part.
      process_id: this one's index, ``0 <= process_id < num_processes``; process 0 writes
        the logs and checkpoints.
      timeout_s: how long to wait for every process to join before failing.

    CPU processes exchange data through gloo (``jax_cpu_collectives_implementation``); the
    setting only concerns the CPU backend, so it is made on every platform.

    Must run before anything touches a JAX device (the backends are created once).
    """
    given = [coordinator is None, num_processes is None, process_id is None]
    if any(given) and not all(given):
        raise ValueError(
            "pass coordinator, num_processes and process_id together (or none of them, to "
            f"let JAX detect the cluster); got {coordinator=}, {num_processes=}, {process_id=}"
        )
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id must be in [0, {num_processes}), got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=timeout_s,
    )


def is_main_process() -> bool:
    """True in process 0 (and in a single-process run): the one that writes files."""
    return jax.process_index() == 0


# A 1-D "data" mesh over every device of every process: jax.devices() lists them all.
global_mesh = make_mesh


def sync(name: str) -> None:
    """Waits until every process has reached the barrier ``name`` (a no-op alone)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def global_batch(fetch: Callable[[np.ndarray], PyTree], size: int, mesh: Mesh) -> PyTree:
    """A global batch of ``size`` rows split over ``mesh``'s ``"data"`` axis, of which this
    process reads only the rows its own devices hold.

    Args:
      fetch: ``fetch(rows) -> pytree of numpy arrays`` with leading axis ``len(rows)``: the
        batch rows numbered ``rows`` (int64, global row numbers in ``[0, size)``). Called
        once per distinct local shard. Must be the same function on every process.
      size: the global batch size; divisible by the number of devices.
      mesh: e.g. `global_mesh`.

    Returns:
      the pytree of global ``jax.Array``\\ s, each ``(size, ...)``, sharded ``P("data")``.
    """
    devices = mesh.shape[DATA_AXIS]
    if size % devices:
        raise ValueError(f"global batch size {size} is not divisible by the {devices} devices")
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    indices = sharding.addressable_devices_indices_map((size,)).values()
    spans = dict.fromkeys(index[0].indices(size) for index in indices)  # distinct, in order
    fetched = {span: jax.tree.flatten(fetch(np.arange(*span))) for span in spans}
    leaves, treedef = next(iter(fetched.values()))

    def assemble(i: int) -> jax.Array:
        shard = lambda index: fetched[index[0].indices(size)][0][i]
        return jax.make_array_from_callback((size, *np.shape(leaves[i])[1:]), sharding, shard)

    return jax.tree.unflatten(treedef, [assemble(i) for i in range(len(leaves))])


def take(arrays: PyTree, rows: np.ndarray, mesh: Mesh | None = None) -> PyTree:
    """``arrays`` (e.g. a dict of numpy arrays, each ``(N, ...)``) at ``rows``: a training batch
    by example indices (e.g. `rnn_jax.data.batch_indices`, the same on every process). Without
    ``mesh``, numpy arrays; with one, global arrays of which each process gathered only its own
    rows."""
    rows = np.asarray(rows)
    pick = lambda r: jax.tree.map(lambda a: a[r], arrays)
    return pick(rows) if mesh is None else global_batch(lambda r: pick(rows[r]), len(rows), mesh)


def eval_batches(
    arrays: dict[str, np.ndarray], batch_size: int, mesh: Mesh | None = None
) -> list[dict]:
    """A whole split, in order, as batches of ``batch_size`` rows plus a ``"mask"`` (1.0 for
    a real example, 0.0 for the padding of the last batch), for `rnn_jax.train.evaluate`.

    Every example is in exactly one batch, once: with a metric that weights by the mask the
    totals and the count are exact whatever ``batch_size`` and the number of processes.
    With ``mesh``, each batch is global and each process reads only its own rows.
    """
    if mesh is None:
        return list(data_batches.eval_batches(arrays, batch_size))
    starts = range(0, data_batches.count_examples(arrays), batch_size)
    fetch_from = lambda start: lambda rows: data_batches.rows_with_mask(arrays, start + rows)
    return [global_batch(fetch_from(start), batch_size, mesh) for start in starts]
