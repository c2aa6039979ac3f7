"""Model-agnostic training utilities: train state, jitted train step, evaluation.

Nothing here knows about recurrent cells. Every function takes a loss or metric
function over an arbitrary parameter pytree, so the same step drives an RNN
classifier, a language model or the toy MLP in the tests.

Conventions
-----------
* ``loss_fn(params, batch, rng) -> (loss, aux)``: ``loss`` is a scalar (a *mean*
  over the batch, so the learning rate does not depend on the batch size) and
  ``aux`` a dict of scalar metrics (may be empty).
* ``batch`` is any pytree of arrays whose leading axis is the batch axis; a
  padded one carries a ``"mask"`` (`pad_batch`, `example_mask`).
* ``metric_fn(params, batch) -> dict`` returns per-batch *sums*, see `evaluate`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .checkpoint import save_checkpoint
from .data.batches import count_examples, rows_with_mask

PyTree = Any
Batch = Any
Metrics = dict[str, jax.Array]
LossFn = Callable[[PyTree, Batch, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]
MetricFn = Callable[[PyTree, Batch], Mapping[str, jax.Array]]

DATA_AXIS = "data"

__all__ = [
    "DATA_AXIS",
    "TrainState",
    "accuracy",
    "check_finite",
    "check_state_finite",
    "create_train_state",
    "default_optimizer",
    "evaluate",
    "example_mask",
    "make_mesh",
    "make_train_step",
    "pad_batch",
    "replicate",
    "shard_batch",
    "softmax_cross_entropy",
    "train_loop",
]


@flax.struct.dataclass
class TrainState:
    """Everything a training run needs to continue bit-exactly; a pytree.

    Attributes:
      params: the model parameters, any pytree of arrays.
      opt_state: the optax optimizer state for ``params``.
      step: int32 scalar array, the number of updates applied so far.
      rng: a ``jax.random`` key (typed, from ``jax.random.key``, or a raw
        ``uint32[2]`` from ``jax.random.PRNGKey``). Each train step splits it,
        so dropout and other randomness depend on the state alone.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from rnn_jax.train import TrainState, create_train_state
      >>> state = TrainState.create({"w": jnp.ones(3)}, optax.sgd(0.1), jax.random.PRNGKey(0))
      >>> int(state.step), jax.tree.structure(state.params)
      (0, PyTreeDef({'w': *}))
      >>> int(create_train_state({"w": jnp.zeros(2)}, optax.adam(1e-3), jax.random.PRNGKey(0)).step)
      0
    """

    params: PyTree
    opt_state: optax.OptState
    step: jax.Array
    rng: jax.Array

    @classmethod
    def create(
        cls, params: PyTree, optimizer: optax.GradientTransformation, rng: jax.Array
    ) -> TrainState:
        """Builds the state at step 0.

        The parameters are copied: train steps donate the state's buffers, and
        the copy keeps the caller's ``params`` arrays valid after the first step.
        """
        params = jax.tree.map(jnp.array, params)  # jnp.array copies
        return cls(
            params=params,
            opt_state=optimizer.init(params),
            step=jnp.zeros((), jnp.int32),
            rng=jnp.array(rng),
        )


create_train_state = TrainState.create  # the functional spelling the guides use


def default_optimizer(
    learning_rate: float | optax.Schedule = 1e-3,
    *,
    clip_norm: float | None = None,
    clip_value: float | None = None,
) -> optax.GradientTransformation:
    """RMSProp, the project default (as the TensorFlow seed notebook), with clipping.

    Args:
      learning_rate: step size or optax schedule.
      clip_norm: if set, gradients are rescaled so their global L2 norm is at
        most ``clip_norm`` (``optax.clip_by_global_norm``).
      clip_value: if set, each gradient element is clipped to
        ``[-clip_value, clip_value]`` (``optax.clip``), as ``np.clip(d, -1, 1)``
        in the numpy seeds.

    Element-wise clipping runs first, then the global-norm clipping, so the
    global bound holds for what RMSProp sees. Note RMSProp divides by a running
    RMS, so clipping matters less for the first update than for the ones after a
    gradient spike (which would otherwise inflate the running RMS).

    ``optax.rmsprop`` defaults (decay 0.9, eps 1e-8 inside the sqrt, second
    moment initialised to 0) differ slightly from TF1's ``RMSPropOptimizer``
    (eps 1e-10, second moment initialised to 1).

    Examples:
      >>> import jax.numpy as jnp
      >>> from rnn_jax.train import default_optimizer
      >>> optimizer = default_optimizer(1e-3, clip_norm=1.0)
      >>> params = {"w": jnp.zeros(2)}
      >>> updates, _ = optimizer.update({"w": jnp.array([30.0, 40.0])}, optimizer.init(params))
      >>> updates["w"]  # RMSProp's first step: -lr g / sqrt(0.1 g^2) = -lr sqrt(10) sign(g)
      Array([-0.00316..., -0.00316...], dtype=float32)
    """
    # Element-wise first, then the global norm (see above).
    clips = [("clip_value", clip_value, optax.clip),
             ("clip_norm", clip_norm, optax.clip_by_global_norm)]  # fmt: skip
    for name, bound, _ in clips:
        if bound is not None and bound <= 0:
            raise ValueError(f"{name} must be positive, got {bound}")
    parts = [clip(bound) for _, bound, clip in clips if bound is not None]
    return optax.chain(*parts, optax.rmsprop(learning_rate))


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over the first ``num_devices`` devices.

    Axis type is Auto (sharding propagated by the compiler), which is what
    ``in_shardings``/``out_shardings`` in `make_train_step` expect.

    Examples:
      >>> from rnn_jax.train import DATA_AXIS, make_mesh
      >>> mesh = make_mesh(1)  # the first device only; make_mesh() takes them all
      >>> dict(mesh.shape)
      {'data': 1}
    """
    devices = jax.devices()
    if num_devices is None:
        num_devices = len(devices)
    if not 1 <= num_devices <= len(devices):
        raise ValueError(f"num_devices={num_devices} but {len(devices)} devices are available")
    return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


def _check_divisible(batch: Batch, mesh: Mesh) -> None:
    """Raises ValueError unless every leaf's leading axis splits evenly over devices."""
    if DATA_AXIS not in mesh.shape:
        raise ValueError(f"mesh needs a {DATA_AXIS!r} axis, has {tuple(mesh.shape)}")
    n = mesh.shape[DATA_AXIS]
    for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
        shape = np.shape(leaf)
        if not shape:
            raise ValueError(
                f"batch leaf {jax.tree_util.keystr(path)} is a scalar; every batch leaf "
                "needs a leading batch axis to be sharded"
            )
        if shape[0] % n:
            raise ValueError(
                f"batch size {shape[0]} (leaf {jax.tree_util.keystr(path)}) is not "
                f"divisible by the {n} devices of the mesh's {DATA_AXIS!r} axis"
            )


def shard_batch(batch: Batch, mesh: Mesh) -> Batch:
    """Places ``batch`` with its leading axis split over the mesh's ``"data"`` axis.

    Examples:
      >>> import numpy as np
      >>> from jax.sharding import PartitionSpec
      >>> from rnn_jax.train import make_mesh, shard_batch
      >>> batch = shard_batch({"x": np.zeros((4, 3))}, make_mesh(1))
      >>> batch["x"].sharding.spec == PartitionSpec("data")  # batch axis over the devices
      True
    """
    _check_divisible(batch, mesh)
    return _put(batch, NamedSharding(mesh, P(DATA_AXIS)))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """Places a full copy of ``tree`` on every device of ``mesh``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from rnn_jax.train import make_mesh, replicate
      >>> params = replicate({"w": jnp.ones(3)}, make_mesh(1))
      >>> params["w"].sharding.is_fully_replicated
      True
    """
    return _put(tree, NamedSharding(mesh, P()))


def _put(tree: PyTree, sharding: NamedSharding) -> PyTree:
    """``jax.device_put``, also onto a mesh that spans several processes (see
    `rnn_jax.distributed`): there, leaves already placed so pass through and the others
    go from the host (each process holds the same value; ``device_put`` refuses arrays
    committed to a local device, and typed PRNG keys go as their key data)."""
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def put(x: Any) -> Any:
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = put(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(x), sharding)

    return jax.tree.map(put, tree)


def make_train_step(
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    mesh: Mesh | None = None,
    donate: bool = True,
) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """Builds a jitted ``train_step(state, batch) -> (new_state, metrics)``.

    Args:
      loss_fn: ``loss_fn(params, batch, rng) -> (loss, aux)`` (module docstring).
      optimizer: the optax transformation whose state is ``state.opt_state``.
      mesh: if given (a mesh with a ``"data"`` axis, see `make_mesh`), the
        state is replicated on every device and the batch split along axis 0;
        the compiler inserts the gradient all-reduce. Batch sizes that do not
        divide by the number of devices raise ValueError before any compute.
      donate: donate the input state's buffers (``donate_argnums=0``) so the
        update happens in place. The passed-in state must not be used again;
        use the returned one.

    Returns:
      ``train_step``. ``metrics`` holds ``"loss"``, the ``aux`` entries and
      ``"grad_norm"`` (global L2 norm of the raw, unclipped gradient).

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from rnn_jax import train
      >>> def loss_fn(params, batch, rng):  # least squares: w -> 2
      ...     return jnp.mean((batch["x"] * params["w"] - batch["y"]) ** 2), {}
      >>> optimizer = optax.sgd(0.1)
      >>> state = train.create_train_state({"w": jnp.array(0.0)}, optimizer, jax.random.PRNGKey(0))
      >>> step = train.make_train_step(loss_fn, optimizer)
      >>> batch = {"x": jnp.array([1.0, 2.0]), "y": jnp.array([2.0, 4.0])}
      >>> state, metrics = step(state, batch)  # the old state is donated: use the new one
      >>> int(state.step), sorted(metrics), round(float(state.params["w"]), 4)
      (1, ['grad_norm', 'loss'], 1.0)
    """

    def step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        # Split rather than reuse: new_state.rng differs from state.rng, so the
        # randomness of step t is a function of the state at step t alone.
        rng, step_rng = jax.random.split(state.rng)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, step_rng
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        reserved = {"loss", "grad_norm"} & set(aux)
        if reserved:
            raise ValueError(f"loss_fn aux metrics must not use the reserved keys {reserved}")
        metrics = {"loss": loss, **aux, "grad_norm": optax.tree.norm(grads)}
        new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1, rng=rng)
        return new_state, metrics

    donate_argnums = (0,) if donate else ()
    if mesh is None:
        return jax.jit(step, donate_argnums=donate_argnums)

    replicated = NamedSharding(mesh, P())
    data = NamedSharding(mesh, P(DATA_AXIS))
    jitted = jax.jit(
        step,
        in_shardings=(replicated, data),
        out_shardings=(replicated, replicated),
        donate_argnums=donate_argnums,
    )

    def sharded_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        # Checked here because jit's own error (IndivisibleError) does not say
        # which leaf or how many devices in user terms.
        _check_divisible(batch, mesh)
        return jitted(state, batch)

    return sharded_step


def check_finite(metrics: Mapping[str, Any], step: int | jax.Array) -> None:
    """Raises FloatingPointError if the loss (or any other metric) is NaN or inf.

    Call it after each step, before saving a checkpoint, so that a diverged
    run stops with the last good checkpoint on disk. Fetches the metrics to the
    host (a device sync).

    Examples:
      >>> import math
      >>> from rnn_jax.train import check_finite
      >>> check_finite({"loss": 0.5}, step=3)  # fine: returns None
      >>> try:
      ...     check_finite({"loss": math.nan}, step=4)
      ... except FloatingPointError as error:
      ...     print(str(error).split(":")[0])
      non-finite loss nan at step 4
    """
    host = jax.device_get(dict(metrics))
    for name in sorted(host, key=lambda k: k != "loss"):  # the loss first
        value = np.asarray(host[name])
        if not np.all(np.isfinite(value)):
            shown = value.item() if value.size == 1 else value
            raise FloatingPointError(
                f"non-finite {name} {shown} at step {int(step)}: training diverged "
                "(lower the learning rate or clip gradients); the last checkpoint "
                "saved before this step is the last good one"
            )


def _is_float(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray) and jnp.issubdtype(x.dtype, jnp.inexact)


@jax.jit
def _all_finite(leaves: list[jax.Array]) -> jax.Array:
    """One fused on-device reduction: True iff every element of every leaf is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def check_state_finite(state: TrainState, step: int | jax.Array) -> None:
    """Raises FloatingPointError if ``state.params`` or ``state.opt_state`` holds a NaN or inf.

    `check_finite` cannot see this: a step's metrics are computed from the parameters
    *before* its update, so an update that makes them non-finite passes it. Costs one fused
    reduction on device and a one-bool fetch; only on failure are the leaves read one by one
    to name the first bad one.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from rnn_jax.train import check_state_finite, create_train_state
      >>> state = create_train_state({"w": jnp.array([1.0, jnp.inf])}, optax.sgd(0.1),
      ...                            jax.random.PRNGKey(0))
      >>> try:
      ...     check_state_finite(state, step=7)
      ... except FloatingPointError as error:
      ...     print(str(error).split(" (")[0])
      non-finite value in ['params']['w'] after step 7
    """
    tree = {"params": state.params, "opt_state": state.opt_state}
    flat = [(p, x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0] if _is_float(x)]
    if not flat or bool(_all_finite([x for _, x in flat])):
        return
    where = next(p for p, x in flat if not np.all(np.isfinite(np.asarray(x))))
    raise FloatingPointError(
        f"non-finite value in {jax.tree_util.keystr(where)} after step {int(step)} (its loss "
        "was finite: the loss is computed before the update); not saved, so the newest "
        "checkpoint on disk is the last good one"
    )


def train_loop(
    train_step: Callable[[TrainState, Batch], tuple[TrainState, Metrics]],
    state: TrainState,
    batches: Iterable[Batch] | Callable[[int], Batch],
    *,
    num_steps: int,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 0,
    keep: int | None = 3,
    metadata: dict | None = None,
    callback: Callable[[int, dict[str, float], TrainState], None] | None = None,
) -> tuple[TrainState, list[dict[str, float]]]:
    """Runs ``train_step`` until ``state.step == num_steps``, checkpointing.

    Args:
      train_step: from `make_train_step`.
      state: the state to start from (fresh, or restored from a checkpoint).
      batches: either ``batch_fn(step) -> batch``, which makes resuming exact
        (the batch of step ``t`` is the same whether or not the run was
        interrupted), or an iterable yielding the batches from ``state.step`` on
        (the loop stops early if it runs out).
      num_steps: the total step count to reach (not the number of new steps).
      checkpoint_dir: where `rnn_jax.checkpoint.save_checkpoint` writes (in a
        multi-process run, process 0 alone writes; see `rnn_jax.distributed`).
      checkpoint_every: save every this many steps (and at the end); 0 saves
        only at the end. Ignored without ``checkpoint_dir``.
      keep: how many checkpoints to keep.
      metadata: JSON-serialisable dict stored with each checkpoint.
      callback: called as ``callback(step, metrics, state)`` after each good step, with
        the state after it (evaluate ``state.params`` there, log, stop by raising).

    Returns:
      ``(state, history)``, history a list of per-step host metrics dicts.

    Raises:
      FloatingPointError: on a non-finite metric (see `check_finite`), or
        non-finite parameters or optimiser state about to be saved (see
        `check_state_finite`). No checkpoint is written for that step or
        later, so the newest on disk is the last good one.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from rnn_jax import train
      >>> def loss_fn(params, batch, rng):
      ...     return jnp.mean((batch["x"] * params["w"] - batch["y"]) ** 2), {}
      >>> optimizer = optax.sgd(0.1)
      >>> state = train.create_train_state({"w": jnp.array(0.0)}, optimizer, jax.random.PRNGKey(0))
      >>> step_fn = train.make_train_step(loss_fn, optimizer)
      >>> batch_of = lambda step: {"x": jnp.array([1.0, 2.0]), "y": jnp.array([2.0, 4.0])}
      >>> seen = []
      >>> state, history = train.train_loop(step_fn, state, batch_of, num_steps=20,
      ...                                   callback=lambda step, metrics, state: seen.append(step))
      >>> len(history), seen[-1], round(float(state.params["w"]), 3)
      (20, 20, 2.0)
    """
    if checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    history: list[dict[str, float]] = []
    step = int(state.step)
    last_saved = step  # nothing new to save unless a step runs
    batch_of_step = map(batches, itertools.count(step)) if callable(batches) else iter(batches)

    def save(state: TrainState, step: int) -> None:
        check_state_finite(state, step)
        if jax.process_index() == 0:  # one writer; every process holds the same state
            save_checkpoint(checkpoint_dir, state, step=step, metadata=metadata, keep=keep)

    for batch in itertools.islice(batch_of_step, max(num_steps - step, 0)):
        state, metrics = train_step(state, batch)
        step += 1
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        check_finite(host, step)
        history.append(host)
        if callback is not None:
            callback(step, host, state)
        if checkpoint_dir is not None and checkpoint_every and step % checkpoint_every == 0:
            save(state, step)
            last_saved = step
    if checkpoint_dir is not None and last_saved != step:
        save(state, step)
    return state, history


def example_mask(batch: Mapping[str, Any]) -> jax.Array:
    """The per-example validity mask of a batch dict, shape ``(batch,)``, float32.

    ``batch["mask"]`` if present (see `pad_batch`), otherwise all ones, as
    long as the first leaf's leading axis.

    Examples:
      >>> import numpy as np
      >>> from rnn_jax.train import example_mask
      >>> example_mask({"x": np.zeros((3, 2))})
      Array([1., 1., 1.], dtype=float32)
    """
    if "mask" in batch:
        return jnp.asarray(batch["mask"], jnp.float32)
    return jnp.ones((jax.tree.leaves(batch)[0].shape[0],), jnp.float32)


def pad_batch(batch: Mapping[str, Any], batch_size: int) -> dict[str, np.ndarray]:
    """Pads every leaf of a dict batch to ``batch_size`` rows and adds ``"mask"``.

    The mask ``(batch_size,)`` is 1 for real examples, 0 for padding: the last, partial batch
    then has the shape of the others, and jit does not recompile. Padding rows repeat the last
    example (valid inputs, e.g. valid label indices) with mask 0, as
    ``rnn_jax.data.eval_batches`` pads. A batch that already has a mask keeps it (its padding
    extended with zeros). Returns numpy arrays.

    Args:
      batch: dict of arrays with a common leading size ``n <= batch_size``.
      batch_size: the fixed size to pad to.

    Examples:
      >>> import numpy as np
      >>> from rnn_jax.train import pad_batch
      >>> padded = pad_batch({"x": np.array([[1.0], [2.0]]), "y": np.array([3, 4])}, batch_size=4)
      >>> padded["y"].tolist(), padded["mask"].tolist()  # padding repeats the last example
      ([3, 4, 4, 4], [1.0, 1.0, 0.0, 0.0])
    """
    batch = dict(batch)
    mask = batch.pop("mask", None)
    num_examples = count_examples(batch)
    if num_examples > batch_size:
        raise ValueError(f"batch has {num_examples} examples, more than batch_size={batch_size}")
    padded = rows_with_mask(batch, np.arange(batch_size))
    if mask is not None:
        padded["mask"][:num_examples] = np.asarray(mask, np.float32)
    return padded


def evaluate(
    metric_fn: MetricFn,
    params: PyTree,
    batches: Iterable[Batch],
    *,
    mesh: Mesh | None = None,
) -> dict[str, float]:
    """Means of ``metric_fn``'s sums over a whole split.

    Args:
      metric_fn: ``metric_fn(params, batch) -> {"count": n_valid, name: sum, ...}``
        where each ``sum`` is summed over the batch's *valid* examples (weight
        the per-example values by `example_mask`) and ``count`` is the
        number of valid examples (``example_mask(batch).sum()``). It is jitted
        here.
      params: the parameters.
      batches: iterable of batches covering the split exactly once; the final
        batch may be smaller, or padded with a ``"mask"`` (`pad_batch`).
      mesh: optionally split each batch over the mesh's ``"data"`` axis.

    Returns:
      ``{name: total_sum / total_count, ..., "count": total_count}`` as Python
      floats. Sums are accumulated in float64 on the host, so no precision is
      lost over a large split.

    Examples:
      >>> import numpy as np
      >>> from rnn_jax.train import evaluate, example_mask, pad_batch
      >>> def metric_fn(params, batch):  # per-batch sums over the valid rows, and their count
      ...     mask = example_mask(batch)
      ...     return {"error": ((batch["x"] - params) ** 2 * mask).sum(), "count": mask.sum()}
      >>> batches = [pad_batch({"x": np.array(rows)}, 2) for rows in ([1.0, 3.0], [5.0])]
      >>> evaluate(metric_fn, 3.0, batches)  # the mean over the 3 real rows: (4 + 0 + 4) / 3
      {'error': 2.6666666666666665, 'count': 3.0}
    """
    fn = jax.jit(metric_fn)
    if mesh is not None:
        params = replicate(params, mesh)
    results = [fn(params, batch if mesh is None else shard_batch(batch, mesh)) for batch in batches]
    return means_of_sums(results, "evaluate", "metric_fn")


def means_of_sums(results: list, caller: str, source: str, items="batches",
                  counted="valid examples") -> dict[str, float]:  # fmt: skip
    """``{name: total / total count, ..., "count": total count}`` of per-batch sums (each
    with a ``"count"`` entry, from ``source``), fetched at the end in one go (no host sync
    per batch) and accumulated in float64 on the host."""
    if not results:
        raise ValueError(f"{caller} got no {items}")
    host = jax.device_get(results)
    if any("count" not in r for r in host):
        raise KeyError(f"{source} must return a 'count' entry, got keys {sorted(host[0])}")
    totals = {k: math.fsum(float(np.asarray(r[k], np.float64)) for r in host) for k in host[0]}
    count = totals.pop("count")
    if count <= 0:
        raise ValueError(f"{caller} saw {count} {counted}")
    return {**{k: v / count for k, v in totals.items()}, "count": count}


def _masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    if mask is None:
        return jnp.mean(values)
    mask = jnp.asarray(mask, values.dtype)
    # max(.., 1): an all-padding batch gives 0, not NaN.
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def softmax_cross_entropy(
    logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None
) -> jax.Array:
    """Mean cross-entropy of integer labels.

    Args:
      logits: ``(..., num_classes)``, e.g. ``(batch, C)`` or ``(batch, time, C)``.
      labels: integer ``(...)`` matching ``logits.shape[:-1]``.
      mask: optional ``(...)`` weights (1 valid, 0 padding).

    Returns:
      scalar: the mean over valid positions (the seeds summed without a mean,
      which ties the effective learning rate to the batch size).

    Examples:
      >>> import jax.numpy as jnp
      >>> from rnn_jax.train import softmax_cross_entropy
      >>> logits = jnp.zeros((2, 4))  # uniform over 4 classes: log 4 per example
      >>> round(float(softmax_cross_entropy(logits, jnp.array([0, 3]))), 4)
      1.3863
      >>> float(softmax_cross_entropy(logits, jnp.array([0, 3]), mask=jnp.array([1.0, 0.0])))
      1.386...
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return _masked_mean(ce, mask)


def accuracy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Fraction of valid positions where ``argmax(logits, -1) == labels``; scalar.

    Examples:
      >>> import jax.numpy as jnp
      >>> from rnn_jax.train import accuracy
      >>> logits = jnp.array([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0]])
      >>> float(accuracy(logits, jnp.array([0, 1, 1])))
      0.666...
    """
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
    return _masked_mean(correct, mask)
