import pytest
import torch
import torch.nn.functional as F

import semseg
from semseg.engine.evaluate import evaluate
from semseg.engine.train import train_one_epoch, training_loss


def batches(dataset, size=4):
    items = [dataset[i] for i in range(len(dataset))]
    return [
        (torch.stack([x for x, _ in items[i : i + size]]), torch.stack([y for _, y in items[i : i + size]]))
        for i in range(0, len(items), size)
    ]


class _SignOfRed(torch.nn.Module):
    """Predicts class 1 where the first channel is positive, else class 0 (class 2 never)."""

    def forward(self, x):
        red = x[:, 0]
        return torch.stack([-red, red, torch.full_like(red, -1e9)], 1)


def test_evaluate_scores_known_predictions_against_numpy_set_counts():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(6, 3, 9, 11, generator=gen)
    masks = torch.randint(0, 3, (6, 9, 11), generator=gen)
    masks[0, :2] = 255  # ignored pixels count nowhere
    data = [(images[i : i + 3], masks[i : i + 3]) for i in (0, 3)]
    metrics = evaluate(_SignOfRed(), data, num_classes=3, class_names=["a", "b", "c"], progress=False)

    pred, true = (images[:, 0] > 0).long().numpy(), masks.numpy()
    kept = true != 255
    expected = {}
    for c, name in enumerate("abc"):
        inter = ((pred == c) & (true == c) & kept).sum()
        union = (((pred == c) | (true == c)) & kept).sum()
        expected[name] = inter / union
    assert metrics["per_class_IoU"] == pytest.approx(expected)
    assert metrics["per_class_IoU"]["c"] == 0.0  # present in the truth, never predicted
    assert metrics["mIoU"] == pytest.approx(sum(expected.values()) / 3)
    assert metrics["pixel_accuracy"] == pytest.approx(((pred == true) & kept).sum() / kept.sum())


def test_train_one_epoch_lowers_the_loss(tiny_shapes):
    model = semseg.create_model("unet", num_classes=5, base_channels=4, depth=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data = batches(tiny_shapes)
    first = train_one_epoch(model, data, optimizer, F.cross_entropy, progress=False)
    for _ in range(4):
        last = train_one_epoch(model, data, optimizer, F.cross_entropy, progress=False)
    assert last["loss"] < 0.8 * first["loss"]
    assert first["images_per_s"] > 0


def test_training_loss_adds_the_weighted_aux_loss():
    out = {"out": torch.randn(2, 3, 4, 4), "aux": torch.randn(2, 3, 4, 4)}
    y = torch.randint(0, 3, (2, 4, 4))
    expected = F.cross_entropy(out["out"], y) + 0.4 * F.cross_entropy(out["aux"], y)
    assert training_loss(out, y, F.cross_entropy, {"aux": 0.4}).item() == pytest.approx(expected.item(), rel=1e-6)
    assert training_loss({"out": out["out"]}, y, F.cross_entropy, {"aux": 0.4}) == F.cross_entropy(out["out"], y)


def test_training_loss_adds_every_weighted_auxiliary_output():
    """BiSeNet V2's four boosters: each weighted output adds its loss; an unweighted one adds nothing."""
    keys = ("out", "aux", "aux_s2", "aux_s3", "aux_s4", "debug")
    out = {key: torch.randn(2, 3, 4, 4) for key in keys}
    y = torch.randint(0, 3, (2, 4, 4))
    weights = {"aux": 1.0, "aux_s2": 1.0, "aux_s3": 0.5, "aux_s4": 1.0}
    expected = F.cross_entropy(out["out"], y) + sum(w * F.cross_entropy(out[k], y) for k, w in weights.items())
    assert training_loss(out, y, F.cross_entropy, weights).item() == pytest.approx(expected.item(), rel=1e-6)
    model = semseg.create_model("bisenetv2", num_classes=3)
    assert model.aux_weights == {"aux": 1.0, "aux_s2": 1.0, "aux_s3": 1.0, "aux_s4": 1.0}
    assert semseg.create_model("bisenetv2", num_classes=3, aux_boosters="s5").aux_weights == {"aux": 1.0}


def test_pspnet_trains_with_its_aux_head():
    model = semseg.create_model("pspnet", num_classes=3, backbone="resnet18")
    assert model.aux_weight == 0.4
    data = [(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)))]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    aux_before = model.aux_classifier[0].weight.clone()
    train_one_epoch(model, data, optimizer, F.cross_entropy, progress=False)
    assert not torch.equal(model.aux_classifier[0].weight, aux_before)


def test_gradient_accumulation_equals_one_big_batch():
    data = [(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))) for _ in range(2)]
    big = [(torch.cat([data[0][0], data[1][0]]), torch.cat([data[0][1], data[1][1]]))]
    results = []
    for batches, accum in [(data, 2), (big, 1)]:
        torch.manual_seed(0)
        model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2, batch_norm=False)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        train_one_epoch(model, batches, optimizer, F.cross_entropy, grad_accum=accum, progress=False)
        results.append(model.state_dict())
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key], rtol=1e-5, atol=1e-6)


def test_bf16_autocast_trains_on_cpu(tiny_shapes):
    model = semseg.create_model("unet", num_classes=5, base_channels=4, depth=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    stats = train_one_epoch(model, batches(tiny_shapes), optimizer, F.cross_entropy, amp="bf16", progress=False)
    assert stats["loss"] > 0 and stats["skipped"] == 0
    with pytest.raises(ValueError, match="amp must be 'none', 'bf16' or 'fp16'"):
        train_one_epoch(model, batches(tiny_shapes), optimizer, F.cross_entropy, amp="fp8", progress=False)


def test_fp16_with_grad_scaler_tracks_fp32_training(tiny_shapes):
    results = {}
    for amp in ("none", "fp16"):
        torch.manual_seed(0)
        model = semseg.create_model("unet", num_classes=5, base_channels=4, depth=2, batch_norm=False)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        scaler = torch.amp.GradScaler("cpu") if amp == "fp16" else None
        stats = train_one_epoch(model, batches(tiny_shapes), optimizer, F.cross_entropy, amp=amp, scaler=scaler,
                                clip_grad_norm=1.0, progress=False)  # fmt: skip
        results[amp] = (stats, model.state_dict())
    assert results["fp16"][0]["skipped"] == 0
    assert results["fp16"][0]["loss"] == pytest.approx(results["none"][0]["loss"], rel=1e-2)
    for key, value in results["none"][1].items():
        torch.testing.assert_close(results["fp16"][1][key], value, rtol=0, atol=2e-3)


def test_grad_scaler_skips_overflowing_steps_and_backs_off():
    # A scale of 2**40 makes the fp16-autocast gradients overflow to inf: the scaler must
    # skip those optimizer steps (weights untouched) and halve its scale each time.
    torch.manual_seed(0)
    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2, batch_norm=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)
    data = [(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)))]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_one_epoch(model, data, optimizer, F.cross_entropy, amp="fp16", scaler=scaler, progress=False)
    assert scaler.get_scale() == 2.0**39
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    train_one_epoch(model, data, optimizer, F.cross_entropy, amp="fp16", scaler=scaler, progress=False)
    assert scaler.get_scale() == 2.0**8
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_non_finite_loss_stops_with_a_clear_message(tiny_shapes):
    model = semseg.create_model("unet", num_classes=5, base_channels=4, depth=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def nan_loss(logits, target):
        return F.cross_entropy(logits, target) * float("nan")

    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FloatingPointError, match="not finite for 2 batches in a row .* lower the learning rate"):
        train_one_epoch(model, batches(tiny_shapes), optimizer, nan_loss, max_nonfinite=2, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k)


def test_a_few_non_finite_batches_are_skipped_and_counted(tiny_shapes):
    model = semseg.create_model("unet", num_classes=5, base_channels=4, depth=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []

    def sometimes_nan(logits, target):
        calls.append(1)
        loss = F.cross_entropy(logits, target)
        return loss * float("nan") if len(calls) == 1 else loss

    stats = train_one_epoch(model, batches(tiny_shapes), optimizer, sometimes_nan, progress=False)
    assert stats["skipped"] == 1 and stats["loss"] > 0


def test_one_scorer_for_batches_and_single_images():
    from semseg.engine.evaluate import score_predictions

    gen = torch.Generator().manual_seed(1)
    pred, truth = torch.randint(0, 3, (4, 5, 6), generator=gen), torch.randint(0, 3, (4, 5, 6), generator=gen)
    truth[1] = 255  # an image with nothing labelled scores NaN, and counts nowhere
    batched, batch_scores = score_predictions([(pred[:2], truth[:2]), (pred[2:], truth[2:])], num_classes=3)
    single, single_scores = score_predictions(zip(pred, truth), num_classes=3)
    assert torch.equal(batched, single) and batched.sum() == 3 * 5 * 6
    assert batch_scores == pytest.approx(single_scores, nan_ok=True) and len(single_scores) == 4
    p, t = pred[0].numpy(), truth[0].numpy()
    ious = [((p == c) & (t == c)).sum() / ((p == c) | (t == c)).sum() for c in range(3)]
    assert single_scores[0] == pytest.approx(sum(ious) / 3)
    assert single_scores[1] != single_scores[1]  # NaN
