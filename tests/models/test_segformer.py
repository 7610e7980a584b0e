"""SegFormer: its encoder's shape, and Hugging Face transformers checkpoints computing the same function in semseg.

transformers builds the reference models from a ``SegformerConfig`` with random weights
(every parameter and BatchNorm statistic perturbed, so no LayerNorm or BatchNorm sits at
the identity); nothing is downloaded.
"""

from __future__ import annotations

import torchvision_shim  # noqa: F401  (before transformers, which imports torchvision when installed)

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import semseg
from semseg.models.segformer import MIT_CONFIGS, REDUCTION_RATIOS
from semseg.models.transformers_compat import load_transformers_segformer

transformers = pytest.importorskip("transformers")

NUM_CLASSES = 5
ODD_SIZES = [(33, 47), (65, 97)]
TOLERANCE = 1e-4


def hf_config(variant: str = "mit_b0") -> transformers.SegformerConfig:
    hidden, depths, decoder = MIT_CONFIGS[variant]
    return transformers.SegformerConfig(hidden_sizes=list(hidden), depths=list(depths),
                                        decoder_hidden_size=decoder, num_labels=NUM_CLASSES)  # fmt: skip


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` in eval mode with noise on every parameter and random BatchNorm running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def hf_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return perturbed(transformers.SegformerForSemanticSegmentation(hf_config()))


def hf_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """transformers' stride-4 logits up-sampled to the input, as semseg's model returns them."""
    with torch.no_grad():
        logits = model(pixel_values=x).logits
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def test_stages_have_the_declared_channels_strides_and_reductions():
    model = semseg.create_model("segformer", num_classes=NUM_CLASSES, backbone="mit_b2").eval()
    with torch.no_grad():
        features = model.encoder(torch.randn(1, 3, 65, 97))
    for (name, info), feature in zip(model.encoder.feature_info.items(), features.values()):
        assert feature.shape[1] == info.channels
        assert feature.shape[-2:] == (-(-65 // info.stride), -(-97 // info.stride)), name  # ceil: padded convs
    for stage, ratio, depth in zip(model.encoder.stages, REDUCTION_RATIOS, MIT_CONFIGS["mit_b2"].depths):
        assert len(stage.blocks) == depth
        reduction = stage.blocks[0].attention.sequence_reduction
        assert (reduction is None) if ratio == 1 else reduction.sequence_reduction.stride == (ratio, ratio)
    drops = [block.drop_path.p for stage in model.encoder.stages for block in stage.blocks]
    assert drops[0] == 0 and drops[-1] == pytest.approx(0.1) and drops == sorted(drops)


@pytest.mark.parametrize("size", ODD_SIZES)
def test_logits_equal_transformers_after_loading_its_state_dict(hf_model, size):
    model = semseg.create_model("segformer", num_classes=NUM_CLASSES).eval()
    load_transformers_segformer(model, hf_model.state_dict())
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)
    expected = hf_logits(hf_model, x)
    assert expected.abs().mean() > 0.1  # the weights are far from trivial
    torch.testing.assert_close(ours, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_save_pretrained_folder_round_trip(hf_model, tmp_path, fmt):
    hf_model.save_pretrained(tmp_path / "hf")
    if fmt == "bin":  # transformers 4's save_pretrained(safe_serialization=False): the same keys, pickled
        (tmp_path / "bin").mkdir()
        torch.save(load_file(tmp_path / "hf" / "model.safetensors"), tmp_path / "bin" / "pytorch_model.bin")
    folder = tmp_path / ("hf" if fmt == "safetensors" else "bin")
    # save_pretrained writes the Hub's naming, so this goes through the rename table.
    saved = load_file(tmp_path / "hf" / "model.safetensors")
    assert "segformer.encoder.block.0.0.attention.self.query.weight" in saved
    assert "decode_head.linear_c.3.proj.weight" in saved

    model = semseg.create_model("segformer", num_classes=NUM_CLASSES, weights=str(folder)).eval()
    x = torch.randn(1, 3, *ODD_SIZES[0], generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf_logits(hf_model, x), rtol=0, atol=TOLERANCE)
    weights_file = folder / ("model.safetensors" if fmt == "safetensors" else "pytorch_model.bin")
    from_file = semseg.create_model("segformer", num_classes=NUM_CLASSES, weights=str(weights_file))
    for key, value in model.state_dict().items():
        assert torch.equal(from_file.state_dict()[key], value), key


@pytest.mark.parametrize("kind", ["SegformerModel", "SegformerForImageClassification"])
def test_encoder_checkpoints_load_the_encoder_and_keep_the_decoder(tmp_path, kind):
    # SegformerForImageClassification is what nvidia/mit-b* hold: its ImageNet classifier is dropped.
    torch.manual_seed(0)
    hf = perturbed(getattr(transformers, kind)(hf_config()))
    hf.save_pretrained(tmp_path)
    torch.manual_seed(3)
    fresh = semseg.create_model("segformer", num_classes=NUM_CLASSES)
    torch.manual_seed(3)
    model = semseg.create_model("segformer", num_classes=NUM_CLASSES, weights=str(tmp_path)).eval()
    for key, value in fresh.decode_head.state_dict().items():
        assert torch.equal(model.decode_head.state_dict()[key], value), key
    x = torch.randn(1, 3, *ODD_SIZES[1], generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        encoder = hf if kind == "SegformerModel" else hf.segformer
        expected = encoder(pixel_values=x).last_hidden_state
        torch.testing.assert_close(model.encoder(x)["stage4"], expected, rtol=0, atol=TOLERANCE)


def test_mismatches_are_listed(hf_model):
    state = dict(hf_model.state_dict())
    del state["decode_head.classifier.bias"]
    state["decode_head.extra.weight"] = torch.zeros(1)
    model = semseg.create_model("segformer", num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match=r"1 missing key\(s\): decode_head\.classifier\.bias; "
                                         r"1 unexpected key\(s\): decode_head\.extra\.weight$"):  # fmt: skip
        load_transformers_segformer(model, state)
    with pytest.raises(ValueError, match=r"^the checkpoint holds mit_b0, 5 classes but the model is mit_b0, 3 "
                                         r"classes; .*decode_head\.classifier\.weight: loaded \(5, 256, 1, 1\)"):
        load_transformers_segformer(semseg.create_model("segformer", num_classes=3), hf_model.state_dict())
    with pytest.raises(ValueError, match=r"^the checkpoint holds mit_b0, 5 classes but the model is mit_b1, 5 "
                                         r"classes; .*shape mismatch"):  # fmt: skip
        load_transformers_segformer(semseg.create_model("segformer", num_classes=5, backbone="mit_b1"),
                                    hf_model.state_dict())  # fmt: skip


def test_drop_path_rate_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\), got 1\.0"):
        semseg.create_model("segformer", num_classes=NUM_CLASSES, drop_path_rate=1.0)


def test_unreadable_sources_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither model.safetensors nor pytorch_model.bin"):
        semseg.create_model("segformer", num_classes=NUM_CLASSES, weights=str(tmp_path))
    torch.save([torch.zeros(1)], tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="does not hold a state dict"):
        semseg.create_model("segformer", num_classes=NUM_CLASSES, weights=str(tmp_path))
