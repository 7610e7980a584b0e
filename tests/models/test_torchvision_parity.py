"""Real torchvision: its segmentation models' state dicts load into semseg's and give the same outputs.

torchvision builds each model with random weights (no download) and BatchNorm affine
parameters and running statistics perturbed away from the identity, backbones included;
semseg loads the whole state dict (``load_torchvision_segmentation``, strict) and must
return torchvision's ``out`` and ``aux`` logits. Small odd inputs keep the ResNet-101s fast.
"""

from __future__ import annotations

import torchvision_shim  # noqa: F401  (defines the op schemas torchvision's import needs here)

import pytest
import torch

import semseg
from semseg.models.torchvision_compat import load_torchvision_segmentation

segmentation = pytest.importorskip("torchvision.models.segmentation")

NUM_CLASSES = 21
# torchvision builder -> (semseg model, options)
MODELS = {
    "fcn_resnet50": ("fcn", {"backbone": "resnet50", "aux": True}),
    "fcn_resnet101": ("fcn", {"backbone": "resnet101", "aux": True}),
    "deeplabv3_resnet50": ("deeplabv3", {"backbone": "resnet50", "aux": True}),
    "deeplabv3_resnet101": ("deeplabv3", {"backbone": "resnet101", "aux": True}),
    "deeplabv3_mobilenet_v3_large": ("deeplabv3", {"backbone": "mobilenet_v3_large", "aux": True}),
    "lraspp_mobilenet_v3_large": ("lraspp", {}),
}


def torchvision_model(builder: str, seed: int) -> torch.nn.Module:
    """torchvision's ``builder`` (aux head on where it has one), random weights, BatchNorms perturbed, in eval mode."""
    options = {} if builder.startswith("lraspp") else {"aux_loss": True}
    torch.manual_seed(seed)
    model = getattr(segmentation, builder)(weights=None, weights_backbone=None, num_classes=NUM_CLASSES, **options)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.mark.parametrize("builder", list(MODELS))
def test_outputs_equal_torchvisions_after_loading_its_state_dict(builder):
    reference = torchvision_model(builder, seed=sorted(MODELS).index(builder))
    name, options = MODELS[builder]
    model = semseg.create_model(name, num_classes=NUM_CLASSES, **options).eval()
    load_torchvision_segmentation(model, reference.state_dict())
    x = torch.randn(2, 3, 65, 97, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(x)
        ours = model.forward_train(x)
    assert set(ours) == set(expected)
    for key, value in expected.items():
        scale = value.abs().mean().item()
        assert scale > 1e-2, f"{builder} {key}: outputs too small to compare"
        torch.testing.assert_close(ours[key], value, rtol=1e-5, atol=1e-5 * scale, msg=f"{builder} {key}")
