"""Small shared helpers: atomic writes, and the clean-up of what killed writers left behind."""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``final``; rename it to ``final`` only if the block succeeds.

    A crash or an exception leaves no partially written file or directory under the final
    name (the temporary one is removed), which is what lets readers trust what they find.
    The temporary name carries this host and process id, so that a later write of ``final``
    removes what a killed writer left (``remove_stale_temps``).
    The result has the permissions the user's umask gives a new file or directory, not the
    private 0600/0700 of ``mkstemp``/``mkdtemp``: datasets and checkpoints are shared.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(final)
    prefix = f"{_temp_prefix(final)}{socket.gethostname()}-{os.getpid()}-"
    try:
        if is_dir:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, dir=final.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as err:
        raise _about_final(err, final) from None
    try:
        os.chmod(tmp, (0o777 if is_dir else 0o666) & ~umask())
        yield tmp
        fsync_tree(tmp)
        if is_dir and final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException as err:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        named = _about_final(err, final) if isinstance(err, OSError) else err
        if named is not err:
            raise named from err
        raise


def _about_final(err: OSError, final: Path) -> OSError:
    """``err`` about ``final`` instead of its temporary (a name users never chose), or about ``final`` at all
    when it names no file (``write`` on a full disk); an error about another path is left as it is."""
    if err.errno is None:
        return err
    if err.filename is not None:
        prefix = _temp_prefix(final)
        if not any(part.startswith(prefix) for part in Path(os.fsdecode(err.filename)).parts):
            return err
    return OSError(err.errno, err.strerror, str(final))


def _temp_prefix(final: Path) -> str:
    return f".{final.name}.tmp-"


def process_alive(pid: int) -> bool:
    """True while process ``pid`` exists on this host (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(final: str | os.PathLike) -> None:
    """Remove the temporaries of ``atomic_path(final)`` whose writer process is gone.

    Only temporaries named with this host and a dead process id are touched: one that another
    host writes (a shared file system) or that a live process still writes is kept, and so is
    one without a writer in its name (left by an older version: its writer cannot be known).
    """
    final = Path(final)
    prefix, host = _temp_prefix(final), socket.gethostname()
    for tmp in final.parent.glob(glob.escape(prefix) + "*"):
        writer = tmp.name[len(prefix):].rsplit("-", 2)
        if len(writer) != 3 or writer[0] != host or not writer[1].isdigit() or process_alive(int(writer[1])):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def existing_ancestor(path: str | os.PathLike) -> Path:
    """``path`` or its nearest ancestor that exists (where a path to be created would live)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:,.1f} MiB"


def require_space(path: str | os.PathLike, nbytes: int) -> None:
    """Fail before a long write of ``nbytes`` under ``path`` that cannot fit, saying how much it needs."""
    free = shutil.disk_usage(existing_ancestor(path)).free
    if nbytes > free:
        raise OSError(errno.ENOSPC, f"writing it needs {mib(nbytes)}, more than the {mib(free)} free on its "
                      "file system", str(path))


#: how torch's writers (``torch.save``'s zip writer) report a write the OS cut short
TORCH_SHORT_WRITE = ("unexpected pos", "file write failed", "PytorchStreamWriter failed writing")


def short_write_error(err: BaseException, path: str | os.PathLike) -> OSError | None:
    """The ``OSError`` a torch ``RuntimeError('... unexpected pos 704 vs 598')`` stands for, about ``path``.

    torch's writer drops the errno of a short write; what cut it short is read back from the
    disk: no room left (ENOSPC), a ``ulimit -f`` (EFBIG), else an I/O error.  ``None`` when the
    error is not a short write.
    """
    if not any(marker in str(err) for marker in TORCH_SHORT_WRITE):
        return None
    import resource

    free = shutil.disk_usage(existing_ancestor(path)).free
    if free < 64 << 20:
        return OSError(errno.ENOSPC, f"no space left on device while writing ({mib(free)} free)", str(path))
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        return OSError(errno.EFBIG, f"file too large: `ulimit -f` allows {limit} bytes per file", str(path))
    return OSError(errno.EIO, f"write failed ({str(err).splitlines()[0]})", str(path))


def umask() -> int:
    """The process's umask: reading it means setting it, so it is put back at once."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_tree(path: Path) -> None:
    """Flush file contents to disk before the rename makes them visible."""
    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for p in paths:
        with open(p, "rb") as handle:
            os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
