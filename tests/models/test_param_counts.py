"""Parameter counts against the papers and torchvision, measured on the meta device (no memory, no init cost).

torchvision's published ``num_params`` are for its COCO-with-VOC-labels checkpoints,
which are built with ``aux_loss=True`` (21 classes) — except LR-ASPP, which has no
auxiliary head. Without the aux head subtract FCNHead(1024, 21) = 2,365,205
(ResNet) or FCNHead(40, 21) = 3,851 (MobileNetV3).
"""

from __future__ import annotations

import pytest
import torch

import semseg
from semseg.profile import count_params


def params(name: str, **options) -> int:
    with torch.device("meta"):
        return count_params(semseg.create_model(name, **options))


# Exact: torchvision's meta["num_params"] for the same architecture.
TORCHVISION_EXACT = [
    ("fcn", {"backbone": "resnet50", "aux": True}, 35_322_218),  # fcn_resnet50
    ("fcn", {"backbone": "resnet101", "aux": True}, 54_314_346),  # fcn_resnet101
    ("deeplabv3", {"backbone": "resnet50", "aux": True}, 42_004_074),  # deeplabv3_resnet50
    ("deeplabv3", {"backbone": "resnet101", "aux": True}, 60_996_202),  # deeplabv3_resnet101
    ("deeplabv3", {"backbone": "mobilenet_v3_large", "aux": True}, 11_029_328),  # deeplabv3_mobilenet_v3_large
    ("lraspp", {}, 3_221_538),  # lraspp_mobilenet_v3_large
    # The same models without their aux heads.
    ("fcn", {"backbone": "resnet50"}, 35_322_218 - 2_365_205),
    ("deeplabv3", {"backbone": "resnet50"}, 42_004_074 - 2_365_205),
    ("deeplabv3", {"backbone": "mobilenet_v3_large"}, 11_029_328 - 3_851),
]


@pytest.mark.parametrize(("name", "options", "expected"), TORCHVISION_EXACT)
def test_torchvision_parameter_counts_exactly(name, options, expected):
    assert params(name, num_classes=21, **options) == expected


# Approximate: the papers' reported sizes (21 classes, no aux head), within 2%.
PAPER_APPROX = [
    ("fcn8s", {}, 134.3e6),  # Long et al.: FCN-8s VGG16 ~134M
    ("segnet", {}, 29.4e6),  # Badrinarayanan et al.: ~29.5M
    ("unet", {"num_classes": 2, "batch_norm": False}, 31.0e6),  # Ronneberger et al. with 'same' convs
    # Xie et al. (SegFormer), Table 1, with the ADE20K head (150 classes).
    *(("segformer", {"num_classes": 150, "backbone": f"mit_b{i}"}, n)
      for i, n in enumerate((3.8e6, 13.7e6, 27.5e6, 47.3e6, 64.1e6, 84.7e6))),
    # Hong et al. (DDRNet), Table 4 (Cityscapes, 19 classes).
    ("ddrnet_23_slim", {"num_classes": 19}, 5.7e6),
    ("ddrnet_23", {"num_classes": 19}, 20.1e6),
    # Yu et al. (BiSeNet V2), 19 classes: 3.4M is the inference model, without the booster
    # head (3,358,627 here); the stage-5 booster adds 1,201,171 for training only.
    ("bisenetv2", {"num_classes": 19, "aux": False}, 3.4e6),
]


@pytest.mark.parametrize(("name", "options", "expected"), PAPER_APPROX)
def test_paper_parameter_counts(name, options, expected):
    options = {"num_classes": 21, **options}
    assert params(name, **options) == pytest.approx(expected, rel=0.02)


def test_fcn_variants_differ_only_by_their_skip_and_upsampling_layers():
    base = params("fcn32s", num_classes=21)
    # score_pool4 (512*21 + 21) + a per-class 4x4 upscore2 - (upscore 64x64 -> upscore16 32x32)
    assert params("fcn16s", num_classes=21) - base == 10_773 + 21 * 16 - 21 * (64 * 64 - 32 * 32)
    assert params("fcn8s", num_classes=21) - params("fcn16s", num_classes=21) == (
        5_397 + 21 * 16 - 21 * (32 * 32 - 16 * 16)
    )


def test_pspnet_resnet50_head_size():
    # Pyramid: 4 x (2048*512 + BN 1024); 3x3 conv 4096 -> 512 + BN; classifier 512*21 + 21.
    head = 4 * (2048 * 512 + 1024) + 4096 * 512 * 9 + 1024 + 512 * 21 + 21
    resnet50_trunk = 23_508_032
    assert params("pspnet", num_classes=21, aux=False) == resnet50_trunk + head


def test_bisenetv2_booster_heads_are_the_only_difference():
    def head(c_in, hidden, n=19):  # SegmentHead: 3x3 conv c_in -> hidden + BN, classifier hidden*n + n
        return c_in * hidden * 9 + 2 * hidden + hidden * n + n

    s5 = head(128, 1024)
    assert params("bisenetv2", num_classes=19, aux_boosters="s5") - params("bisenetv2", num_classes=19, aux=False) == s5
    boosters = s5 + head(16, 16) + head(32, 64) + head(64, 256)  # S2, S3, S4 with MMSegmentation's widths
    assert params("bisenetv2", num_classes=19) - params("bisenetv2", num_classes=19, aux=False) == boosters
