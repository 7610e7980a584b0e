"""Fine-tuning: start a model from weights a user already has (``model.init_from`` in a recipe).

The source is a semseg checkpoint (a ``.safetensors`` path or a shipped model's name, see
:mod:`semseg.pretrained`) or a torchvision segmentation checkpoint (``.pth``/``.pt``, e.g.
``deeplabv3_resnet50_coco-cd0a2569.pth``). Every key must exist on both sides; tensors
whose shapes differ — the classifier of a model with another class count — keep their
fresh initialisation and are reported, everything else is loaded. An RGB checkpoint's input
conv loaded into a model of other ``in_channels`` is adapted (timm's rule,
:func:`~semseg.backbones.weights.adapt_input_conv`) rather than re-initialised, and reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from semseg.backbones import read_state_dict
from semseg.backbones.weights import adapt_input_convs
from semseg.config import ConfigError
from semseg.data.base import list_some
from semseg.engine.checkpoint import load_model
from semseg.models.torchvision_compat import remap_torchvision_keys
from semseg.pretrained import resolve_checkpoint
from semseg.registry import aux_free_twin


@dataclass(frozen=True)
class InitFromReport:
    """What :func:`init_from` did besides loading: the keys it left re-initialised (shape
    differs, e.g. the classifier), the RGB input convs it adapted, and the training-only
    aux-head keys the source lacks (a shipped model is stored without its aux head)."""

    loaded: int  # tensors taken from the source, adapted ones included
    reinitialised: list[str]
    adapted: list[str]
    fresh_aux: list[str]

    def describe(self, source: str | Path) -> str:
        """The line the trainer prints."""
        line = f"init_from {source}: loaded {self.loaded} tensors; re-initialised (shape differs): {', '.join(self.reinitialised) or 'none'}"
        if self.adapted:
            line += f"; adapted from RGB to the model's input channels: {', '.join(self.adapted)}"
        if self.fresh_aux:
            line += f"; aux head not in the source, trained from scratch: {list_some(self.fresh_aux)}"
        return line


def init_from(model: nn.Module, source: str) -> InitFromReport:
    """Load ``source``'s weights into ``model``; reports the keys re-initialised, adapted and freshly built."""
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
    fresh_aux = sorted((_aux_keys(model) & set(own)) - set(tensors))
    missing = sorted(set(own) - set(tensors) - optional - set(fresh_aux))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ConfigError(f"model.init_from {source} does not fit model {getattr(model, 'model_config', {}).get('name')}: "
                          f"missing {list_some(missing) or 'none'}; unexpected {list_some(unexpected) or 'none'}. "
                          "Choose the same architecture and backbone as the checkpoint")  # fmt: skip
    tensors, adapted = adapt_input_convs(tensors, own)
    reinitialised = [k for k in own if k in tensors and tuple(tensors[k].shape) != tuple(own[k].shape)]
    keep = {k: v for k, v in tensors.items() if k not in reinitialised}
    with torch.no_grad():
        model.load_state_dict(keep, strict=False)
    fresh_aux = [k for k in fresh_aux if not k.endswith("num_batches_tracked")]
    return InitFromReport(len(keep), reinitialised, adapted, fresh_aux)


def _aux_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of ``model``'s training-only aux head: those its ``aux: false`` twin lacks."""
    lean = aux_free_twin(model, device="meta")
    return set() if lean is None else set(model.state_dict()) - set(lean.state_dict())
