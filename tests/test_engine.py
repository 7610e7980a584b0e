import pytest
import torch
import torch.nn.functional as F

import semseg
from semseg.engine.evaluate import evaluate
from semseg.engine.train import train_one_epoch, training_loss
from semseg.metrics import ConfusionMatrix


def batches(dataset, size=4):
    items = [dataset[i] for i in range(len(dataset))]
    return [
        (torch.stack([x for x, _ in items[i : i + size]]), torch.stack([y for _, y in items[i : i + size]]))
        for i in range(0, len(items), size)
    ]


def test_evaluate_equals_a_hand_built_confusion_matrix(tiny_shapes):
    model = semseg.create_model("unet", num_classes=5, base_channels=4, depth=2).eval()
    data = batches(tiny_shapes)
    metrics = evaluate(model, data, num_classes=5, progress=False)
    cm = ConfusionMatrix(5)
    with torch.no_grad():
        for x, y in data:
            cm.update(model(x).argmax(1), y)
    assert metrics == cm.compute()


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
    model = semseg.create_model("pspnet", num_classes=3, backbone="resnet18").train()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    torch.manual_seed(1)
    loss = training_loss(model, x, y, F.cross_entropy)
    torch.manual_seed(1)  # same dropout masks
    out = model.forward_train(x)
    expected = F.cross_entropy(out["out"], y) + 0.4 * F.cross_entropy(out["aux"], y)
    assert model.aux_weight == 0.4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_non_finite_loss_stops_with_a_clear_message(tiny_shapes):
    model = semseg.create_model("unet", num_classes=5, base_channels=4, depth=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def nan_loss(logits, target):
        return F.cross_entropy(logits, target) * float("nan")

    with pytest.raises(FloatingPointError, match="lower the learning rate"):
        train_one_epoch(model, batches(tiny_shapes), optimizer, nan_loss, progress=False)
