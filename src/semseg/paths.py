"""Output folders: the one check, before anything is written, that a folder can be made where a
command was told to write (a run's ``out:``, ``predict --out`` and its output folders, ``export
--out``'s folder), and that no folder stands where an output file is to go."""

from __future__ import annotations

import errno
import os
from pathlib import Path


class NotAFolderError(ValueError):
    """A file (or a broken link) stands where an output folder, or one of its parents, should be."""


def check_folder(folder: Path, what: str) -> None:
    """Raise :class:`NotAFolderError` if ``folder`` or one of its parents is an existing file or a
    broken link, so ``folder.mkdir(parents=True)`` would fail midway. The message starts with
    ``what`` and names the path in the way: ``WHAT: PATH is a file; choose a folder``."""
    existing = next((p for p in (folder, *folder.parents) if os.path.lexists(p)), None)
    if existing is None or existing.is_dir():
        return
    kind = "a broken link" if existing.is_symlink() and not existing.exists() else "a file"
    raise NotAFolderError(f"{what}: {existing} is {kind}; choose a folder")


def check_not_folders(*files: Path | None) -> None:
    """Raise ``IsADirectoryError`` naming the first of ``files`` (``None`` skipped) that is an existing
    folder, before any of them is written: each is a file the caller is about to write."""
    taken = next((f for f in files if f is not None and f.is_dir()), None)
    if taken is not None:
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(taken))
