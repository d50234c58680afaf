"""Writing an output file so that a failure leaves nothing half-written and says so in one line.

``write_atomically`` writes to a temporary file beside the target, flushes it to disk and renames it over the
target (``os.replace``, atomic on POSIX): a full disk, a read-only folder or a crash leaves the previous file, if
any, as it was, and the error is a ``UserError`` naming the path and the cause.
"""
from __future__ import annotations

import os
from pathlib import Path

from composer.runtime.errors import UserError, os_error_line


def write_atomically(path: str | os.PathLike, data: bytes, what: str = "file") -> Path:
    """Write ``data`` to ``path`` (its folder created if missing); ``UserError`` if the file system refuses."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; expected the path of the {what} to write")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(os_error_line(e, path, f"cannot write the {what}")) from None
    finally:
        try:
            if tmp.exists():
                tmp.unlink()
        except OSError:
            pass
    return path
