import pytest
import torch

import semseg
from semseg.profile import count_params


@pytest.mark.parametrize("size", [(32, 32), (97, 131), (33, 64)])
def test_logits_at_input_size_for_odd_sizes(size):
    model = semseg.create_model("unet", num_classes=3, base_channels=4).eval()
    assert model(torch.randn(2, 3, *size)).shape == (2, 3, *size)


def test_original_unet_parameter_count():
    # Ronneberger et al.: 64 -> 1024 channels; ~31.0M parameters with 'same' convs.
    model = semseg.create_model("unet", num_classes=2, batch_norm=False)
    assert count_params(model) == pytest.approx(31.0e6, rel=0.02)


def test_every_parameter_gets_a_finite_gradient():
    model = semseg.create_model("unet", num_classes=3, base_channels=4)
    model(torch.randn(2, 3, 40, 40)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bad_options():
    with pytest.raises(ValueError, match="backbone must be one of 'none', 'resnet18', 'resnet34', 'resnet50', got 'resnet999'"):
        semseg.create_model("unet", num_classes=2, backbone="resnet999")
    with pytest.raises(ValueError, match="depth >= 1"):
        semseg.create_model("unet", num_classes=2, depth=0)
