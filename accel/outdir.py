"""All-or-nothing output folders for ``codesign build``.

A build writes into a hidden sibling folder and renames it into place only when every
step succeeded, so an interrupted or failed build never leaves a partial ``DIR``, and an
existing ``DIR`` is replaced only with ``force=True`` (and only after the new one is
complete). Renames within one parent folder are atomic on POSIX file systems.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["OutputExistsError", "atomic_output_dir"]


class OutputExistsError(FileExistsError):
    """The output folder exists and ``force`` was not given."""


@contextmanager
def atomic_output_dir(out: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a fresh staging folder; on normal exit it becomes ``out``.

    On any exception (KeyboardInterrupt included) the staging folder is removed and
    ``out`` is left exactly as it was.
    """
    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"output folder '{out}' exists (use --force to replace it)")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"output path '{out}' exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    old = None
    try:
        if out.exists():
            old = out.parent / f".{out.name}.old-{stage.name.rsplit('-', 1)[-1]}"
            os.replace(out, old)
        os.replace(stage, out)
    except BaseException:
        if old is not None and not out.exists():
            os.replace(old, out)  # put the previous build back
            old = None
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o777 & ~umask)  # mkdtemp made the staging folder 0700
