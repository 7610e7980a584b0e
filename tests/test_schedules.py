import math

import pytest
import torch

from semseg.engine.schedules import cosine_schedule, poly_schedule


def lrs(make, steps, **kwargs):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    scheduler = make(optimizer, **kwargs)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_poly_decay_by_hand():
    got = lrs(poly_schedule, 5, total_steps=4, power=0.9)
    expected = [0.01 * (1 - s / 4) ** 0.9 for s in range(4)] + [0.0]
    assert got == pytest.approx(expected)


def test_poly_with_warmup():
    got = lrs(poly_schedule, 4, total_steps=10, power=1.0, warmup_steps=2, warmup_ratio=0.1)
    assert got == pytest.approx([0.01 * 0.1, 0.01 * 0.9 * 0.55, 0.01 * 0.8, 0.01 * 0.7])


def test_cosine_by_hand():
    got = lrs(cosine_schedule, 5, total_steps=4, min_ratio=0.1)
    expected = [0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / 4))) for s in range(5)]
    assert got == pytest.approx(expected)
    assert got[-1] == pytest.approx(0.001)


def test_bad_lengths():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    with pytest.raises(ValueError, match="warmup_steps < total_steps"):
        poly_schedule(optimizer, total_steps=5, warmup_steps=5)
