"""A training run's folder: one epoch's checkpoint committed as a whole, and recovered after any crash.

An epoch ends with two files that must agree — the weights (``last.safetensors``) and the
training state (``last.state.pt``: optimizer, schedule, RNG). Each is first written in full
as ``next.*`` (itself atomically, through a temporary file), and only then are both renamed
over ``last.*``, weights first. A crash at any instant therefore leaves either the old pair
intact, or a complete new pair (part of it still named ``next.*``) that :func:`recover`
finishes committing. ``log.jsonl`` is appended before the commit and cut back to the
restored epoch on resume, so an epoch is never logged twice.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from semseg.engine.checkpoint import load_training_state, read_metadata, save_training_state, save_weights
from semseg.paths import check_folder

WEIGHTS, STATE = "last.safetensors", "last.state.pt"
NEXT_WEIGHTS, NEXT_STATE = "next.safetensors", "next.state.pt"
# What a run writes; --overwrite removes exactly these (and nothing a user put beside them).
RUN_FILES = (WEIGHTS, STATE, NEXT_WEIGHTS, NEXT_STATE, "best.safetensors", "log.jsonl", "curves.png")


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (occupied, or not resumable); the message says what to do."""


def prepare(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Make ``out`` ready: refuse to mix a fresh run into an earlier one unless told to overwrite it."""
    existing = [name for name in RUN_FILES if (out / name).exists()] + (["tensorboard/"] if (out / "tensorboard").is_dir() else [])
    if resume:
        if overwrite:
            raise RunFolderError("--resume and --overwrite contradict each other; choose one")
        return
    check_folder(out, f"out: {out}")
    out.mkdir(parents=True, exist_ok=True)  # now, not when the first epoch's log is written
    if existing and not overwrite:
        raise RunFolderError(f"{out} already holds a run ({', '.join(existing)}); pass --resume to continue it, "
                             "--overwrite to replace it, or choose another out: folder")  # fmt: skip
    for name in existing:
        path = out / name.rstrip("/")
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    remove_stale_temporaries(out)


def commit(out: Path, model: nn.Module, state: dict[str, Any], meta: dict[str, Any], *, is_best: bool) -> None:
    """Write this epoch's weights and training state as one unit (see the module docstring)."""
    save_training_state(out / NEXT_STATE, state)
    save_weights(model, out / NEXT_WEIGHTS, **meta)
    _roll_forward(out)
    if is_best:
        save_weights(model, out / "best.safetensors", **meta)


def recover(out: Path) -> None:
    """Finish or discard a commit that a crash interrupted, so ``last.*`` is one consistent pair."""
    remove_stale_temporaries(out)
    next_state, next_weights = out / NEXT_STATE, out / NEXT_WEIGHTS
    if not next_state.exists():
        next_weights.unlink(missing_ok=True)  # cannot happen in order; an orphan either way
        return
    epoch = _state_epoch(next_state)
    if next_weights.exists() and read_metadata(next_weights)["epoch"] == epoch:
        _roll_forward(out)  # both new files complete: crashed before (or between) the renames
    elif (out / WEIGHTS).exists() and read_metadata(out / WEIGHTS)["epoch"] == epoch:
        os.replace(next_state, out / STATE)  # crashed between the two renames
    else:
        next_state.unlink()  # crashed before the new weights were complete: the old pair stands
        next_weights.unlink(missing_ok=True)


def restore_best(out: Path, history: list[dict[str, Any]], best: float) -> None:
    """Re-write ``best.safetensors`` from ``last`` if the restored epoch was the best and the crash came before its copy."""
    if not history or history[-1].get("val_mIoU") is None or history[-1]["val_mIoU"] < best:
        return
    best_path = out / "best.safetensors"
    if not best_path.exists() or read_metadata(best_path)["epoch"] != history[-1]["epoch"]:
        tmp = out / ".best.safetensors.copy.tmp"
        shutil.copyfile(out / WEIGHTS, tmp)
        os.replace(tmp, best_path)


def truncate_log(out: Path, epoch: int) -> None:
    """Keep the ``log.jsonl`` records of epochs ``<= epoch`` (later ones were logged but never committed).

    A last line cut short (a kill or a full disk while it was appended) is dropped with them;
    an unreadable line before it is not something a crash leaves, so it stops the resume.
    """
    log = out / "log.jsonl"
    if not log.exists():
        return
    lines = log.read_text(errors="replace").splitlines()
    kept = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise RunFolderError(f"{log}, line {number}: not a JSON record ({line[:60]!r}); repair or delete that "
                                 "line, then resume again") from None  # fmt: skip
        if record is not None and record["epoch"] <= epoch:
            kept.append(line)
    tmp = out / ".log.jsonl.truncate.tmp"
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, log)


def remove_stale_temporaries(out: Path) -> None:
    """Delete ``.*.tmp`` files a killed process left behind (from atomic writes; never read)."""
    for tmp in out.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _roll_forward(out: Path) -> None:
    # Weights first: a crash between the renames leaves new weights beside next.state.pt,
    # which recover() completes; the reverse order would leave new state beside old weights.
    os.replace(out / NEXT_WEIGHTS, out / WEIGHTS)
    os.replace(out / NEXT_STATE, out / STATE)


def _state_epoch(path: Path) -> int:
    return int(load_training_state(path)["epoch"])
