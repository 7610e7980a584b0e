"""Predictor: images of any size and kind in, label maps (and class probabilities) out.

Everything around ``model(x)`` lives here, once: reading the input, normalising with the
checkpoint's statistics, padding tiny images, sliding-window inference for images too
large to run whole (with blended overlaps and memory bounded by the image *width*), and
flip / multi-scale test-time augmentation as in the PSPNet and DeepLab papers.
"""

from __future__ import annotations

import math
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from semseg.data.base import declared_size, read_bands, rgb_array, rgb_from_pil
from semseg.engine.checkpoint import infer_scale
from semseg.engine.evaluate import probabilities_at
from semseg.inference.backends import load_backend
from semseg.pretrained import resolve_checkpoint

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor
# read(top, left, rows, cols) -> (rows, cols, 3) uint8 RGB, or (rows, cols, bands) float32 for a model of
# full-precision bands: one window of an image, in memory or in a file
WindowReader = Callable[[int, int, int, int], np.ndarray]
Block = tuple[np.ndarray, int, int]  # (C, rows, cols) float32 probabilities, and their top and left
MIN_SIZE = 32  # every semseg model accepts inputs from 32x32 up
# Whole-image inference costs memory in proportion to the pixels (LR-ASPP on a 4000x4000 image: 3.1 GB
# peak in `semseg serve`). Above MAX_WHOLE_PIXELS (Cityscapes' 2048x1024 stays whole), images run in
# AUTO_TILE windows unless ``tile`` says otherwise (1.4 GB for the same image; docs/benchmarks.md).
# Fixed defaults rather than bounds read from free memory, so an image gets the same labels on every machine.
MAX_WHOLE_PIXELS = 2048 * 2048
AUTO_TILE = 1024


class ImageTooLarge(ValueError):
    """An image file that declares more pixels than allowed: refused from its header, before decoding."""


def open_image(source: str | Path | IO[bytes], *, max_pixels: int | None = None) -> Image.Image:
    """The PIL image of an encoded file, opened lazily (only the header is read so far).

    With ``max_pixels``, more pixels than that raise :class:`ImageTooLarge` before anything is
    decompressed, and PIL's own decompression-bomb warning gives way to that limit. PIL's hard
    limit (``2 * Image.MAX_IMAGE_PIXELS``) always applies, also as :class:`ImageTooLarge`.
    """
    with warnings.catch_warnings():
        if max_pixels is not None:
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(source)
        except Image.DecompressionBombError:
            raise ImageTooLarge(f"it declares more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels "
                                "(a decompression bomb?)") from None  # fmt: skip
    w, h = image.size
    if max_pixels is not None and w * h > max_pixels:
        image.close()
        raise ImageTooLarge(f"it is {w}x{h} = {w * h:,} pixels")
    return image


def to_rgb_array(image: ImageLike, *, max_pixels: int | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB from a path, PIL image, ``(H, W[, 3|4])`` array or ``(3, H, W)`` tensor.

    A path is refused (:class:`ImageTooLarge`) when it declares more than ``max_pixels`` pixels.
    """
    if isinstance(image, (str, Path)):
        try:
            with open_image(image, max_pixels=max_pixels) as opened:
                return rgb_from_pil(opened)
        except ImageTooLarge as exc:
            limit = f"; the limit is {max_pixels:,} pixels" if max_pixels is not None else ""
            raise ImageTooLarge(f"cannot read image {image}: {exc}{limit}") from None
        except (OSError, ValueError, SyntaxError) as exc:  # SyntaxError: some PIL decoders' "broken file"
            raise ValueError(f"cannot read image {image}: {exc}") from None
    if isinstance(image, Image.Image):
        return rgb_from_pil(image)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"a tensor image must be (3, H, W) or (1, H, W), got {tuple(image.shape)}")
        array = image.detach().cpu()
        if not array.is_floating_point() and array.dtype != torch.uint8:
            raise ValueError(f"a tensor image must be float in [0, 1] or uint8, got {array.dtype}; scale it first")
        if array.is_floating_point():
            # Beyond [0, 1] by more than resampling's overshoot: a 0..255 tensor would clamp to a white image.
            lo, hi = (float(array.min()), float(array.max())) if array.numel() else (0.0, 0.0)
            if not (-0.01 <= lo and hi <= 1.01):  # NaN fails both
                raise ValueError(f"a float tensor image must hold values in [0, 1], got {lo:g}..{hi:g}; divide a "
                                 "0..255 tensor by 255, or pass it as uint8")  # fmt: skip
            array = (array.clamp(0, 1) * 255).round().byte()
        image = array.permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
            raise ValueError(f"an array image must be (H, W), (H, W, 3) or (H, W, 4), got {image.shape}")
        if image.dtype != np.uint8:
            raise ValueError(f"an array image must be uint8, got {image.dtype}; scale it to 0..255 first")
        if 0 in image.shape[:2]:
            raise ValueError(f"the image has no pixels ({image.shape[1]}x{image.shape[0]})")
        return np.ascontiguousarray(np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3])
    raise TypeError(f"cannot read an image from {type(image).__name__}")


def to_band_array(image: ImageLike, bands: int, *, max_pixels: int | None = None,
                  fill: Sequence[float] | None = None) -> np.ndarray:  # fmt: skip
    """``(H, W, bands)`` float32 at full precision from a path (:func:`~semseg.data.base.read_bands`),
    an ``(H, W[, bands])`` array of any numeric type, or a ``(bands, H, W)`` tensor: the input of a
    model trained on full-precision bands. A path over ``max_pixels`` is refused from its header. With
    ``fill`` (one value per band: the model's mean), no-data pixels -- a raster's nodata, NaN or
    infinite samples -- get it, as in training, instead of feeding the model values it never saw."""
    valid = None
    if isinstance(image, (str, Path)):
        try:
            h, w = declared_size(Path(image))
            if max_pixels is not None and h * w > max_pixels:
                raise ImageTooLarge(f"it is {w}x{h} = {w * h:,} pixels")
            image, valid = read_bands(Path(image), bands)
        except ImageTooLarge as exc:
            limit = f"; the limit is {max_pixels:,} pixels" if max_pixels is not None else ""
            raise ImageTooLarge(f"cannot read image {image}: {exc}{limit}") from None
        except (OSError, ValueError, SyntaxError) as exc:
            detail = str(exc).replace(f"{image}: ", "").replace(f"{image} ", "it ")
            raise ValueError(f"cannot read image {image}: {detail}") from None
    if isinstance(image, Image.Image):
        image = np.asarray(image)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3:
            raise ValueError(f"a tensor image must be ({bands}, H, W), got {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"cannot read an image from {type(image).__name__}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] != bands or image.dtype.kind not in "uif":
        raise ValueError(f"the model takes {bands} band(s): give an (H, W, {bands}) array of numbers, got "
                         f"{image.dtype} {image.shape}")  # fmt: skip
    pixels = np.array(image, dtype=np.float32)  # a copy: no-data pixels are filled in place
    if fill is not None:
        finite = np.isfinite(pixels).all(axis=2)
        valid = finite if valid is None else valid & finite
        if not valid.all():
            pixels[~valid] = np.asarray(fill, dtype=np.float32)
    return pixels


def model_input(pixels: np.ndarray, mean: torch.Tensor, std: torch.Tensor, pixel_scale: float = 255.0) -> torch.Tensor:
    """The ``(1, C, H, W)`` float tensor a model sees for ``(H, W, C)`` ``pixels`` (uint8 RGB, or float32
    bands): divided by ``pixel_scale`` (255 for RGB: to 0..1; 1 for bands), then normalised by ``mean``
    and ``std`` (``(1, C, 1, 1)`` tensors, on the model's device).

    Three passes over the pixels (convert-and-transpose, scale, shift) instead of five: 0.4 ms
    instead of 1.3 ms at 360x480 here (docs/benchmarks.md, "Work around the model").
    """
    x = torch.empty((1, pixels.shape[2], *pixels.shape[:2]), device=mean.device)
    x.copy_(torch.from_numpy(pixels).to(mean.device).permute(2, 0, 1)[None])  # HWC -> float NCHW
    return x.mul_(1 / (pixel_scale * std)).add_(-mean / std)  # (x / pixel_scale - mean) / std


def read_pixels(image: ImageLike, bands: int | None, *, max_pixels: int | None = None,
                fill: Sequence[float] | None = None) -> np.ndarray:  # fmt: skip
    """What a model of ``bands`` (``None``: 8-bit RGB) reads from ``image``: :func:`to_rgb_array` or
    :func:`to_band_array` (no-data pixels given ``fill``)."""
    if bands is None:
        return to_rgb_array(image, max_pixels=max_pixels)
    return to_band_array(image, bands, max_pixels=max_pixels, fill=fill)


class Predictor:
    """Segments images with a model and the pre/post-processing its checkpoint describes.

    ``tile``: run windows of ``tile x tile`` pixels (stride ``tile * (1 - overlap)``),
    blending overlaps with a tent weight, for images larger than ``tile`` in either side.
    Without ``tile``, images over ``max_whole_pixels`` run in windows of ``AUTO_TILE`` pixels a side
    (or ``isqrt(max_whole_pixels)`` if smaller), so memory stays bounded; ``None`` runs them whole.
    ``scales`` and ``flip``: test-time augmentation; probabilities are averaged.
    ``input_scale``: the model runs on inputs resized by this factor (times each of ``scales``) and its
    probabilities are resized back; checkpoints trained with ``data.infer_scale`` set it.
    ``bands``: the model reads that many bands at full precision (``mean``/``std`` in their stored
    units) instead of 8-bit RGB; checkpoints of such models say so and set it.
    """

    def __init__(
        self,
        model: nn.Module | Any,
        *,
        classes: Sequence[str],
        palette: Sequence[Sequence[int]],
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
        tile: int | None = None,
        overlap: float = 1 / 3,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
        max_whole_pixels: int | None = MAX_WHOLE_PIXELS,
        metadata: dict[str, Any] | None = None,
        bands: int | None = None,
        input_scale: float = 1.0,
    ) -> None:
        if tile is not None and tile < MIN_SIZE:
            raise ValueError(f"tile must be at least {MIN_SIZE} pixels, got {tile}")
        if max_whole_pixels is not None and max_whole_pixels < MIN_SIZE**2:
            raise ValueError(f"max_whole_pixels must be at least {MIN_SIZE**2}, got {max_whole_pixels}")
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        if not scales or min(scales) <= 0:
            raise ValueError(f"scales must be positive, got {list(scales)}")
        if not input_scale > 0:
            raise ValueError(f"input_scale must be positive, got {input_scale}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.classes, self.palette = list(classes), [tuple(c) for c in palette]
        if len(self.classes) > 65536:
            raise ValueError(f"{len(self.classes)} classes do not fit 16-bit label maps (at most 65,536)")
        self.label_dtype = np.uint8 if len(self.classes) <= 256 else np.uint16  # what the label maps are
        channels = 3 if bands is None else bands
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean and std need {channels} values (one per input channel), got {len(mean)} and {len(std)}")
        self.bands = bands
        self.pixel_scale = 255.0 if bands is None else 1.0
        self.mean = torch.tensor(mean, device=self.device, dtype=torch.float32).view(1, channels, 1, 1)
        self.std = torch.tensor(std, device=self.device, dtype=torch.float32).view(1, channels, 1, 1)
        self.tile, self.overlap, self.scales, self.flip = tile, overlap, tuple(scales), flip
        self.input_scale = float(input_scale)
        self.max_whole_pixels = max_whole_pixels
        self.metadata = dict(metadata or {})  # the checkpoint's own description (model_config, version, ...)
        self.backend = getattr(model, "engine", "torch")  # which engine runs the model (a plain module: torch)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, device: str | torch.device = "cpu", backend: str = "auto",
        input_scale: float | None = None, **options: Any,
    ) -> Predictor:
        """A predictor for a ``.safetensors`` checkpoint, or an ``.onnx`` / OpenVINO ``.xml`` file written
        by ``semseg export``, on the engine ``backend`` names (``auto``: the fastest one installed for
        the file and device, see :func:`~semseg.inference.backends.choose_backend`). ``input_scale``:
        None runs the model at the file's own ``infer_scale``."""
        model = load_backend(path, backend, device)
        meta = model.metadata
        channels = meta.get("model_config", {}).get("in_channels", 3)
        if meta.get("bands") is None and channels != 3:
            raise ValueError(f"{path} is a {channels}-channel model without `bands` in its metadata, so semseg does not "
                             "know how to read its images; train it on data described with bands: N (or save it "
                             f"with bands={channels} and mean/std in the images' stored units)")  # fmt: skip
        return cls(model, classes=meta["classes"], palette=meta["palette"], mean=meta["mean"], std=meta["std"],
                   device=device, metadata=meta, bands=meta.get("bands"),
                   input_scale=infer_scale(meta, path) if input_scale is None else input_scale, **options)  # fmt: skip

    @classmethod
    def from_pretrained(cls, name: str, *, device: str | torch.device = "cpu", backend: str = "auto",
                        **options: Any) -> Predictor:  # fmt: skip
        """A predictor for a model shipped inside semseg (``semseg pretrained`` lists them), e.g. ``camvid-<arch>``."""
        return cls.from_checkpoint(resolve_checkpoint(name), device=device, backend=backend, **options)

    @torch.inference_mode()
    def __call__(self, image: ImageLike, *, return_probs: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The ``(H, W)`` label map of ``image`` (and ``(C, H, W)`` float32 probabilities on request):
        uint8, or uint16 for a model of more than 256 classes."""
        rgb = self.read(image)
        if not return_probs and self._single_view(rgb):
            # The argmax of the logits is the argmax of the probabilities: skipping the
            # softmax saves about 40% of LR-ASPP's time per 360x480 image on a CPU.
            # (max().indices: torch's argmax over the channel dim of an NCHW tensor is ~6x slower)
            labels = self.model(self._tensor(rgb))[0].max(0).indices
            return labels.to(torch.uint8).cpu().numpy() if self.label_dtype == np.uint8 else labels.cpu().numpy().astype(np.uint16)
        h, w = rgb.shape[:2]
        labels = np.empty((h, w), dtype=self.label_dtype)
        # Without return_probs each block is dropped once labelled: memory stays bounded by the windows
        probs = np.empty((len(self.classes), h, w), dtype=np.float32) if return_probs else None

        def window(top: int, left: int, rows: int, cols: int) -> np.ndarray:
            return rgb[top : top + rows, left : left + cols]

        for block, top, left in self.probability_blocks(h, w, window):
            rows, cols = block.shape[1:]
            labels[top : top + rows, left : left + cols] = block.argmax(0)
            if probs is not None:
                probs[:, top : top + rows, left : left + cols] = block
        return (labels, probs) if probs is not None else labels

    def read(self, image: ImageLike, *, max_pixels: int | None = None) -> np.ndarray:
        """``image`` as this model reads it: ``(H, W, 3)`` uint8 RGB, or ``(H, W, bands)`` float32 (:func:`read_pixels`)."""
        return read_pixels(image, self.bands, max_pixels=max_pixels, fill=self.mean.flatten().tolist())

    def predict_batch(self, images: Sequence[ImageLike]) -> list[np.ndarray]:
        """Label maps of several images (any mix of sizes and kinds)."""
        return [self(image) for image in images]

    def _tile_for(self, h: int, w: int) -> int | None:
        """The window side for an ``h x w`` image, or None to run it whole. ``tile`` is in the image's
        pixels; the automatic bound is on the pixels the model sees, so with ``input_scale`` times the
        largest test-time scale s, images tile from ``max_whole_pixels / s**2`` up, in windows ``1 / s``
        the side."""
        if self.tile is not None:
            return self.tile if max(h, w) > self.tile else None
        s = self.input_scale * max(self.scales)
        if self.max_whole_pixels is not None and h * w * s * s > self.max_whole_pixels:
            return max(MIN_SIZE, round(min(AUTO_TILE, math.isqrt(self.max_whole_pixels)) / s))
        return None

    def _single_view(self, rgb: np.ndarray) -> bool:
        """One forward pass at the image's own size covers it: no test-time augmentation, no
        tiling, no input scale, and no upsampling of an image under ``MIN_SIZE``."""
        h, w = rgb.shape[:2]
        whole = self._tile_for(h, w) is None
        return whole and min(h, w) >= MIN_SIZE and self.scales == (1.0,) and self.input_scale == 1 and not self.flip

    def row_bands(self, height: int, width: int) -> list[tuple[int, int]]:
        """The ``(first, end)`` rows each band of windows finishes for a ``height x width`` image, top to
        bottom (one band when it runs whole): the units :meth:`probability_blocks` can be split into."""
        tile = self._tile_for(height, width)
        if tile is None:
            return [(0, height)]
        tops = _starts(height, tile, self._stride(tile))
        return list(zip(tops, [*tops[1:], height]))

    @torch.inference_mode()
    def probability_blocks(self, height: int, width: int, read: WindowReader, *,
                           rows: tuple[int, int] | None = None) -> Iterator[Block]:  # fmt: skip
        """Class probabilities of a ``height x width`` image that ``read(top, left, rows, cols)`` gives a
        window at a time as :meth:`read` gives pixels: finished ``((C, rows, cols), top, left)`` blocks,
        left to right along bands of rows, bands top to bottom.

        The image is read whole or in the sliding window's windows, never more, so a caller that reads
        windows from a file (:mod:`semseg.inference.raster`) never holds the whole image. ``rows``
        (``first`` and ``end`` of :meth:`row_bands`' bands) gives only the blocks of those rows, the same
        values as for the whole image: the bands above whose windows reach them are run, not yielded.
        """
        tile = self._tile_for(height, width)
        if tile is None:
            if rows is None or rows[0] == 0:
                yield self._whole(self._tensor(read(0, 0, height, width)))[0].cpu().float().numpy(), 0, 0
        else:
            yield from self._tiled(height, width, tile, read, (0, height) if rows is None else rows)

    def _stride(self, tile: int) -> int:
        return max(1, int(tile * (1 - self.overlap)))

    def _tensor(self, rgb: np.ndarray) -> torch.Tensor:
        return model_input(rgb, self.mean, self.std, self.pixel_scale)

    def _whole(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(1, C, H, W)`` averaged over scales (and flips)."""
        total = None
        for scale in self.scales:
            for flipped in (False, True) if self.flip else (False,):
                view = x.flip(-1) if flipped else x
                probs = probabilities_at(self.model, view, scale * self.input_scale, MIN_SIZE)
                probs = probs.flip(-1) if flipped else probs
                total = probs if total is None else total + probs
        return total / (len(self.scales) * (2 if self.flip else 1))

    def _tiled(self, h: int, w: int, tile: int, read: WindowReader, rows: tuple[int, int]) -> Iterator[Block]:
        """Sliding-window probabilities, overlaps blended with tent weights, as finished blocks.

        Windows run left to right along a band of rows. After each one, the columns left of the next
        window are final for the rows the next band does not share: they leave as a block, and the shared
        rows' sums are carried to the next band. What is held is those carried rows (``tile - stride``
        rows of the full width; up to ``tile - 1`` before a last band flush with the bottom) and one
        window's columns, so memory grows with the width, never the height.
        """
        stride = self._stride(tile)
        tops, lefts = _starts(h, tile, stride), _starts(w, tile, stride)
        weight = _tent(min(tile, h), min(tile, w), self.device)
        ends = [*tops[1:], h]  # rows above the next band's top are final once a band is done
        carried = [min(tile, h - top) - (end - top) for top, end in zip(tops, ends)]
        # Weighted probability sums with the weight sum as an extra channel; one buffer serves every band.
        store = torch.empty(len(self.classes) + 1, max(carried), w, device=self.device)
        shared = 0
        first, last = rows
        for top, end, rows_out in zip(tops, ends, carried):
            if top + min(tile, h - top) <= first:  # adds nothing to the rows asked for
                continue
            if top >= last:
                break
            blocks = self._band(read, top, end - top, lefts, weight, store[:, :shared], store[:, :rows_out])
            if top < first:  # run for the sums it carries into the rows asked for, its own rows not given
                for _ in blocks:
                    pass
            else:
                yield from blocks
            shared = rows_out

    def _band(self, read: WindowReader, top: int, done: int, lefts: list[int], weight: torch.Tensor,
              carry: torch.Tensor, out: torch.Tensor) -> Iterator[Block]:  # fmt: skip
        """The band of windows at ``top``: blocks of its first ``done`` rows, and into ``out`` the sums of
        the rows below them. ``carry`` holds the sums the previous band left for this band's first rows.
        The two may share memory: a column of ``out`` is written only after that of ``carry`` was read."""
        rows, w = weight.shape[0], carry.shape[2]
        buf = carry.new_zeros(carry.shape[0], rows, 0)  # sums of columns start .. start + buf.shape[2]
        start = 0
        for j, left in enumerate(lefts):
            cols = min(weight.shape[1], w - left)
            end, have = left + cols, start + buf.shape[2]  # every window reaches further right than the last
            fresh = carry.new_zeros(carry.shape[0], rows, end - have)  # its new columns start from the carry
            fresh[:, : carry.shape[1]] = carry[:, :, have:end]
            buf = torch.cat([buf, fresh], dim=2)
            tw = weight[:, :cols]
            buf[:-1, :, left - start : end - start] += self._whole(self._tensor(read(top, left, rows, cols)))[0] * tw
            buf[-1, :, left - start : end - start] += tw
            final = lefts[j + 1] if j + 1 < len(lefts) else w  # no later window reaches the columns before it
            n = final - start
            yield (buf[:-1, :done, :n] / buf[-1, :done, :n]).cpu().numpy(), top, start
            out[:, :, start:final] = buf[:, done:, :n]
            buf, start = buf[:, :, n:], final


def _starts(size: int, tile: int, stride: int) -> list[int]:
    """Window starts covering ``0..size`` with windows of ``tile`` (the last one flush with the end)."""
    if size <= tile:
        return [0]
    count = math.ceil((size - tile) / stride) + 1
    return sorted({min(i * stride, size - tile) for i in range(count)})


def _tent(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Blending weights: highest at the window's centre, small but non-zero at its border."""
    ys = 1 - (torch.arange(h, device=device) + 0.5 - h / 2).abs() / (h / 2)
    xs = 1 - (torch.arange(w, device=device) + 0.5 - w / 2).abs() / (w / 2)
    return (ys[:, None] * xs[None, :]).clamp_min(1e-3)
