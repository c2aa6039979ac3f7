"""Files are never half-written: write to a temporary name beside the target, then rename.

``os.replace`` within one directory is atomic, so a reader (or a crash) sees the old file or
the new one. The temporary name starts with ``.`` so directory listings that look for
finished files (checkpoints, caches) skip it; it keeps the target's suffix so tools that
infer a format from the name (``savefig``) still work.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "write_atomic"]  # fmt: skip


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed onto ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched.

    Examples:
      >>> import tempfile, pathlib
      >>> from rnn_jax.atomic import atomic_path
      >>> target = pathlib.Path(tempfile.mkdtemp()) / "result.txt"
      >>> with atomic_path(target) as tmp:
      ...     _ = tmp.write_text("done")
      ...     target.exists()  # nothing at the target until the block succeeds
      False
      >>> target.read_text()
      'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(tmp, mode)  # mkstemp makes it private; results and checkpoints are shared
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; returns the path.

    Examples:
      >>> import tempfile, pathlib
      >>> from rnn_jax.atomic import write_atomic
      >>> path = write_atomic(pathlib.Path(tempfile.mkdtemp()) / "notes.txt", "hello")
      >>> path.read_text(), sorted(p.name for p in path.parent.iterdir())  # no temporary left
      ('hello', ['notes.txt'])
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
