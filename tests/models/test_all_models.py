"""Checks every registered model gets, driven by ``semseg.list_models()``.

Each model is built once per module in its tiny configuration (``conftest.TINY_OPTIONS``,
else its defaults): pytest groups the tests of one parametrised module-scoped fixture
together, so only one model is alive at a time.
"""

from __future__ import annotations

import inspect
import re
import typing

import pytest
import torch
import torch.nn.functional as F

import semseg
from semseg.models import SegmentationModel
from semseg.profile import model_cost
from semseg.registry import get_builder

NUM_CLASSES = 3
ODD_SIZES = [(33, 47), (97, 131)]
MODELS = semseg.list_models()
# Biases whose gradient is exactly zero by design: DDRNet's last bottleneck feeds only
# DAPPM, whose every branch starts with BatchNorm, and a per-channel constant added right
# before a training-mode BatchNorm is subtracted out again (the authors' layout).
# BiSeNet V2's Context Embedding block (the reference layout) normalises the pooled map
# with a BN whose bias then goes through a bias-free 1x1 conv into another BN: likewise
# a per-channel constant, removed again.
ZERO_GRAD_BY_DESIGN = {
    **{name: {"layer5.0.bn3.bias", "layer5.0.downsample.1.bias"} for name in ("ddrnet_23", "ddrnet_23_slim")},
    "bisenetv2": {"semantic.ce.bn.bias"},
}


def valid_backbones(name: str) -> tuple[str, ...]:
    """The values of a builder's ``backbone: Literal[...]`` option, in declared order; () if it has none."""
    hint = typing.get_type_hints(get_builder(name)).get("backbone")
    return typing.get_args(hint) if hint is not None else ()


@pytest.fixture(scope="module", params=MODELS)
def built(request, tiny):
    name = request.param
    torch.manual_seed(0)
    options = tiny(name)
    return name, options, semseg.create_model(name, num_classes=NUM_CLASSES, **options)


def test_is_a_segmentation_model_with_a_rebuildable_config(built):
    name, options, model = built
    assert isinstance(model, SegmentationModel)
    assert model.model_config["name"] == name and model.model_config["num_classes"] == NUM_CLASSES
    with torch.device("meta"):
        clone = semseg.create_model(**model.model_config)
    assert [(k, v.shape) for k, v in clone.state_dict().items()] == [
        (k, v.shape) for k, v in model.state_dict().items()
    ]


@pytest.mark.parametrize("size", ODD_SIZES)
def test_logits_at_input_size(built, size):
    _, _, model = built
    model.eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, *size))
    assert y.shape == (1, NUM_CLASSES, *size)
    assert torch.isfinite(y).all()


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_backward_reaches_every_parameter(built):
    # Batch 2 so BatchNorm after the 1x1 pooled maps (PSP, ASPP) sees two values per channel.
    name, _, model = built
    model.train()
    model.zero_grad(set_to_none=True)
    x = torch.randn(2, 3, 33, 47)
    target = torch.randint(0, NUM_CLASSES, (2, 33, 47))
    # oneDNN's CPU weight gradient for FCN's fc6 (7x7 conv, 512 -> 4096, on a 1x1 map)
    # takes ~12 s single-threaded; PyTorch's own kernels take under a second.
    with torch.backends.mkldnn.flags(enabled=False):
        out = model.forward_train(x)
        loss = F.cross_entropy(out["out"], target)
        for key, weight in model.aux_weights.items():
            loss = loss + weight * F.cross_entropy(out[key], target)
        loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    not_finite = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    zero = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() == 0
            and n not in ZERO_GRAD_BY_DESIGN.get(name, ())]  # fmt: skip
    model.zero_grad(set_to_none=True)
    assert not no_grad, f"{name}: no gradient for {no_grad}"
    assert not not_finite, f"{name}: non-finite gradient for {not_finite}"
    assert not zero, f"{name}: all-zero gradient for {zero}"


def test_forward_train_aux_contract(built):
    name, _, model = built
    model.train()
    with torch.no_grad():
        out = model.forward_train(torch.randn(2, 3, 33, 47))
    assert set(out) == {"out", *model.aux_weights}  # every auxiliary output is weighted, and only those
    assert set(out) == {"out"} or "aux" in out
    for value in out.values():
        assert value.shape == (2, NUM_CLASSES, 33, 47)
    assert all(weight > 0 for weight in model.aux_weights.values())
    assert (model.aux_weight > 0) == ("aux" in out)
    if name == "pspnet":
        assert model.aux_weight == pytest.approx(0.4)


def test_eval_is_deterministic_and_forward_is_forward_train_out(built):
    _, _, model = built
    model.eval()
    x = torch.randn(1, 3, 33, 47)
    with torch.no_grad():
        a, b = model(x), model(x)
    assert torch.equal(a, b)
    # Models that write their own forward (to skip the aux head) must agree with forward_train;
    # for the others forward *is* forward_train()["out"] and there is nothing to compare.
    if type(model).forward is not SegmentationModel.forward:
        with torch.no_grad():
            torch.testing.assert_close(a, model.forward_train(x)["out"])


def test_train_mode_changes_nothing_about_shapes(built):
    _, _, model = built
    model.train()
    with torch.no_grad():
        y = model(torch.randn(2, 3, 32, 32))
    assert model.training and y.shape == (2, NUM_CLASSES, 32, 32)
    model.eval()
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("name", MODELS)
def test_every_backbone_gives_input_sized_logits_on_meta(name):
    # The meta device runs the shape logic of even ResNet-101 / VGG16 models for free.
    for backbone in valid_backbones(name) or (None,):
        options = {} if backbone is None else {"backbone": backbone}
        with torch.device("meta"):
            model = semseg.create_model(name, num_classes=NUM_CLASSES, **options).eval()
        for size in [(32, 32), *ODD_SIZES]:
            y = model(torch.empty(2, 3, *size, device="meta"))
            assert y.shape == (2, NUM_CLASSES, *size), (name, backbone, size)


@pytest.mark.parametrize("name", MODELS)
def test_model_cost_runs_on_meta(name):
    cost = model_cost(name, num_classes=21, size=(64, 64))
    assert cost["params"] > 0 and cost["gflops"] > 0


@pytest.mark.parametrize("name", [n for n in MODELS if valid_backbones(n)])
def test_unknown_backbone_lists_the_valid_ones(name):
    # The registry checks options against the builder's Literal before the builder runs.
    valid = ", ".join(repr(b) for b in valid_backbones(name))
    with pytest.raises(ValueError, match=re.escape(f"backbone must be one of {valid}, got 'resnet999'")):
        semseg.create_model(name, num_classes=2, backbone="resnet999")


@pytest.mark.parametrize("name", MODELS)
def test_builder_is_keyword_only_and_typed(name):
    params = inspect.signature(get_builder(name)).parameters.values()
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params)
    assert all(p.annotation is not inspect.Parameter.empty for p in params)
