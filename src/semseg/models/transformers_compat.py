"""Load Hugging Face ``transformers`` SegFormer checkpoints into :func:`semseg.models.segformer.segformer`.

Nothing is downloaded: pass a local ``.safetensors`` / ``.bin`` file or a ``save_pretrained``
folder (``model.safetensors`` or ``pytorch_model.bin``); ``.bin`` is read with
``weights_only=True``, so no pickled code runs.

Two namings exist and both load:

* the Hub's (every ``nvidia/mit-b*`` and ``nvidia/segformer-b*-*`` file, and what
  ``save_pretrained`` still writes): ``segformer.encoder.block.{i}.{j}.attention.self.query``,
  ``segformer.encoder.patch_embeddings.{i}``, ``segformer.encoder.layer_norm.{i}``,
  ``decode_head.linear_c.{i}``, ...;
* transformers 5's modules (``model.state_dict()``): ``segformer.stages.{i}.blocks.{j}.attention.q_proj``, ...

semseg's modules carry transformers 5's names with ``encoder`` for ``segformer``, so
:data:`RENAMES` — the Hub-to-transformers-5 renames transformers itself applies, plus that
prefix — maps either naming onto semseg's keys. ``SegformerModel`` files lack the
``segformer.`` prefix; ``SegformerForImageClassification`` files (``nvidia/mit-b*``) add the
ImageNet ``classifier.*``, which is dropped. A file with a ``decode_head`` loads into the
whole model; one without loads into the encoder and leaves the decoder as initialised.
Loading is strict: a missing, unexpected or wrongly shaped key is a ``ValueError`` listing
them, with the checkpoint's variant and class count when they differ from the model's; only
the RGB patch embedding of stage 1 is adapted to a model of other ``in_channels``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from semseg.backbones import read_state_dict
from semseg.backbones.weights import load_checked
from semseg.models.segformer import MIT_CONFIGS, SegFormer

# Applied in order to every key; keys already in semseg's naming pass unchanged.
RENAMES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), repl)
    for pattern, repl in (
        (r"^segformer\.", ""),
        (r"^encoder\.patch_embeddings\.(\d+)\.", r"stages.\1.patch_embeddings."),
        (r"^encoder\.block\.(\d+)\.(\d+)\.", r"stages.\1.blocks.\2."),
        (r"^encoder\.layer_norm\.(\d+)\.", r"stages.\1.layer_norm."),
        (r"\.layer_norm_1\.", ".layernorm_before."),
        (r"\.layer_norm_2\.", ".layernorm_after."),
        (r"\.attention\.self\.query\.", ".attention.q_proj."),
        (r"\.attention\.self\.key\.", ".attention.k_proj."),
        (r"\.attention\.self\.value\.", ".attention.v_proj."),
        (r"\.attention\.self\.sr\.", ".attention.sequence_reduction.sequence_reduction."),
        (r"\.attention\.self\.layer_norm\.", ".attention.sequence_reduction.layer_norm."),
        (r"\.attention\.output\.dense\.", ".attention.o_proj."),
        (r"\.mlp\.dense1\.", ".mlp.fc1."),
        (r"\.mlp\.dense2\.", ".mlp.fc2."),
        (r"^decode_head\.linear_c\.", "decode_head.linear_projections."),
        (r"^stages\.", "encoder.stages."),
    )
)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def read_transformers_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a transformers weights file or ``save_pretrained`` folder, keys as stored."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in WEIGHT_FILES if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds neither {' nor '.join(WEIGHT_FILES)} (a save_pretrained folder)")
        path = found[0]
    if path.suffix != ".bin":
        return read_state_dict(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state


def transformers_to_semseg_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename either transformers naming to semseg's; drop an ImageNet ``classifier.*``."""
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in RENAMES:
            key = pattern.sub(repl, key)
        if not key.startswith("classifier."):
            out[key] = value
    return out


def load_transformers_segformer(model: SegFormer, weights: str | Path | Mapping[str, torch.Tensor]) -> None:
    """Load a transformers SegFormer checkpoint (path or state dict) into ``model``, strictly.

    With ``decode_head.*`` keys the whole model is loaded, else only ``model.encoder``.
    """
    source = str(weights) if isinstance(weights, (str, Path)) else "the state dict"
    raw = read_transformers_state_dict(weights) if isinstance(weights, (str, Path)) else weights
    state = transformers_to_semseg_keys(raw)
    has_head = any(k.startswith("decode_head.") for k in state)
    try:
        if has_head:
            load_checked(model, state, f"transformers weights in {source}")
        else:
            encoder_state = {k.removeprefix("encoder."): v for k, v in state.items()}
            load_checked(model.encoder, encoder_state, f"transformers encoder weights in {source}")
    except ValueError as error:
        theirs, ours = _describe(state, has_head), _describe(model.state_dict(), has_head)
        hint = "" if theirs == ours else f"the checkpoint holds {theirs} but the model is {ours}; "
        raise ValueError(f"{hint}{error}") from None


def _describe(state: Mapping[str, torch.Tensor], has_head: bool) -> str:
    """``"mit_b2, 150 classes"``-like summary of a semseg-keyed state dict, read from its shapes."""
    stage = re.compile(r"^encoder\.stages\.(\d+)\.blocks\.(\d+)\.")
    depths = [0, 0, 0, 0]
    for key in state:
        match = stage.match(key)
        if match and int(match[1]) < 4:
            depths[int(match[1])] = max(depths[int(match[1])], int(match[2]) + 1)
    hidden = [state.get(f"encoder.stages.{i}.patch_embeddings.proj.weight") for i in range(4)]
    sizes = tuple(0 if w is None else w.shape[0] for w in hidden)
    decoder = state["decode_head.linear_fuse.weight"].shape[0] if "decode_head.linear_fuse.weight" in state else None
    name = next((n for n, c in MIT_CONFIGS.items() if (c.hidden_sizes, c.depths) == (sizes, tuple(depths))
                 and (decoder is None or c.decoder_channels == decoder)), None)  # fmt: skip
    text = name or f"an encoder with hidden sizes {sizes} and depths {tuple(depths)}"
    if has_head and "decode_head.classifier.weight" in state:
        text += f", {state['decode_head.classifier.weight'].shape[0]} classes"
    return text

