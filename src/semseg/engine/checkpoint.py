"""Self-describing weight files: safetensors tensors plus JSON metadata, written atomically.

The metadata says how to rebuild the model (``model_config`` from :func:`semseg.create_model`)
and how to pre/post-process (classes, palette, normalisation), so the file is all a
predictor needs. safetensors never executes code on load, unlike a pickle.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from semseg.config import MAX_INFER_SCALE
from semseg.data.base import list_some
from semseg.pretrained import resolve_checkpoint
from semseg.registry import WEIGHT_FILE_OPTIONS, create_model, saved_config


def sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()


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
    """Read a file written by :func:`save_training_state`; a damaged or foreign file gets a one-line error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        text = str(exc).strip()
        if isinstance(exc, pickle.UnpicklingError) and "weights only" in text.lower():
            raise CheckpointError(f"{path} holds Python objects besides tensors and numbers; semseg does not "
                                  "unpickle such files (they can run code). Use a state file written by "
                                  "semseg train") from None  # fmt: skip
        first = text.splitlines()[0] if text else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable training state ({first}); it may be truncated: "
                              "restore it from a backup or start again with --overwrite") from None  # fmt: skip


def _atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, then rename it into place.

    The file gets the permissions an ordinary write would (0666 less the umask), not the
    owner-only 0600 of ``mkstemp``, so a checkpoint shared on a cluster stays readable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        full = _full_disk(path.parent, exc) if isinstance(exc, Exception) else None  # measured before the unlink
        Path(tmp).unlink(missing_ok=True)
        if full is not None:
            raise full from exc
        raise
    return path


class DiskFullError(OSError):
    """A file could not be written because its disk is full (torch and safetensors say so in words of
    their own, e.g. ``basic_ios::clear: iostream error``); the message says where and what to do."""


LOW_SPACE = 64 * 2**20  # bytes: a failed write with less than this left is put down to a full disk


def _full_disk(folder: Path, exc: Exception) -> DiskFullError | None:
    """A :class:`DiskFullError` if the write that raised ``exc`` in ``folder`` ran out of disk space."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if getattr(exc, "errno", None) not in (errno.ENOSPC, errno.EDQUOT) and free >= LOW_SPACE:
        return None
    error = DiskFullError(f"no space left on the disk that holds {folder} ({free / 10**6:.0f} MB free); free some "
                          "space and run the command again (a training run: --resume continues from its last "
                          "saved epoch)")  # fmt: skip
    error.errno = errno.ENOSPC
    return error


def _umask() -> int:
    """The process umask (reading it means setting it, so it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class CheckpointError(ValueError):
    """A weight or state file is unreadable, inconsistent or implausible; the message names the file and key."""


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a file written by :func:`save_weights` (or a shipped model's name), JSON values decoded and checked.

    Checked here, once, for everything that reads checkpoints (predict, evaluate, serve,
    export, resume): types and lengths of ``model_config``, classes, palette, mean/std, bands,
    and the bounds of ``infer_scale``.
    """
    path = resolve_checkpoint(path)
    if path.is_dir():
        raise FileNotFoundError(f"{path} is a folder, not a checkpoint: pass a .safetensors file (or an exported "
                                ".onnx / .xml model to predict and serve with)")  # fmt: skip
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        if path.suffix.lower() in (".pt", ".pth", ".ts"):
            raise CheckpointError(f"{path} is not a safetensors checkpoint but, by its name, a PyTorch pickle or "
                                  "TorchScript file: semseg runs .safetensors checkpoints and ONNX / OpenVINO exports "
                                  "(a `semseg export --format torchscript` file runs with torch.jit.load; a "
                                  "torchvision .pth becomes a semseg model through model.init_from)") from None  # fmt: skip
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); pass a checkpoint written by "
                              "semseg train or save_weights") from None  # fmt: skip
    if "model_config" not in raw:
        raise CheckpointError(f"{path} is not a semseg weight file: its metadata has no model_config")
    try:
        meta = {key: json.loads(value) for key, value in raw.items()}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: metadata is not valid JSON ({exc})") from None
    check_metadata(meta, path)
    return meta


def infer_scale(meta: dict[str, Any], path: str | Path) -> float:
    """The factor ``meta`` says to resize inputs by before the model (``data.infer_scale``), checked.

    Absent from files older than the key: 1, inputs as given. Bounded, so a forged file cannot
    make one image cost more than ``MAX_INFER_SCALE ** 2`` times its pixels.
    """
    scale = meta.get("infer_scale", 1.0)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale <= MAX_INFER_SCALE:
        raise CheckpointError(f"{path}: metadata infer_scale must be a number in (0, {MAX_INFER_SCALE}], got "
                              f"{scale!r}; the file is damaged or was not written by semseg")  # fmt: skip
    return float(scale)


def check_metadata(meta: dict[str, Any], path: str | Path) -> None:
    """Refuse (:class:`CheckpointError`, naming ``path`` and the key) metadata whose ``model_config``,
    classes, palette, mean/std, bands, infer_scale or ignore_index are of the wrong type or length:
    the checks every model file gets, checkpoint or export, before anything is built from it."""

    def fail(key: str, why: str) -> None:
        raise CheckpointError(f"{path}: metadata {key} {why}; the file is damaged or was not written by semseg")

    config = meta["model_config"]
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        fail("model_config", "must be a mapping with a model name")
    num_classes = config.get("num_classes")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        fail("model_config.num_classes", f"must be a positive int, got {num_classes!r}")
    in_channels = config.get("in_channels", 3)  # absent from checkpoints older than the option: RGB
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        fail("model_config.in_channels", f"must be a positive int, got {in_channels!r}")
    if "classes" in meta:
        classes = meta["classes"]
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            fail("classes", "must be a list of names")
        if len(classes) != num_classes:
            fail("classes", f"has {len(classes)} names for a model with {num_classes} outputs")
    if "palette" in meta:
        palette = meta["palette"]
        ok = isinstance(palette, list) and all(
            isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in palette
        )
        if not ok:
            fail("palette", "must be a list of [R, G, B] triples of 0..255")
        if len(palette) < num_classes:
            fail("palette", f"has {len(palette)} colours for {num_classes} classes")
    for key in ("mean", "std"):
        if key in meta:
            values = meta[key]
            if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                       and math.isfinite(v) for v in values):  # fmt: skip
                fail(key, f"must be a list of finite numbers, got {values!r}")
            if len(values) != in_channels:
                fail(key, f"has {len(values)} values for {in_channels} input channels")
            if key == "std" and min(values) <= 0:
                fail(key, f"must be > 0 for every channel, got {values}")
    bands = meta.get("bands")  # absent (older files) or None: 8-bit RGB input
    if bands is not None and (not isinstance(bands, int) or isinstance(bands, bool) or bands != in_channels):
        fail("bands", f"must be null or the model's {in_channels} input channels, got {bands!r}")
    infer_scale(meta, path)
    if "ignore_index" in meta and (not isinstance(meta["ignore_index"], int) or isinstance(meta["ignore_index"], bool)):
        fail("ignore_index", f"must be an int, got {meta['ignore_index']!r}")


# safetensors dtype names of the tensors a float32 model accepts (cast on load), and of integer buffers.
_FLOAT_DTYPES = {"F32", "F16", "BF16"}
_INT_DTYPES = {torch.int64: {"I64"}}


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored in ``path`` and load its weights; returns ``(model, metadata)``.

    The file is distrusted: its architecture is first built on the meta device (no memory)
    and every tensor's name, shape and dtype compared with the file's header, so a forged
    ``model_config`` cannot allocate gigabytes; weights must be finite. fp16/bf16 files
    (e.g. the shipped models) are cast to float32.
    """
    from safetensors.torch import load_file

    path = resolve_checkpoint(path)
    meta = read_metadata(path)
    config = {k: (None if k in WEIGHT_FILE_OPTIONS else v) for k, v in saved_config(meta["model_config"]).items()}
    try:
        with torch.device("meta"):
            skeleton = create_model(**config)
    except (ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise CheckpointError(f"{path}: metadata model_config does not describe a model semseg can build ({message})") from None
    expected = skeleton.state_dict()
    with safe_open(str(path), framework="pt") as f:
        stored = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path}: tensors do not match its model_config ({meta['model_config']['name']}): "
                              f"missing {list_some(missing) or 'none'}, unexpected {list_some(unexpected) or 'none'}")  # fmt: skip
    for key, tensor in expected.items():
        shape, dtype = stored[key]
        if shape != tuple(tensor.shape):
            raise CheckpointError(f"{path}: tensor {key} has shape {list(shape)}, its model_config says {list(tensor.shape)}")
        allowed = _FLOAT_DTYPES if tensor.is_floating_point() else _INT_DTYPES.get(tensor.dtype, set())
        if dtype not in allowed:
            raise CheckpointError(f"{path}: tensor {key} is {dtype}, expected one of {', '.join(sorted(allowed))}")
    tensors = load_file(str(path))
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: tensor {key} holds NaN or infinite values; the weights are unusable")
    model = create_model(**config)
    model.load_state_dict(tensors)
    return model, meta

