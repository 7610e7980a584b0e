"""Fine-tuning: start a model from weights a user already has (``model.init_from`` in a recipe).

The source is a semseg checkpoint (a ``.safetensors`` path or a shipped model's name, see
:mod:`semseg.pretrained`) or a torchvision segmentation checkpoint (``.pth``/``.pt``, e.g.
``deeplabv3_resnet50_coco-cd0a2569.pth``). Every key must exist on both sides; tensors
whose shapes differ — the classifier of a model with another class count — keep their
fresh initialisation and are reported, everything else is loaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from semseg.backbones import read_state_dict
from semseg.config import ConfigError
from semseg.data.base import list_some
from semseg.engine.checkpoint import load_model
from semseg.models.torchvision_compat import remap_torchvision_keys
from semseg.pretrained import resolve_checkpoint


def init_from(model: nn.Module, source: str) -> list[str]:
    """Load ``source``'s weights into ``model``; returns the keys left re-initialised (shape differs)."""
    path = resolve_checkpoint(source)
    if path.suffix == ".safetensors":
        tensors = load_model(path)[0].state_dict()
    elif path.suffix in (".pth", ".pt"):
        tensors = remap_torchvision_keys(model, read_state_dict(path))
        if getattr(model, "aux_classifier", None) is None:
            tensors = {k: v for k, v in tensors.items() if not k.startswith("aux_classifier.")}
    else:
        raise ConfigError(f"model.init_from {source}: expected a semseg .safetensors checkpoint, a shipped model's "
                          "name (semseg pretrained) or a torchvision .pth/.pt checkpoint")  # fmt: skip
    own = model.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    missing = sorted(set(own) - set(tensors) - optional)
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ConfigError(f"model.init_from {source} does not fit model {getattr(model, 'model_config', {}).get('name')}: "
                          f"missing {list_some(missing) or 'none'}; unexpected {list_some(unexpected) or 'none'}. "
                          "Choose the same architecture and backbone as the checkpoint")  # fmt: skip
    reinitialised = [k for k in own if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape)]
    keep = {k: v for k, v in tensors.items() if k not in reinitialised}
    with torch.no_grad():
        model.load_state_dict(keep, strict=False)
    return reinitialised


def describe(source: str | Path, reinitialised: list[str], loaded: int) -> str:
    """The line the trainer prints about what ``init_from`` did."""
    listed = ", ".join(reinitialised) if reinitialised else "none"
    return f"init_from {source}: loaded {loaded} tensors; re-initialised (shape differs): {listed}"
