"""Save and restore any pytree (a TrainState included), atomically, without pickle.

A checkpoint is one file, ``<directory>/checkpoint_<step:08d>.msgpack``: a msgpack
map holding

* ``"format"``: ``"rnn_jax.checkpoint"``, and ``"version"``: 1,
* ``"step"``: the step it was saved at,
* ``"metadata"``: the user's metadata as a JSON string (config, vocabulary, ...),
* ``"state"``: the pytree, serialised by ``flax.serialization.to_bytes``,
* ``"sha256"``: the hex digest of ``"state"``, so silent corruption is caught.

One file per checkpoint, written atomically (`rnn_jax.atomic`): a crash at any
point leaves the old set of checkpoints or the new one, never a half-written file
under a checkpoint name (`latest_checkpoint` skips leftover ``.`` temporaries).

Typed PRNG keys (``jax.random.key``) are stored as their raw key data and
re-wrapped with the target's key implementation on restore.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import msgpack
import numpy as np

from rnn_jax.atomic import write_atomic

PyTree = Any

FORMAT = "rnn_jax.checkpoint"
VERSION = 1
_NAME = re.compile(r"^checkpoint_(\d+)\.msgpack$")

__all__ = [
    "CheckpointError",
    "latest_checkpoint",
    "list_checkpoints",
    "read_metadata",
    "restore_checkpoint",
    "save_checkpoint",
]


class CheckpointError(ValueError):
    """A checkpoint file is corrupt or does not match the restore target."""


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _unwrap_keys(tree: PyTree) -> PyTree:
    # msgpack cannot encode key dtypes; their uint32 data is the whole content.
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, str]]:
    """``(step, path)`` of every complete checkpoint in ``directory``, oldest first.

    Examples:
      >>> import tempfile, numpy as np
      >>> from rnn_jax.checkpoint import list_checkpoints, save_checkpoint
      >>> folder = tempfile.mkdtemp()
      >>> for step in (100, 200, 300):
      ...     _ = save_checkpoint(folder, {"w": np.zeros(2)}, step=step, keep=2)
      >>> [step for step, path in list_checkpoints(folder)]  # keep=2 pruned step 100
      [200, 300]
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    matches = (_NAME.match(name) for name in os.listdir(directory))
    return sorted((int(m[1]), os.path.join(directory, m[0])) for m in matches if m)


def latest_checkpoint(directory: str | os.PathLike) -> str | None:
    """Path of the highest-step checkpoint in ``directory``, or None if there is none.

    Examples:
      >>> import tempfile, numpy as np
      >>> from rnn_jax.checkpoint import latest_checkpoint, save_checkpoint
      >>> folder = tempfile.mkdtemp()
      >>> latest_checkpoint(folder) is None
      True
      >>> path = save_checkpoint(folder, {"w": np.zeros(2)}, step=7)
      >>> latest_checkpoint(folder) == path, path.endswith("checkpoint_00000007.msgpack")
      (True, True)
    """
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def save_checkpoint(
    directory: str | os.PathLike,
    state: PyTree,
    *,
    step: int,
    metadata: dict | None = None,
    keep: int | None = 3,
) -> str:
    """Writes ``state`` and ``metadata`` atomically; returns the checkpoint's path.

    Args:
      directory: created if missing.
      state: any pytree of arrays (fetched to the host here).
      step: the training step, used in the file name and returned as
        ``metadata["step"]`` by `restore_checkpoint`.
      metadata: JSON-serialisable dict (config, vocabulary, ...); must not use
        the key ``"step"``.
      keep: keep only the ``keep`` highest-step checkpoints (None keeps all).
        Pruning happens after the new file is in place.

    Raises:
      ValueError: ``step`` is below the newest checkpoint already in ``directory``
        (saving that step again is allowed). A directory holds one run's history in
        step order: `latest_checkpoint`, which a resume reads, returns the highest
        step, so an older one saved after it would be passed over (and pruning by step
        would delete it at once). Refusing, before anything is written, is the only
        behaviour that never loses the caller's state silently; to restart from an
        older step, delete the newer checkpoints or save to another directory.

    Examples:
      >>> import tempfile, jax.numpy as jnp
      >>> from rnn_jax.checkpoint import restore_checkpoint, save_checkpoint
      >>> state = {"params": {"w": jnp.arange(3.0)}, "step": jnp.array(5)}
      >>> path = save_checkpoint(tempfile.mkdtemp(), state, step=5, metadata={"lr": 0.1})
      >>> restored, metadata = restore_checkpoint(path, state)
      >>> restored["params"]["w"].tolist(), metadata
      ([0.0, 1.0, 2.0], {'lr': 0.1, 'step': 5})
    """
    step = int(step)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1 or None, got {keep}")
    metadata = dict(metadata or {})
    if "step" in metadata:
        raise ValueError("metadata must not contain 'step': it is recorded from the step argument")
    # Fails here, before anything is written, if metadata is not plain JSON.
    metadata_json = json.dumps(metadata, sort_keys=True)
    directory = os.fspath(directory)
    existing = list_checkpoints(directory)
    if existing and existing[-1][0] > step:
        newest_step, newest = existing[-1]
        raise ValueError(
            f"step {step} is below the newest checkpoint in {directory} (step {newest_step}, "
            f"{os.path.basename(newest)}): latest_checkpoint would not return this save and "
            "pruning would delete it; delete the newer checkpoints (another run's) or save "
            "to another directory"
        )

    state_bytes = flax.serialization.to_bytes(_unwrap_keys(state))
    payload = msgpack.packb(
        {
            "format": FORMAT,
            "version": VERSION,
            "step": step,
            "metadata": metadata_json,
            "sha256": hashlib.sha256(state_bytes).hexdigest(),
            "state": state_bytes,
        },
        use_bin_type=True,
    )

    path = os.path.join(directory, f"checkpoint_{step:08d}.msgpack")
    write_atomic(path, payload)

    if keep is not None:
        for _, old in list_checkpoints(directory)[:-keep]:
            os.unlink(old)
    return path


def _read(path: str) -> tuple[dict, bytes]:
    """Returns (header with metadata decoded, state bytes); CheckpointError if corrupt."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path}")
    raw = Path(path).read_bytes()
    try:
        record = msgpack.unpackb(raw, raw=False)
    except Exception as e:  # msgpack raises several unrelated types on bad input
        raise CheckpointError(f"corrupt checkpoint {path}: not valid msgpack ({e})") from e
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an rnn_jax checkpoint")
    if record.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {record.get('version')}, "
            f"this rnn_jax reads version {VERSION}"
        )
    state_bytes = record.get("state")
    digest = hashlib.sha256(state_bytes).hexdigest() if isinstance(state_bytes, bytes) else None
    if digest is None or digest != record.get("sha256"):
        raise CheckpointError(f"corrupt checkpoint {path}: state checksum mismatch")
    try:
        metadata = json.loads(record["metadata"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"corrupt checkpoint {path}: bad metadata ({e})") from e
    metadata["step"] = int(record["step"])
    return metadata, state_bytes


def read_metadata(path: str | os.PathLike) -> dict:
    """The metadata of a checkpoint (with ``"step"``), without restoring the state.

    Examples:
      >>> import tempfile, numpy as np
      >>> from rnn_jax.checkpoint import read_metadata, save_checkpoint
      >>> path = save_checkpoint(tempfile.mkdtemp(), {"w": np.ones(4)}, step=3,
      ...                        metadata={"cell": "lstm"})
      >>> read_metadata(path)
      {'cell': 'lstm', 'step': 3}
    """
    return _read(os.fspath(path))[0]


def _mismatches(target: Any, restored: Any, where: str = "") -> Iterator[str]:
    """Structure/shape/dtype differences between two flax state dicts, one line each."""
    if isinstance(target, dict) and not isinstance(restored, dict):
        yield f"{where or '<root>'}: target has a container, checkpoint has a leaf"
    elif isinstance(target, dict):
        t_keys, r_keys = set(map(str, target)), set(map(str, restored))
        for key in sorted(t_keys - r_keys):
            yield f"{where}/{key}: in target, missing from checkpoint"
        for key in sorted(r_keys - t_keys):
            yield f"{where}/{key}: in checkpoint, not in target"
        for key in sorted(t_keys & r_keys):
            yield from _mismatches(target[key], restored[key], f"{where}/{key}")
    elif isinstance(restored, dict) and restored:
        yield f"{where}: target has a leaf, checkpoint has a container"
    elif hasattr(target, "shape") and hasattr(target, "dtype"):
        t_shape, t_dtype = tuple(target.shape), np.dtype(target.dtype)
        r_shape, r_dtype = tuple(np.shape(restored)), np.asarray(restored).dtype
        if t_shape != r_shape:
            yield f"{where}: shape {r_shape} in checkpoint, {t_shape} in target"
        elif t_dtype != r_dtype:
            yield f"{where}: dtype {r_dtype} in checkpoint, {t_dtype} in target"


def restore_checkpoint(path: str | os.PathLike, target: PyTree) -> tuple[PyTree, dict]:
    """Restores a checkpoint into the structure of ``target``.

    Args:
      path: a checkpoint file (e.g. from `latest_checkpoint`).
      target: a pytree with the same structure, shapes and dtypes as the saved
        one (e.g. a freshly created TrainState); its values are not used. Leaves
        that are jax arrays give the restored leaves their sharding (so a
        replicated target restores replicated).

    Returns:
      ``(state, metadata)``; ``metadata`` is the saved dict plus ``"step"``.

    Raises:
      FileNotFoundError: no file at ``path``.
      CheckpointError (a ValueError): corrupt file, or a structure, shape or
        dtype mismatch with ``target`` (every mismatching path is named).

    Examples:
      >>> import tempfile, jax.numpy as jnp
      >>> from rnn_jax.checkpoint import CheckpointError, restore_checkpoint, save_checkpoint
      >>> path = save_checkpoint(tempfile.mkdtemp(), {"w": jnp.zeros(3)}, step=1)
      >>> try:
      ...     restore_checkpoint(path, {"w": jnp.zeros(4)})  # a target of another shape
      ... except CheckpointError as error:
      ...     print("refused:", "shape" in str(error))
      refused: True
    """
    path = os.fspath(path)
    metadata, state_bytes = _read(path)
    plain_target = _unwrap_keys(target)
    try:
        restored_dict = flax.serialization.msgpack_restore(state_bytes)
    except Exception as e:
        raise CheckpointError(f"corrupt checkpoint {path}: state not readable ({e})") from e
    problems = list(_mismatches(flax.serialization.to_state_dict(plain_target), restored_dict))
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not match the target:\n  " + "\n  ".join(problems)
        )
    restored = flax.serialization.from_state_dict(plain_target, restored_dict)

    def place(t: Any, r: Any) -> Any:
        if _is_key(t):
            r = jax.random.wrap_key_data(np.asarray(r), impl=jax.random.key_impl(t))
            return jax.device_put(r, t.sharding)
        if isinstance(t, jax.Array):
            return jax.device_put(np.asarray(r), t.sharding)
        return r

    return jax.tree.map(place, target, restored), metadata
