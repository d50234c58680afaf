"""Faults for the tests: a small or read-only file system (tmpfs, when this process may mount one), flipped
bytes inside a checkpoint's tensor records, one-line error checks."""
from __future__ import annotations

import contextlib
import subprocess
import zipfile
from pathlib import Path


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "1m", read_only: bool = False):
    """Mount a tmpfs of ``size`` on ``folder`` (created) for the block; yields False, mounting nothing, where
    mounting is not allowed (not root, no CAP_SYS_ADMIN): the caller then simulates the fault instead."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def remount(folder: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True, capture_output=True)


def tensor_record(path: Path) -> tuple[int, int]:
    """(offset in the file, length) of the largest tensor record (``archive/data/N``) of a torch.save zip."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:  # the local header: 30 bytes, then the name and the extra field
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def flip_bytes(path: Path, count: int = 4) -> None:
    """Flip every bit of ``count`` bytes in the middle of the largest tensor record of checkpoint ``path``."""
    offset, length = tensor_record(path)
    data = bytearray(path.read_bytes())
    middle = offset + length // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def one_error_line(stderr: str) -> str:
    """The single line of a failed command's stderr, ``warning:``/``note:`` lines aside; fails otherwise."""
    lines = [ln for ln in stderr.strip().splitlines() if not ln.startswith(("warning:", "note:"))]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def replace_member(shard: Path, name: str, data: bytes) -> None:
    """Rewrite the tar ``shard`` with member ``name``'s content replaced by ``data`` (a damaged sample that the
    tar format itself still reads), every other member kept byte for byte."""
    import io
    import os
    import tarfile
    rewritten = shard.with_name(shard.name + ".rewrite")
    with tarfile.open(shard) as src, tarfile.open(rewritten, "w", format=tarfile.USTAR_FORMAT) as dst:
        for m in src.getmembers():
            content = data if m.name == name else src.extractfile(m).read()
            m.size = len(content)
            dst.addfile(m, io.BytesIO(content))
    os.replace(rewritten, shard)
