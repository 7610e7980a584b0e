"""Loading torchvision- and timm-named ImageNet weights from local files.

The files are built here with the source library's key names (our keys plus the
classifier keys torchvision/timm would have); the timm names of MobileNetV3 are written
out from timm's module list rather than produced by the code under test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from semseg.backbones import Backbone, create_backbone, detect_naming, load_backbone_weights


def _big(*shape: int) -> torch.Tensor:
    # Right shape, one element of storage: torch.save keeps the zero strides, so a
    # 4096x25088 VGG classifier costs bytes, not 400 MB. (safetensors needs contiguous.)
    return torch.zeros(()).expand(*shape)


TORCHVISION_CLASSIFIERS = {
    "resnet18": {"fc.weight": (1000, 512), "fc.bias": (1000,)},
    "resnet34": {"fc.weight": (1000, 512), "fc.bias": (1000,)},
    "vgg16": {
        "classifier.0.weight": (4096, 25088),
        "classifier.0.bias": (4096,),
        "classifier.3.weight": (4096, 4096),
        "classifier.3.bias": (4096,),
        "classifier.6.weight": (1000, 4096),
        "classifier.6.bias": (1000,),
    },
    "mobilenet_v3_large": {
        "classifier.0.weight": (1280, 960),
        "classifier.0.bias": (1280,),
        "classifier.3.weight": (1000, 1280),
        "classifier.3.bias": (1000,),
    },
}
TORCHVISION_CLASSIFIERS["vgg16_bn"] = TORCHVISION_CLASSIFIERS["vgg16"]

TIMM_CLASSIFIERS = {
    "resnet18": TORCHVISION_CLASSIFIERS["resnet18"],
    "vgg16_bn": {
        "pre_logits.fc1.weight": (4096, 512, 7, 7),
        "pre_logits.fc1.bias": (4096,),
        "pre_logits.fc2.weight": (4096, 4096, 1, 1),
        "pre_logits.fc2.bias": (4096,),
        "head.fc.weight": (1000, 4096),
        "head.fc.bias": (1000,),
    },
    "mobilenet_v3_large": {
        "conv_head.weight": (1280, 960, 1, 1),
        "conv_head.bias": (1280,),
        "classifier.weight": (1000, 1280),
        "classifier.bias": (1000,),
    },
}

# timm mobilenetv3_large_100 module -> torchvision module. Stages follow timm's arch_def
# (ds x1 | ir x2 | ir+se x3 | ir x4 | ir+se x2 | ir+se x3 | cn x1); torchvision numbers
# the units of each block's ``.block`` in execution order.
_DS = {"conv_dw": "block.0.0", "bn1": "block.0.1", "conv_pw": "block.1.0", "bn2": "block.1.1"}
_IR = {
    "conv_pw": "block.0.0", "bn1": "block.0.1", "conv_dw": "block.1.0", "bn2": "block.1.1",
    "conv_pwl": "block.2.0", "bn3": "block.2.1",
}  # fmt: skip
_IR_SE = {
    "conv_pw": "block.0.0", "bn1": "block.0.1", "conv_dw": "block.1.0", "bn2": "block.1.1",
    "se.conv_reduce": "block.2.fc1", "se.conv_expand": "block.2.fc2",
    "conv_pwl": "block.3.0", "bn3": "block.3.1",
}  # fmt: skip
_TIMM_BLOCKS = [
    ("blocks.0.0", 1, _DS),
    ("blocks.1.0", 2, _IR), ("blocks.1.1", 3, _IR),
    ("blocks.2.0", 4, _IR_SE), ("blocks.2.1", 5, _IR_SE), ("blocks.2.2", 6, _IR_SE),
    ("blocks.3.0", 7, _IR), ("blocks.3.1", 8, _IR), ("blocks.3.2", 9, _IR), ("blocks.3.3", 10, _IR),
    ("blocks.4.0", 11, _IR_SE), ("blocks.4.1", 12, _IR_SE),
    ("blocks.5.0", 13, _IR_SE), ("blocks.5.1", 14, _IR_SE), ("blocks.5.2", 15, _IR_SE),
]  # fmt: skip
TORCHVISION_TO_TIMM_MOBILENET = {
    "features.0.0": "conv_stem",
    "features.0.1": "bn1",
    "features.16.0": "blocks.6.0.conv",
    "features.16.1": "blocks.6.0.bn1",
    **{
        f"features.{index}.{ours}": f"{timm_block}.{theirs}"
        for timm_block, index, units in _TIMM_BLOCKS
        for theirs, ours in units.items()
    },
}


def _random_state(backbone: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The backbone's keys and shapes with values it would not have by itself."""
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(v.shape, generator=g) if v.is_floating_point() else torch.full_like(v, 7)
        for k, v in backbone.state_dict().items()
    }


def _with(state: dict[str, torch.Tensor], extra: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    return {**state, **{k: _big(*shape) for k, shape in extra.items()}}


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def _assert_loaded(backbone: Backbone, expected: dict[str, torch.Tensor]) -> None:
    actual = backbone.state_dict()
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


def _bn_eps(backbone: nn.Module) -> set[float]:
    return {m.eps for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)}


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("resnet18", ".pth"),
        ("resnet18", ".safetensors"),
        ("resnet34", ".pt"),
        ("vgg16", ".pth"),
        ("vgg16_bn", ".pth"),
        ("mobilenet_v3_large", ".pth"),
        ("mobilenet_v3_large", ".safetensors"),
    ],
)
def test_loads_torchvision_named_file(name: str, suffix: str, tmp_path: Path) -> None:
    state = _random_state(create_backbone(name), seed=1)
    file_state = _with(state, TORCHVISION_CLASSIFIERS[name])
    if suffix == ".safetensors":
        file_state = {k: v.contiguous() for k, v in file_state.items()}
    path = _save(file_state, tmp_path / f"{name}{suffix}")
    assert detect_naming(file_state) == "torchvision"
    backbone = create_backbone(name)
    load_backbone_weights(backbone, path)
    _assert_loaded(backbone, state)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_loads_timm_mobilenetv3_large_100(suffix: str, tmp_path: Path) -> None:
    backbone = create_backbone("mobilenet_v3_large", output_stride=16)
    state = _random_state(backbone, seed=2)
    timm_state: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        timm_state[f"{TORCHVISION_TO_TIMM_MOBILENET[module]}.{param}"] = value
    timm_state = _with(timm_state, TIMM_CLASSIFIERS["mobilenet_v3_large"])
    timm_state = {k: v.contiguous() for k, v in timm_state.items()}
    assert "blocks.2.0.se.conv_reduce.weight" in timm_state
    assert detect_naming(timm_state) == "timm"
    load_backbone_weights(backbone, _save(timm_state, tmp_path / f"timm{suffix}"))
    _assert_loaded(backbone, state)
    # timm trained with PyTorch's BatchNorm eps; torchvision's weights expect 1e-3.
    assert _bn_eps(backbone) == {1e-5}
    tv_path = _save(_with(state, TORCHVISION_CLASSIFIERS["mobilenet_v3_large"]), tmp_path / "tv.pth")
    load_backbone_weights(backbone, tv_path)
    assert _bn_eps(backbone) == {1e-3}


@pytest.mark.parametrize("name", ["resnet18", "vgg16_bn"])
def test_loads_timm_named_file(name: str, tmp_path: Path) -> None:
    # timm's resnet and vgg trunks use torchvision's names; only their classifiers differ.
    state = _random_state(create_backbone(name), seed=3)
    path = _save(_with(state, TIMM_CLASSIFIERS[name]), tmp_path / f"{name}.pth")
    backbone = create_backbone(name)
    load_backbone_weights(backbone, path)
    _assert_loaded(backbone, state)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "module."])
def test_accepts_checkpoint_wrappers(wrapper: str, tmp_path: Path) -> None:
    state = _random_state(create_backbone("resnet18"), seed=4)
    if wrapper == "module.":
        content: dict = {f"module.{k}": v for k, v in state.items()}
    else:
        content = {wrapper: state, "epoch": 90}
    backbone = create_backbone("resnet18")
    load_backbone_weights(backbone, _save(content, tmp_path / "ckpt.pth"))
    _assert_loaded(backbone, state)


def test_missing_num_batches_tracked_is_tolerated(tmp_path: Path) -> None:
    # Older torchvision files and many timm files have no num_batches_tracked.
    backbone = create_backbone("resnet18")
    state = _random_state(backbone, seed=5)
    trimmed = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    load_backbone_weights(backbone, _save(trimmed, tmp_path / "old.pth"))
    for key, value in trimmed.items():
        assert torch.equal(backbone.state_dict()[key], value)


def test_mismatch_names_missing_and_unexpected_keys(tmp_path: Path) -> None:
    backbone = create_backbone("resnet18")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    state = _random_state(backbone, seed=6)
    del state["layer1.0.conv1.weight"]
    state["layer5.0.conv1.weight"] = torch.zeros(3)
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(ValueError) as info:
        load_backbone_weights(backbone, _save(state, tmp_path / "bad.pth"))
    message = str(info.value)
    assert "1 missing key(s): layer1.0.conv1.weight" in message
    assert "1 unexpected key(s): layer5.0.conv1.weight" in message
    assert "conv1.weight: loaded (64, 3, 3, 3) vs model (64, 3, 7, 7)" in message
    assert "ResNet" in message
    _assert_loaded(backbone, before)  # nothing was half-loaded


def test_wrong_architecture_lists_first_keys_and_counts(tmp_path: Path) -> None:
    state = _random_state(create_backbone("mobilenet_v3_large"), seed=7)
    with pytest.raises(ValueError) as info:
        load_backbone_weights(create_backbone("resnet18"), _save(state, tmp_path / "mnv3.pth"))
    message = str(info.value)
    # resnet18 has 120 keys, 20 of them num_batches_tracked (which may be absent).
    assert "100 missing key(s): conv1.weight, bn1.weight" in message
    assert "(90 more)" in message
    assert "308 unexpected key(s): features.0.0.weight" in message
    assert "(298 more)" in message


def test_missing_file_and_bad_extension(tmp_path: Path) -> None:
    backbone = create_backbone("resnet18")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_backbone_weights(backbone, tmp_path / "nope.pth")
    npz = tmp_path / "weights.npz"
    npz.write_bytes(b"\0")
    with pytest.raises(ValueError, match=r"'\.npz'.*\.safetensors"):
        load_backbone_weights(backbone, npz)


def test_file_without_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="state dict"):
        load_backbone_weights(create_backbone("resnet18"), path)
