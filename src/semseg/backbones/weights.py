"""Load ImageNet weights into a backbone from a local torchvision- or timm-named file.

Nothing is downloaded: pass the path of a ``.pth``/``.pt`` (read with
``weights_only=True``, so no pickled code runs) or ``.safetensors`` file. Classifier
weights are dropped; everything else must match the backbone exactly, and a mismatch
fails with the offending keys rather than leaving layers silently random. The one
exception is the input convolution of a model built for other than 3 input channels:
its RGB weights are adapted by :func:`adapt_input_conv`.
"""

from __future__ import annotations

import math
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from semseg.backbones.mobilenet import (
    TIMM_BN_EPS,
    TORCHVISION_BN_EPS,
    MobileNetV3,
    remap_timm_keys,
    set_batch_norm_eps,
)

# Top-level modules that belong to the ImageNet classifier, not the trunk:
# torchvision's fc (ResNet) and classifier (VGG, MobileNetV3); timm's head and
# pre_logits (VGG), and conv_head/classifier (MobileNetV3, whose conv_head runs after
# global pooling).
_CLASSIFIER_MODULES = frozenset({"fc", "classifier", "head", "pre_logits", "conv_head"})
_LIST_LIMIT = 10


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pth``/``.pt`` or ``.safetensors``.

    Accepts a bare state dict or a checkpoint holding one under ``"state_dict"`` or
    ``"model"``, and strips the ``module.`` prefix that DataParallel/DDP leave behind.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".pth", ".pt"):
        try:  # weights_only: tensors and plain containers only, never code from the file
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
            if found is None:
                raise ValueError(f"{path} is not a readable PyTorch weights file: damaged, cut short, or not written "
                                 "by torch.save (UnpicklingError); a safetensors file must end in .safetensors") from None  # fmt: skip
            raise ValueError(f"{path} holds Python objects besides tensors ({found.group(1)}), which semseg does not "
                             "unpickle (they could run code); where you trust the file, save just its weights: "
                             "torch.save(torch.load(FILE, weights_only=False)['state_dict'], 'weights.pth')") from None  # fmt: skip
        except (RuntimeError, EOFError, KeyError, ValueError, IndexError) as exc:
            raise ValueError(f"{path} is not a readable PyTorch weights file: damaged, cut short, or not written by "
                             f"torch.save ({type(exc).__name__}); a safetensors file must end in .safetensors") from None  # fmt: skip
    elif suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{path} is not a readable safetensors file ({exc})") from None
    else:
        raise ValueError(f"unsupported weights file {path}: extension {suffix!r}, expected .pth, .pt or .safetensors")
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path} does not hold a state dict (a mapping of names to tensors), "
            "nor one under 'state_dict' or 'model'"
        )
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def detect_naming(state_dict: dict[str, torch.Tensor]) -> str:
    """``"timm"`` or ``"torchvision"``, from keys only timm uses.

    timm's ResNets use torchvision's names, so they read as ``"torchvision"``, which
    loads them correctly.
    """
    timm_markers = ("conv_stem.", "blocks.", "pre_logits.", "head.fc.", "conv_head.")
    return "timm" if any(k.startswith(timm_markers) for k in state_dict) else "torchvision"


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load ImageNet weights from ``path`` into ``backbone`` (torchvision or timm naming).

    Raises ``ValueError`` naming the missing, unexpected and wrongly shaped keys if
    the file does not fit. ``num_batches_tracked`` may be absent (older torchvision
    files and many timm files lack it); the backbone's own value is kept then.
    """
    state_dict = read_state_dict(path)
    naming = detect_naming(state_dict)
    is_timm_mobilenet = naming == "timm" and isinstance(backbone, MobileNetV3)
    if is_timm_mobilenet:
        state_dict = remap_timm_keys(state_dict)
    state_dict = {k: v for k, v in state_dict.items() if k.split(".", 1)[0] not in _CLASSIFIER_MODULES}

    load_checked(backbone, state_dict, f"weights in {path} ({naming} naming)")
    if isinstance(backbone, MobileNetV3):
        set_batch_norm_eps(backbone, TIMM_BN_EPS if is_timm_mobilenet else TORCHVISION_BN_EPS)


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB conv weight ``(out, 3, kh, kw)`` adapted to ``in_channels`` inputs, as timm's ``adapt_input_conv``.

    One channel: the sum over RGB, so a grey image gives what the RGB conv gives on that
    image repeated in all three channels. Otherwise the RGB kernels are repeated
    cyclically up to ``in_channels`` and scaled by ``3 / in_channels``, which keeps the
    response to an image of equal channels near the RGB one (equal for multiples of 3).
    Computed in float32 and returned in the weight's dtype.
    """
    if weight.dim() != 4 or weight.shape[1] != 3:
        raise ValueError(f"expected an RGB conv weight (out, 3, kh, kw), got shape {tuple(weight.shape)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    w = weight.float()
    if in_channels == 1:
        w = w.sum(dim=1, keepdim=True)
    elif in_channels != 3:
        w = w.repeat(1, math.ceil(in_channels / 3), 1, 1)[:, :in_channels] * (3 / in_channels)
    return w.to(weight.dtype)


def adapt_input_convs(
    state_dict: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``state_dict`` with its RGB input-conv weights adapted to ``own`` (the model's state dict); and their keys.

    An input conv is recognised by shape, not by name, so it works for every model (and
    for BiSeNet V2's two): a 4-d weight that has 3 input channels in ``state_dict`` and
    another count in ``own``, every other dimension equal. Only convs that read the image
    change width with ``in_channels``.
    """
    adapted = [
        k for k, v in state_dict.items()
        if k in own and v.dim() == 4 and own[k].dim() == 4 and v.shape[1] == 3 and own[k].shape[1] != 3
        and v.shape[0] == own[k].shape[0] and v.shape[2:] == own[k].shape[2:]
    ]  # fmt: skip
    out = dict(state_dict)
    for k in adapted:
        out[k] = adapt_input_conv(state_dict[k], own[k].shape[1])
    return out, adapted


def load_checked(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` into ``module`` only if every key and shape fits; else a ``ValueError`` naming them.

    ``source`` says where the weights came from, for the message. Only BatchNorm's
    ``num_batches_tracked`` may be absent (older torchvision and many timm files lack
    it); the module keeps its own value then. RGB input convs are adapted to the
    module's input channels (:func:`adapt_input_convs`).
    """
    own = module.state_dict()
    state_dict = adapt_input_convs(state_dict, own)[0]
    missing = [k for k in own if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k}: loaded {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        problems = [
            _describe("missing key", missing),
            _describe("unexpected key", unexpected),
            _describe("shape mismatch", mismatched),
        ]
        raise ValueError(
            f"{source} do not fit {type(module).__name__}: " + "; ".join(p for p in problems if p)
        )
    module.load_state_dict({**own, **state_dict})


def _describe(what: str, items: list[str]) -> str:
    if not items:
        return ""
    shown = ", ".join(items[:_LIST_LIMIT])
    more = f", ... ({len(items) - _LIST_LIMIT} more)" if len(items) > _LIST_LIMIT else ""
    return f"{len(items)} {what}(s): {shown}{more}"
