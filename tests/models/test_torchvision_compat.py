"""torchvision segmentation checkpoints load into fcn / deeplabv3 / lraspp and compute the same function.

The state dicts are written here from torchvision's module structure, not produced by
the code under test:

* ``backbone.*`` — an ``IntermediateLayerGetter`` keeps the children of the ResNet up
  to layer4 (``conv1, bn1, layer1..layer4``) or of MobileNetV3's ``features``
  (``backbone.0`` .. ``backbone.16``);
* ``classifier.*`` / ``aux_classifier.*`` — ``FCNHead`` is ``Sequential(conv, bn,
  relu, dropout, conv)``; ``DeepLabHead`` is ``Sequential(ASPP, conv, bn, relu, conv)``
  with ``ASPP.convs = [Seq(conv, bn, relu), 3 x ASPPConv(conv, bn, relu),
  ASPPPooling(pool, conv, bn, relu)]`` and ``ASPP.project = Seq(conv, bn, relu, dropout)``;
  ``LRASPPHead`` has ``cbr = Seq(conv, bn, relu)``, ``scale = Seq(pool, conv, sigmoid)``,
  ``low_classifier`` and ``high_classifier``.

The heads' functions are then recomputed from those tensors with ``torch.nn.functional``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import semseg
from semseg.models.torchvision_compat import load_torchvision_segmentation

Shapes = dict[str, tuple[int, ...]]


def bn(prefix: str, c: int) -> Shapes:
    return {
        f"{prefix}.weight": (c,), f"{prefix}.bias": (c,),
        f"{prefix}.running_mean": (c,), f"{prefix}.running_var": (c,),
        f"{prefix}.num_batches_tracked": (),
    }  # fmt: skip


def resnet50_keys(prefix: str = "backbone") -> Shapes:
    keys = {f"{prefix}.conv1.weight": (64, 3, 7, 7), **bn(f"{prefix}.bn1", 64)}
    inplanes = 64
    for stage, (blocks, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for j in range(blocks):
            p = f"{prefix}.layer{stage}.{j}"
            keys[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            keys.update(bn(f"{p}.bn1", planes))
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            keys.update(bn(f"{p}.bn2", planes))
            keys[f"{p}.conv3.weight"] = (planes * 4, planes, 1, 1)
            keys.update(bn(f"{p}.bn3", planes * 4))
            if j == 0:
                keys[f"{p}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                keys.update(bn(f"{p}.downsample.1", planes * 4))
            inplanes = planes * 4
    return keys


# torchvision's _mobilenet_v3_conf("mobilenet_v3_large"): in, kernel, expanded, out, SE;
# SE squeeze widths are _make_divisible(expanded // 4, 8).
MOBILENET_BLOCKS = [
    (16, 3, 16, 16, False), (16, 3, 64, 24, False), (24, 3, 72, 24, False),
    (24, 5, 72, 40, True), (40, 5, 120, 40, True), (40, 5, 120, 40, True),
    (40, 3, 240, 80, False), (80, 3, 200, 80, False), (80, 3, 184, 80, False),
    (80, 3, 184, 80, False), (80, 3, 480, 112, True), (112, 3, 672, 112, True),
    (112, 5, 672, 160, True), (160, 5, 960, 160, True), (160, 5, 960, 160, True),
]  # fmt: skip
SQUEEZE = {72: 24, 120: 32, 480: 120, 672: 168, 960: 240}


def mobilenet_keys(prefix: str = "backbone") -> Shapes:
    keys = {f"{prefix}.0.0.weight": (16, 3, 3, 3), **bn(f"{prefix}.0.1", 16)}
    for n, (cin, k, exp, cout, se) in enumerate(MOBILENET_BLOCKS, start=1):
        unit = 0
        p = f"{prefix}.{n}.block"
        if exp != cin:
            keys[f"{p}.0.0.weight"] = (exp, cin, 1, 1)
            keys.update(bn(f"{p}.0.1", exp))
            unit = 1
        keys[f"{p}.{unit}.0.weight"] = (exp, 1, k, k)
        keys.update(bn(f"{p}.{unit}.1", exp))
        unit += 1
        if se:
            sq = SQUEEZE[exp]
            keys.update({
                f"{p}.{unit}.fc1.weight": (sq, exp, 1, 1), f"{p}.{unit}.fc1.bias": (sq,),
                f"{p}.{unit}.fc2.weight": (exp, sq, 1, 1), f"{p}.{unit}.fc2.bias": (exp,),
            })  # fmt: skip
            unit += 1
        keys[f"{p}.{unit}.0.weight"] = (cout, exp, 1, 1)
        keys.update(bn(f"{p}.{unit}.1", cout))
    keys[f"{prefix}.16.0.weight"] = (960, 160, 1, 1)
    keys.update(bn(f"{prefix}.16.1", 960))
    return keys


def fcn_head_keys(prefix: str, cin: int, classes: int) -> Shapes:
    return {
        f"{prefix}.0.weight": (cin // 4, cin, 3, 3), **bn(f"{prefix}.1", cin // 4),
        f"{prefix}.4.weight": (classes, cin // 4, 1, 1), f"{prefix}.4.bias": (classes,),
    }  # fmt: skip


def deeplab_head_keys(cin: int, classes: int) -> Shapes:
    p = "classifier.0"
    keys = {f"{p}.convs.0.0.weight": (256, cin, 1, 1), **bn(f"{p}.convs.0.1", 256)}
    for i in (1, 2, 3):
        keys[f"{p}.convs.{i}.0.weight"] = (256, cin, 3, 3)
        keys.update(bn(f"{p}.convs.{i}.1", 256))
    keys[f"{p}.convs.4.1.weight"] = (256, cin, 1, 1)
    keys.update(bn(f"{p}.convs.4.2", 256))
    keys[f"{p}.project.0.weight"] = (256, 5 * 256, 1, 1)
    keys.update(bn(f"{p}.project.1", 256))
    keys["classifier.1.weight"] = (256, 256, 3, 3)
    keys.update(bn("classifier.2", 256))
    keys["classifier.4.weight"] = (classes, 256, 1, 1)
    keys["classifier.4.bias"] = (classes,)
    return keys


def lraspp_head_keys(classes: int) -> Shapes:
    return {
        "classifier.cbr.0.weight": (128, 960, 1, 1), **bn("classifier.cbr.1", 128),
        "classifier.scale.1.weight": (128, 960, 1, 1),
        "classifier.low_classifier.weight": (classes, 40, 1, 1), "classifier.low_classifier.bias": (classes,),
        "classifier.high_classifier.weight": (classes, 128, 1, 1), "classifier.high_classifier.bias": (classes,),
    }  # fmt: skip


C = 21
RESNET_AUX = fcn_head_keys("aux_classifier", 1024, C)
CHECKPOINTS = {
    # torchvision builder: (semseg model, options, the checkpoint's keys and shapes, aux head included)
    "fcn_resnet50": ("fcn", {"backbone": "resnet50"},
                     {**resnet50_keys(), **fcn_head_keys("classifier", 2048, C), **RESNET_AUX}),
    "deeplabv3_resnet50": ("deeplabv3", {"backbone": "resnet50"},
                           {**resnet50_keys(), **deeplab_head_keys(2048, C), **RESNET_AUX}),
    "deeplabv3_mobilenet_v3_large": ("deeplabv3", {"backbone": "mobilenet_v3_large"},
                                     {**mobilenet_keys(), **deeplab_head_keys(960, C),
                                      **fcn_head_keys("aux_classifier", 40, C)}),
    "lraspp_mobilenet_v3_large": ("lraspp", {}, {**mobilenet_keys(), **lraspp_head_keys(C)}),
}  # fmt: skip


def random_state_dict(shapes: Shapes, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) == 4:  # conv weights at a scale that keeps activations O(1)
            fan_in = shape[1] * shape[2] * shape[3]
            out[key] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        else:
            out[key] = torch.randn(shape, generator=g) * 0.1
    return out


def our_key(key: str, mobilenet: bool) -> str:
    # The one documented rename: torchvision's IntermediateLayerGetter over `features`.
    if mobilenet and key.startswith("backbone."):
        return "backbone.features." + key.removeprefix("backbone.")
    return key


@pytest.mark.parametrize("checkpoint", list(CHECKPOINTS))
@pytest.mark.parametrize("with_aux", [True, False])
def test_keys_map_one_to_one_and_load(checkpoint, with_aux):
    name, options, shapes = CHECKPOINTS[checkpoint]
    has_aux = any(k.startswith("aux_classifier.") for k in shapes)
    if with_aux and not has_aux:
        pytest.skip("LR-ASPP has no auxiliary head")
    mobilenet = options.get("backbone", "mobilenet_v3_large") == "mobilenet_v3_large"
    expected = {our_key(k, mobilenet): v for k, v in shapes.items()}
    if not with_aux:
        expected = {k: v for k, v in expected.items() if not k.startswith("aux_classifier.")}
    if has_aux:
        options = {**options, "aux": with_aux}
    with torch.device("meta"):
        meta_model = semseg.create_model(name, num_classes=C, **options)
    assert {k: tuple(v.shape) for k, v in meta_model.state_dict().items()} == expected

    model = semseg.create_model(name, num_classes=C, **options)
    state = random_state_dict(shapes)
    load_torchvision_segmentation(model, state)  # the checkpoint always carries its aux head
    ours = model.state_dict()
    for key, value in state.items():
        if with_aux or not key.startswith("aux_classifier."):
            assert torch.equal(ours[our_key(key, mobilenet)], value), key


def test_loads_from_a_file_without_num_batches_tracked(tmp_path):
    shapes = {k: v for k, v in CHECKPOINTS["lraspp_mobilenet_v3_large"][2].items() if "num_batches" not in k}
    path = tmp_path / "lraspp.pth"
    torch.save(random_state_dict(shapes), path)
    load_torchvision_segmentation(semseg.create_model("lraspp", num_classes=C), path)


def test_mismatches_are_listed():
    _, _, shapes = CHECKPOINTS["fcn_resnet50"]
    state = {k: torch.zeros(v) for k, v in shapes.items() if k != "classifier.4.bias"}
    state["classifier.9.weight"] = torch.zeros(1)
    model = semseg.create_model("fcn", num_classes=C, aux=True)
    listed = r"1 missing key\(s\): classifier.4.bias; 1 unexpected key\(s\): classifier.9.weight"
    with pytest.raises(ValueError, match=listed):
        load_torchvision_segmentation(model, state)
    lraspp_21 = random_state_dict(CHECKPOINTS["lraspp_mobilenet_v3_large"][2])
    shapes_listed = r"4 shape mismatch\(s\): classifier.low_classifier.weight: loaded \(21, 40, 1, 1\) vs model"
    with pytest.raises(ValueError, match=shapes_listed):
        load_torchvision_segmentation(semseg.create_model("lraspp", num_classes=3), lraspp_21)
    no_aux = {k: torch.zeros(v) for k, v in shapes.items() if not k.startswith("aux_classifier.")}
    with pytest.raises(ValueError, match=r"missing key\(s\): aux_classifier.0.weight"):
        load_torchvision_segmentation(model, no_aux)


# ---- the same function: heads recomputed from the torchvision tensors -----------------


def _bn(x: torch.Tensor, sd: dict, p: str) -> torch.Tensor:
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=1e-5)  # fmt: skip


def reference_lraspp_head(sd: dict, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    x = F.relu(_bn(F.conv2d(high, sd["classifier.cbr.0.weight"]), sd, "classifier.cbr.1"))
    s = torch.sigmoid(F.conv2d(high.mean(dim=(2, 3), keepdim=True), sd["classifier.scale.1.weight"]))
    x = F.interpolate(x * s, size=low.shape[-2:], mode="bilinear", align_corners=False)
    return (F.conv2d(low, sd["classifier.low_classifier.weight"], sd["classifier.low_classifier.bias"])
            + F.conv2d(x, sd["classifier.high_classifier.weight"], sd["classifier.high_classifier.bias"]))  # fmt: skip


def reference_fcn_head(sd: dict, p: str, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(_bn(F.conv2d(x, sd[f"{p}.0.weight"], padding=1), sd, f"{p}.1"))
    return F.conv2d(x, sd[f"{p}.4.weight"], sd[f"{p}.4.bias"])


def reference_deeplab_head(sd: dict, x: torch.Tensor, rates: tuple[int, int, int]) -> torch.Tensor:
    p = "classifier.0.convs"
    branches = [F.relu(_bn(F.conv2d(x, sd[f"{p}.0.0.weight"]), sd, f"{p}.0.1"))]
    for i, r in enumerate(rates, start=1):
        y = F.conv2d(x, sd[f"{p}.{i}.0.weight"], padding=r, dilation=r)
        branches.append(F.relu(_bn(y, sd, f"{p}.{i}.1")))
    pooled = F.relu(_bn(F.conv2d(x.mean(dim=(2, 3), keepdim=True), sd[f"{p}.4.1.weight"]), sd, f"{p}.4.2"))
    branches.append(F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False))
    y = F.conv2d(torch.cat(branches, 1), sd["classifier.0.project.0.weight"])
    y = F.relu(_bn(y, sd, "classifier.0.project.1"))
    y = F.relu(_bn(F.conv2d(y, sd["classifier.1.weight"], padding=1), sd, "classifier.2"))
    return F.conv2d(y, sd["classifier.4.weight"], sd["classifier.4.bias"])


def _up(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def test_lraspp_computes_torchvisions_function():
    sd = random_state_dict(CHECKPOINTS["lraspp_mobilenet_v3_large"][2], seed=1)
    model = semseg.create_model("lraspp", num_classes=C).eval()
    load_torchvision_segmentation(model, sd)
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        features = model.backbone(x)
        assert features["low"].shape[-2:] == (13, 17) and features["out"].shape[-2:] == (7, 9)  # strides 8 and 16
        expected = _up(reference_lraspp_head(sd, features["low"], features["out"]), x)
        torch.testing.assert_close(model(x), expected)


def test_deeplabv3_mobilenet_computes_torchvisions_function():
    # torchvision keeps rates 12/24/36 on the output-stride-16 MobileNet.
    sd = random_state_dict(CHECKPOINTS["deeplabv3_mobilenet_v3_large"][2], seed=2)
    model = semseg.create_model("deeplabv3", num_classes=C, backbone="mobilenet_v3_large", aux=True).eval()
    load_torchvision_segmentation(model, sd)
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        features = model.backbone(x)
        out = model.forward_train(x)
        torch.testing.assert_close(out["out"], _up(reference_deeplab_head(sd, features["out"], (12, 24, 36)), x))
        torch.testing.assert_close(out["aux"], _up(reference_fcn_head(sd, "aux_classifier", features["low"]), x))


def test_fcn_resnet50_computes_torchvisions_function():
    sd = random_state_dict(CHECKPOINTS["fcn_resnet50"][2], seed=3)
    model = semseg.create_model("fcn", num_classes=C, aux=True).eval()
    load_torchvision_segmentation(model, sd)
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        features = model.backbone(x)
        assert features["layer4"].shape[-2:] == (5, 6)  # output stride 8
        out = model.forward_train(x)
        torch.testing.assert_close(out["out"], _up(reference_fcn_head(sd, "classifier", features["layer4"]), x))
        torch.testing.assert_close(out["aux"], _up(reference_fcn_head(sd, "aux_classifier", features["layer3"]), x))


def test_deeplabv3_resnet50_head_uses_rates_12_24_36():
    model = semseg.create_model("deeplabv3", num_classes=C)
    dilations = [m[0].dilation[0] for m in model.classifier[0].convs[1:4]]
    assert dilations == [12, 24, 36]
