"""Files nesfgen writes: atomic writes, output folders checked up front, and safe, distinct file names."""

from __future__ import annotations

import errno
import glob
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nesfgen.errors import UserError

log = logging.getLogger(__name__)

#: the longest file or folder name (bytes) that common file systems (ext4, APFS, NTFS) accept
NAME_MAX = 255
#: file-name stems are cut to this many characters, leaving room for a hash and suffixes such as ``.decoded.cif``
STEM_MAX = 120
#: a folder being written is named ``.<name>.<STAGING>-<random>`` and holds a STAGING_MARKER file until renamed
STAGING = "nesfgen-staging"
STAGING_MARKER = ".nesfgen-staging.json"
UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]")
OS_ERROR_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file would exceed the file-size limit",
    errno.ENAMETOOLONG: f"a name in the path is too long (file systems allow {NAME_MAX} bytes per name)",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file of that name is in the way",
    errno.ENOENT: "a folder on its path does not exist and cannot be made there",
}


def atomic_write_bytes(path: Path, data: bytes | memoryview, what: str = "the file") -> Path:
    """Write to a temporary sibling and rename it over ``path``: a reader sees the old file or the new one,
    never half of one. A failed write (a full disk) leaves no temporary behind and is a UserError naming
    ``what``, the path and the reason; the previous file stays in place."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as error:
        raise UserError(f"cannot write {what} {path}: {os_error_reason(error)}") from None
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp's 0600 would hide shipped files from other users
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        raise UserError(f"cannot write {what} {path}: {os_error_reason(error)}; the previous one is kept") from None
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def _umask() -> int:
    """The process's file-creation mask (reading it means setting it, so it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def os_error_reason(error: OSError) -> str:
    """A short human reason for an OSError: 'permission denied', 'no space left on the device' ..."""
    return OS_ERROR_REASONS.get(error.errno, error.strerror or str(error))


def output_folder(path: str | Path, what: str = "output folder", create: bool = True) -> Path:
    """``path`` as a folder nesfgen can write into: created with its parents, or with ``create=False`` only checked.

    Checking without creating lets a long job (decoding a split) find an unusable ``out=`` before it starts
    and leave nothing behind.

    Raises:
        UserError: naming the folder and why it cannot be written (permissions, a file in the way, a name too
            long, a read-only or full file system).
    """
    path = Path(path)
    try:
        too_long = next((part for part in path.parts if len(os.fsencode(part)) > NAME_MAX), None)
        if too_long is not None:
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
        existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
        if not existing.is_dir():
            raise UserError(f"cannot write the {what} {path}: {existing} is a file, not a folder")
        if create:
            path.mkdir(parents=True, exist_ok=True)
            existing = path
        with tempfile.TemporaryFile(dir=existing):  # permissions, read-only mounts, full disks: only trying tells
            pass
    except OSError as error:
        raise UserError(f"cannot write the {what} {path}: {os_error_reason(error)}") from None
    return path


def safe_file_stems(names: Sequence[str]) -> list[str]:
    """File-name stems for ``names`` that stay inside a folder and differ from each other, deterministically.

    A name of letters, digits, ``_``, ``-`` and ``.`` (not leading) up to STEM_MAX characters is kept as it is.
    Any other has each other character replaced by ``_``, is cut to STEM_MAX and gets 8 hex digits of the
    SHA-1 of the name, so ``a/b`` and ``a_b`` never share a file. A stem that equals an earlier one ignoring
    case (case-insensitive file systems) gets the hash too, then a counter.
    """
    stems: list[str] = []
    used: set[str] = set()
    for name in names:
        cleaned = UNSAFE_CHARACTERS.sub("_", name)[:STEM_MAX]
        cleaned = "_" + cleaned[1:] if cleaned.startswith(".") else cleaned
        hashed = f"{cleaned}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"
        stem = cleaned if cleaned == name and name and cleaned.casefold() not in used else hashed
        candidate, count = stem, 1
        while candidate.casefold() in used:
            count += 1
            candidate = f"{stem}-{count}"
        used.add(candidate.casefold())
        stems.append(candidate)
    return stems


def _staging_prefix(out: Path) -> str:
    return f".{out.name[:100]}.{STAGING}-"


def staging_folder(out: Path) -> Path:
    """A new hidden folder beside ``out`` to write ``out`` into, marked with the process writing it.

    Call :func:`unmark_staging` just before renaming it to ``out``; :func:`remove_stale_staging` deletes what
    a killed process left.
    """
    staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(out), dir=out.parent))
    marker = {"target": out.name, "pid": os.getpid(), "host": socket.gethostname()}
    (staging / STAGING_MARKER).write_text(json.dumps(marker))
    return staging


def unmark_staging(staging: Path) -> None:
    (staging / STAGING_MARKER).unlink()


def remove_stale_staging(out: Path) -> list[Path]:
    """Delete the staging folders of ``out`` whose writer died (a SIGKILL, a power cut); return them.

    Only folders named as :func:`staging_folder` names them, holding its marker for ``out``, written by a
    process of this machine that no longer runs, are touched: a concurrent writer's folder stays.
    """
    removed = []
    for folder in sorted(out.parent.glob(glob.escape(_staging_prefix(out)) + "*")):
        try:
            marker = json.loads((folder / STAGING_MARKER).read_text())
        except (OSError, ValueError):
            continue  # not ours, or its writer is between mkdtemp and writing the marker
        ours = isinstance(marker, dict) and marker.get("target") == out.name
        if ours and marker.get("host") == socket.gethostname() and not _process_alive(marker.get("pid")):
            shutil.rmtree(folder, ignore_errors=True)
            log.info("removed %s, left by an interrupted write of %s", folder, out)
            removed.append(folder)
    return removed


@contextmanager
def staged_folder(out: Path, what: str, replace: bool = True) -> Iterator[Path]:
    """Write the folder ``out`` whole or not at all: yield a staging folder beside it to fill, then swap it in.

    A folder already at ``out`` is replaced only after the new one is complete (and put back if the swap
    fails); with ``replace=False`` only an empty one is (the rename refuses a folder that filled meanwhile).
    On any error the staging folder is removed. Staging folders of ``out`` that a killed earlier
    write left are removed first.

    Raises:
        UserError: naming ``what`` and ``out`` when the file system refuses a write.
    """
    remove_stale_staging(out)
    staging = staging_folder(out)
    try:
        yield staging
        unmark_staging(staging)
        if replace and out.exists():
            trash = staging_folder(out)
            os.replace(out, trash / "replaced")
            try:
                os.replace(staging, out)
            except BaseException:
                os.replace(trash / "replaced", out)
                raise
            finally:
                shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, out)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"cannot write the {what} {out}: {os_error_reason(error)}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _process_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but belongs to another user
        return True
    return True


def new_figure(columns: int, width: float, height: float, rows: int = 1) -> tuple[Any, Any]:
    """A matplotlib figure with a grid of axes (one row by default), on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(rows, columns, figsize=(width, height))


def save_figure(figure: Any, path: Path, dpi: int = 90) -> Path:
    """Write a figure as PNG atomically and release it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=dpi)
    plt.close(figure)
    return atomic_write_bytes(path, image.getbuffer(), "the figure")
