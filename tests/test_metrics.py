import math

import pytest
import torch

from semseg.metrics import ConfusionMatrix


def test_metrics_by_hand():
    # truth: 0 0 1 1 / 2 255 ; pred: 0 1 1 1 / 0 2
    cm = ConfusionMatrix(3, ignore_index=255)
    cm.update(torch.tensor([0, 1, 1, 1, 0, 2]), torch.tensor([0, 0, 1, 1, 2, 255]))
    assert cm.mat.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    m = cm.compute(["a", "b", "c"])
    assert m["per_class_IoU"] == pytest.approx({"a": 1 / 3, "b": 2 / 3, "c": 0.0})
    assert m["mIoU"] == pytest.approx(1 / 3)
    assert m["pixel_accuracy"] == pytest.approx(3 / 5)
    assert m["mean_accuracy"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["fw_IoU"] == pytest.approx(2 / 5 * 1 / 3 + 2 / 5 * 2 / 3)
    assert m["per_class_dice"]["b"] == pytest.approx(2 * 2 / (2 + 3))


def test_absent_class_is_nan_and_left_out_of_the_mean():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    m = cm.compute()
    assert math.isnan(m["per_class_IoU"]["2"])
    assert m["mIoU"] == 1.0


def test_streaming_equals_one_shot():
    pred, target = torch.randint(0, 4, (2, 10, 10)), torch.randint(0, 4, (2, 10, 10))
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(pred, target)
    b.update(pred[:1], target[:1])
    b.update(pred[1:], target[1:])
    assert torch.equal(a.mat, b.mat)


def test_out_of_range_labels_are_named():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"label values \[7\] outside 0..2"):
        cm.update(torch.tensor([0, 1]), torch.tensor([0, 7]))


def test_shape_mismatch():
    with pytest.raises(ValueError, match="prediction shape"):
        ConfusionMatrix(3).update(torch.zeros(2, 2), torch.zeros(2, 3))
