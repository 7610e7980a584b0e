"""Self-describing weight files: safetensors tensors plus JSON metadata, written atomically.

The metadata says how to rebuild the model (``model_config`` from :func:`semseg.create_model`)
and how to pre/post-process (classes, palette, normalisation), so the file is all a
predictor needs. safetensors never executes code on load, unlike a pickle.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from semseg.registry import create_model


def save_weights(model: nn.Module, path: str | Path, **metadata: Any) -> Path:
    """Write ``model``'s weights and ``metadata`` (JSON-serialisable values) to ``path``.

    The file is written next to its destination and renamed into place, so a crash
    mid-write leaves the previous file intact rather than a truncated one.
    """
    config = getattr(model, "model_config", None)
    if config is None:
        raise ValueError("model has no model_config; build it with semseg.create_model so it can be rebuilt")
    header = {"model_config": json.dumps(config)}
    header.update({key: json.dumps(value) for key, value in metadata.items()})
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    return _atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=header))


def save_training_state(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write what exact resumption needs beyond the weights (optimizer, scheduler, RNG, ...).

    Only tensors, numbers, strings and containers of them, so it loads with
    ``torch.load(weights_only=True)``, which never runs code from the file.
    """
    return _atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_training_state`."""
    return torch.load(path, map_location="cpu", weights_only=True)


def _atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a file written by :func:`save_weights`, JSON values decoded."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except SafetensorError as exc:
        raise ValueError(f"{path} is not a readable safetensors file ({exc}); pass a checkpoint written by "
                         "semseg train or save_weights") from None  # fmt: skip
    if "model_config" not in raw:
        raise ValueError(f"{path} is not a semseg weight file: its metadata has no model_config")
    return {key: json.loads(value) for key, value in raw.items()}


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in ``path`` and load its weights; returns ``(model, metadata)``."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    model = create_model(**meta["model_config"])
    model.load_state_dict(load_file(str(path)))
    return model, meta
