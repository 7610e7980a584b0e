"""Output folders: the one check, before anything is written, that a folder can be made where a
command was told to write (a run's ``out:``, ``predict --out``, ``export --out``'s folder)."""

from __future__ import annotations

from pathlib import Path


class NotAFolderError(ValueError):
    """A file stands where an output folder, or one of its parents, should be."""


def check_folder(folder: Path, what: str) -> None:
    """Raise :class:`NotAFolderError` (``WHAT: FILE is a file; choose a folder``) if ``folder`` or one
    of its parents is an existing file, so ``folder.mkdir(parents=True)`` would fail midway."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise NotAFolderError(f"{what}: {existing} is a file; choose a folder")
