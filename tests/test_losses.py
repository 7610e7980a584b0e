"""Each loss against values computed by hand (numpy, written out from the definitions)."""

import numpy as np
import pytest
import torch

from semseg.losses import (
    CrossEntropyLoss,
    DiceLoss,
    DistillationLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    OhemCrossEntropyLoss,
    WeightedSum,
)

# One image, 3 classes, 1x4 pixels; the last pixel is ignored.
LOGITS = torch.tensor([[[[2.0, 0.0, 1.0, 5.0]], [[0.0, 1.0, 1.0, -5.0]], [[-1.0, 0.5, 3.0, 0.0]]]])
TARGET = torch.tensor([[[0, 2, 1, 255]]])
WEIGHT = [1.0, 2.0, 0.5]
P = np.exp(LOGITS[0, :, 0].numpy()) / np.exp(LOGITS[0, :, 0].numpy()).sum(0)  # (C, 4) softmax
PT = np.array([P[0, 0], P[2, 1], P[1, 2]])  # probability of the true class, valid pixels
W = np.array([WEIGHT[0], WEIGHT[2], WEIGHT[1]])  # weight of each valid pixel's class
ALL_LOSSES = [CrossEntropyLoss, OhemCrossEntropyLoss, FocalLoss, DiceLoss, LovaszSoftmaxLoss]


def test_cross_entropy_ignores_and_weights():
    assert CrossEntropyLoss()(LOGITS, TARGET).item() == pytest.approx(-np.log(PT).mean(), rel=1e-6)
    expected = (W * -np.log(PT)).sum() / W.sum()
    assert CrossEntropyLoss(weight=WEIGHT)(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing():
    eps = 0.1
    logp = np.log(P[:, :3])
    smoothed = -((1 - eps) * np.log(PT) + eps / 3 * logp.sum(0))
    assert CrossEntropyLoss(label_smoothing=eps)(LOGITS, TARGET).item() == pytest.approx(smoothed.mean(), rel=1e-6)


def test_focal():
    fl = -((1 - PT) ** 2) * np.log(PT)
    assert FocalLoss()(LOGITS, TARGET).item() == pytest.approx(fl.mean(), rel=1e-6)
    assert FocalLoss(weight=WEIGHT)(LOGITS, TARGET).item() == pytest.approx((W * fl).sum() / W.sum(), rel=1e-6)
    assert FocalLoss(gamma=0)(LOGITS, TARGET).item() == pytest.approx(CrossEntropyLoss()(LOGITS, TARGET).item())


def test_ohem_keeps_only_hard_pixels():
    nll = -np.log(PT)
    hard = PT < 0.7
    assert 0 < hard.sum() < 3  # the fixture has both easy and hard pixels
    loss = OhemCrossEntropyLoss(min_kept=0, weight=WEIGHT)(LOGITS, TARGET).item()
    assert loss == pytest.approx((W * nll)[hard].sum() / W[hard].sum(), rel=1e-6)
    # min_kept above the hard count keeps the hardest pixels by loss: here all three.
    loss = OhemCrossEntropyLoss(min_kept=3)(LOGITS, TARGET).item()
    assert loss == pytest.approx(nll.mean(), rel=1e-6)


def test_dice():
    g = np.zeros((3, 3))
    g[[0, 2, 1], [0, 1, 2]] = 1
    p = P[:, :3]
    dice = (2 * (p * g).sum(1) + 1) / (p.sum(1) + g.sum(1) + 1)
    assert DiceLoss()(LOGITS, TARGET).item() == pytest.approx((1 - dice).mean(), rel=1e-6)
    w = np.array(WEIGHT)
    assert DiceLoss(weight=WEIGHT)(LOGITS, TARGET).item() == pytest.approx((w * (1 - dice)).sum() / w.sum(), rel=1e-6)


def lovasz_by_hand(p: np.ndarray, g: np.ndarray) -> float:
    """Lovász hinge of one class from its definition: sort errors, Jaccard at each prefix, take differences."""
    errors = np.abs(g - p)
    order = np.argsort(-errors, kind="stable")
    e, gs = errors[order], g[order]
    jaccards = []
    for k in range(1, len(e) + 1):
        predicted = np.zeros_like(gs)
        predicted[:k] = 1  # the k largest errors flipped
        inter = (gs * (1 - predicted)).sum()
        union = gs.sum() + ((1 - gs) * predicted).sum()
        jaccards.append(1 - inter / union)
    grads = np.diff(np.concatenate([[0.0], jaccards]))
    return float((e * grads).sum())


def test_lovasz_softmax():
    labels = np.array([0, 2, 1])
    per_class = [lovasz_by_hand(P[c, :3], (labels == c).astype(float)) for c in range(3)]
    assert LovaszSoftmaxLoss()(LOGITS, TARGET).item() == pytest.approx(np.mean(per_class), rel=1e-5)
    w = np.array(WEIGHT)
    expected = (w * per_class).sum() / w.sum()
    assert LovaszSoftmaxLoss(weight=WEIGHT)(LOGITS, TARGET).item() == pytest.approx(expected, rel=1e-5)


def test_lovasz_is_zero_for_a_perfect_confident_prediction():
    target = torch.tensor([[[0, 1], [2, 1]]])
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 100
    assert LovaszSoftmaxLoss()(logits, target).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("cls", ALL_LOSSES)
def test_ignored_pixels_get_no_gradient_and_change_nothing(cls):
    logits = LOGITS.clone().requires_grad_(True)
    loss = cls()(logits, TARGET)
    loss.backward()
    assert torch.all(logits.grad[..., 3] == 0)
    changed = LOGITS.clone()
    changed[..., 3] = torch.tensor([-9.0, 9.0, 4.0])[:, None]
    assert cls()(changed, TARGET).item() == pytest.approx(loss.item(), rel=1e-6)


@pytest.mark.parametrize("cls", ALL_LOSSES)
def test_all_ignored_gives_zero_not_nan(cls):
    target = torch.full_like(TARGET, 255)
    assert cls()(LOGITS, target).item() == 0.0


def test_weighted_sum():
    ce, dice = CrossEntropyLoss(), DiceLoss()
    total = WeightedSum([(ce, 1.0), (dice, 0.5)])(LOGITS, TARGET)
    assert total.item() == pytest.approx(ce(LOGITS, TARGET).item() + 0.5 * dice(LOGITS, TARGET).item())


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match=r"expected logits \(N, C, H, W\) and target \(N, H, W\)"):
        CrossEntropyLoss()(LOGITS, TARGET[0])
    with pytest.raises(ValueError, match="2 class weights for 3 classes"):
        DiceLoss(weight=[1.0, 2.0])(LOGITS, TARGET)
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=1.0)


def test_distillation_is_the_temperature_softened_kl_times_its_square_over_labelled_pixels():
    teacher = torch.tensor([[[[0.0, 3.0, -1.0, 7.0]], [[1.0, 0.0, 2.0, 0.0]], [[2.0, -2.0, 0.5, 1.0]]]])
    t = 2.0

    def softmax(x):
        e = np.exp(x - x.max(0))
        return e / e.sum(0)

    ps, pt = softmax(LOGITS[0, :, 0].numpy() / t), softmax(teacher[0, :, 0].numpy() / t)
    kl = (pt * (np.log(pt) - np.log(ps))).sum(0)[:3]  # the 4th pixel is ignored
    loss = DistillationLoss(temperature=t)
    assert loss(LOGITS, teacher, TARGET).item() == pytest.approx(kl.mean() * t * t, rel=1e-5)
    assert loss(teacher, teacher, TARGET).item() == pytest.approx(0.0, abs=1e-7)
    assert loss(LOGITS, teacher, torch.full_like(TARGET, 255)).item() == 0.0
    student = LOGITS.clone().requires_grad_(True)
    low = loss(student.bfloat16(), teacher.bfloat16(), TARGET)  # bf16 logits, as under autocast: computed in float32
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(loss(LOGITS.bfloat16().float(), teacher.bfloat16().float(), TARGET).item(), rel=1e-6)
    low.backward()
    assert torch.all(student.grad[..., 3] == 0) and student.grad[..., :3].abs().sum() > 0
    with pytest.raises(ValueError, match="student and teacher logits"):
        loss(LOGITS, teacher[:, :2], TARGET)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        DistillationLoss(temperature=0)
