"""Models that ship inside semseg, addressable by name wherever a checkpoint path is accepted.

``index.json`` beside this file lists each shipped model: its name (``camvid-<arch>``), the
weight file in this folder (fp16 safetensors with semseg's metadata), what it was trained
on and how, and the validation score it reached. :func:`resolve_checkpoint` turns a name
into that file, so ``semseg predict camvid-<arch> street.png`` and
``Predictor.from_pretrained("camvid-<arch>")`` need no download and no path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PRETRAINED_DIR = Path(__file__).parent  # the shipped files and index.json (scripts/ship_pretrained.py writes here)


@dataclass(frozen=True)
class PretrainedModel:
    """One shipped model, as ``semseg pretrained`` lists it."""

    name: str
    file: str
    architecture: str
    dataset: str
    classes: tuple[str, ...]
    val_mIoU: float
    command: str  # how to reproduce it
    card: str  # the model card in docs/

    @property
    def path(self) -> Path:
        return PRETRAINED_DIR / self.file

    @property
    def size_mb(self) -> float:
        return self.path.stat().st_size / 10**6  # MB, as issue 11's 10 MB limit and the README count


def list_pretrained() -> list[PretrainedModel]:
    """The shipped models, by name."""
    index = json.loads((PRETRAINED_DIR / "index.json").read_text())
    return sorted((PretrainedModel(**{**m, "classes": tuple(m["classes"])}) for m in index["models"]),
                  key=lambda m: m.name)  # fmt: skip


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """The file a checkpoint argument means: an existing path as is, else a shipped model's file.

    A path-like argument that does not exist (it has a suffix or a slash) is returned
    unchanged, so the loader reports it as a missing file; a bare word that is no shipped
    model's name is an error listing the names.
    """
    path = Path(name_or_path)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    shipped = {m.name: m for m in list_pretrained()}
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)].path
    names = ", ".join(shipped) or "none yet"
    raise FileNotFoundError(f"{name_or_path} is neither a file nor a shipped model (shipped models: {names}; "
                            "see semseg pretrained)")  # fmt: skip
