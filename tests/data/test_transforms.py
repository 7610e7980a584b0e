"""Joint transforms: exact pixel movement, mask value sets, padding, seeding and DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from semseg.data import (
    ColorJitter,
    Compose,
    Normalize,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    Resize,
    eval_transforms,
    seed_worker,
    train_transforms,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)


def _pair(h: int = 6, w: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = rng.choice(np.array([0, 3, 7, 255]), (h, w)).astype(np.int64)
    return image, mask


def test_flip_moves_known_pixels():
    image, mask = _pair()
    out_image, out_mask = RandomHorizontalFlip(p=1.0)(image, mask, np.random.default_rng(0))
    assert out_mask[2, 0] == mask[2, 7] and out_mask[5, 7] == mask[5, 0]
    np.testing.assert_array_equal(out_image[1, 2], image[1, 5])
    same_image, same_mask = RandomHorizontalFlip(p=0.0)(image, mask, np.random.default_rng(0))
    assert same_image is image and same_mask is mask


def test_crop_pads_mask_with_ignore_and_image_with_fill():
    image, mask = _pair(2, 3)
    out_image, out_mask = RandomCrop((4, 5), ignore_index=255, fill=(1, 2, 3))(image, mask, np.random.default_rng(0))
    assert out_image.shape == (4, 5, 3) and out_mask.shape == (4, 5)
    np.testing.assert_array_equal(out_mask[:2, :3], mask)
    np.testing.assert_array_equal(out_image[:2, :3], image)
    assert (out_mask[2:] == 255).all() and (out_mask[:, 3:] == 255).all()
    assert (out_image[3, 4] == [1, 2, 3]).all() and (out_image[:2, 4] == [1, 2, 3]).all()


def test_crop_takes_an_aligned_window():
    image, mask = _pair(10, 12)
    out_image, out_mask = RandomCrop(4)(image, mask, np.random.default_rng(3))
    hits = [(y, x) for y in range(7) for x in range(9) if np.array_equal(image[y : y + 4, x : x + 4], out_image)]
    assert len(hits) == 1
    y, x = hits[0]
    np.testing.assert_array_equal(out_mask, mask[y : y + 4, x : x + 4])


def test_resize_mask_nearest_replicates_pixels_and_image_bilinear_keeps_constants():
    mask = np.array([[0, 3], [7, 255]], dtype=np.int64)
    image = np.full((2, 2, 3), 77, dtype=np.uint8)
    out_image, out_mask = Resize((4, 6))(image, mask)
    np.testing.assert_array_equal(out_mask, np.repeat(np.repeat(mask, 2, axis=0), 3, axis=1))
    assert out_image.shape == (4, 6, 3) and (out_image == 77).all()


def test_resize_int_sets_shorter_side():
    image, mask = _pair(6, 8)
    out_image, out_mask = Resize(3)(image, mask)
    assert out_image.shape == (3, 4, 3) and out_mask.shape == (3, 4)


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (13, 3), (31, 29)])
def test_resize_keeps_the_value_set(size):
    image, mask = _pair(11, 9)
    _, out = Resize(size)(image, mask)
    assert set(np.unique(out)) <= set(np.unique(mask))


def test_scale_then_crop_gives_crop_size_and_no_new_values():
    image, mask = _pair(20, 30)
    t = Compose([RandomScale((0.5, 2.0)), RandomCrop((16, 24), ignore_index=255)])
    for seed in range(20):
        out_image, out_mask = t(image, mask, np.random.default_rng(seed))
        assert out_image.shape == (16, 24, 3) and out_mask.shape == (16, 24)
        assert set(np.unique(out_mask)) <= set(np.unique(mask)) | {255}


def test_train_pipeline_never_grows_mask_value_set():
    t = train_transforms(16, mean=MEAN, std=STD, ignore_index=250, color_jitter=True, seed=0)
    for seed in range(25):
        image, mask = _pair(9 + seed % 7, 13 + seed % 5, seed)
        mask[mask == 255] = 1
        x, y = t(image, mask)
        assert x.shape == (3, 16, 16) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= set(np.unique(mask).tolist()) | {250}


def test_train_pipeline_pads_image_with_mean_so_it_normalises_to_zero():
    image, mask = _pair(2, 2)
    t = train_transforms(32, scale=(1.0, 1.0), mean=MEAN, std=STD, seed=0)
    x, y = t(image, mask)
    padded = y == 255
    assert padded.sum() >= 32 * 32 - 4
    assert x[:, padded & (torch.arange(32)[:, None] >= 2)].abs().max() < 0.01


def test_color_jitter_changes_image_only():
    image, mask = _pair()
    out_image, out_mask = ColorJitter(0.5, 0.5, 0.5, hue=0.1)(image, mask, np.random.default_rng(0))
    assert out_mask is mask and out_image.dtype == np.uint8 and out_image.shape == image.shape
    assert not np.array_equal(out_image, image)


def test_normalize_exact_values():
    image = np.array([[[255, 0, 51]]], dtype=np.uint8)
    x, y = Normalize(MEAN, STD)(image, np.array([[7]]))
    assert x.shape == (3, 1, 1) and y.dtype == torch.int64 and y.item() == 7
    expected = [(1 - 0.5) / 0.2, (0 - 0.4) / 0.25, (0.2 - 0.3) / 0.5]
    assert x.flatten().tolist() == pytest.approx(expected, abs=1e-6)


def test_eval_transforms_are_deterministic():
    image, mask = _pair()
    x1, y1 = eval_transforms(MEAN, STD)(image, mask)
    x2, y2 = eval_transforms(MEAN, STD, size=(3, 4))(image, mask)
    assert x1.shape == (3, 6, 8) and torch.equal(y1, torch.from_numpy(mask))
    assert x2.shape == (3, 3, 4) and y2.shape == (3, 4)


def test_seeded_compose_reproduces():
    image, mask = _pair(20, 20)
    runs = []
    for seed in (1, 1, 2):
        t = train_transforms(8, mean=MEAN, std=STD, seed=seed)
        runs.append([t(image, mask)[1] for _ in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def test_unseeded_compose_follows_torch_manual_seed():
    image, mask = _pair(20, 20)
    torch.manual_seed(5)
    a = train_transforms(8, mean=MEAN, std=STD)(image, mask)[1]
    torch.manual_seed(5)
    b = train_transforms(8, mean=MEAN, std=STD)(image, mask)[1]
    assert torch.equal(a, b)


class _Repeat(Dataset):
    """One image repeated: any difference between items comes from the augmentation."""

    def __init__(self) -> None:
        self.image, self.mask = _pair(24, 24)
        self.transform = train_transforms(8, mean=MEAN, std=STD, seed=0)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        return self.transform(self.image, self.mask)


def _load(seed: int) -> list[torch.Tensor]:
    loader = DataLoader(
        _Repeat(), batch_size=1, num_workers=2, worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    return [y[0] for _, y in loader]


def test_dataloader_workers_reproduce_and_differ_from_each_other():
    first, again, other = _load(0), _load(0), _load(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    # items 0 and 1 come from different workers; the same generator state would make them equal
    assert not torch.equal(first[0], first[1])
