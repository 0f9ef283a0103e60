"""Writing files so that a partial one never appears under the final name; a file's
sha256."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

_temporaries: set[str] = set()  # being written now; removed if the process must end


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike,
                verify: Callable[[str], None] | None = None) -> Iterator[str]:
    """Yields a temporary path beside ``target``; renames it over ``target`` once it
    is on disk (fsync) and ``verify(path)`` accepts it.

    On any error the temporary file is removed and ``target`` is left as it was. The
    temporary name is short, so any legal target name works. The file gets the
    usual permissions (0666 less the umask), not mkstemp's 0600.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".nst-", suffix=target.suffix[:16])
    os.close(fd)
    _temporaries.add(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())  # a full disk shows here at the latest
        if verify is not None:
            verify(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        _temporaries.discard(tmp)
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_temporaries() -> None:
    """Removes files :func:`atomic_path` is writing; for a process about to end at once."""
    for tmp in list(_temporaries):
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def sha256_of(path: str | os.PathLike) -> str:
    """A file's sha256, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
