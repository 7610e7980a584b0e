"""Bytes in, bytes out for the HTTP layer: guarded image decoding, PNG encoding and RLE masks.

Decoding checks the declared pixel count *before* any pixel is decompressed, so a small
file that claims to be 100,000 x 100,000 pixels (a decompression bomb) is refused cheaply.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from semseg.data.base import UnsupportedImage
from semseg.inference.predictor import ImageTooLarge, open_image, rgb_from_pil


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, a stable machine-readable ``code`` and a message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict:
        """The JSON error body every refused request gets."""
        return {"error": {"status": self.status, "code": self.code, "message": self.message}}


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB from encoded image bytes, or an :class:`ApiError` saying why not."""
    if not data:
        raise ApiError(400, "empty_image", "the uploaded image is empty (0 bytes)")
    try:
        image = open_image(io.BytesIO(data), max_pixels=max_pixels)
    except ImageTooLarge as exc:
        raise ApiError(413, "too_many_pixels", f"the image is too large: {exc}; the server's limit is {max_pixels:,} "
                       "pixels (semseg serve --max-pixels); downscale it or cut it into tiles") from None  # fmt: skip
    except (OSError, ValueError):
        raise ApiError(400, "not_an_image", "the upload is not an image this server can decode "
                       "(PNG, JPEG, BMP, TIFF, WebP, GIF)") from None  # fmt: skip
    try:
        return rgb_from_pil(image)
    except UnsupportedImage as exc:
        raise ApiError(400, "unsupported_image", f"the {image.format} upload has {exc.what.removeprefix('image: ')}; this server takes 8- or "
                       "16-bit images (grey, RGB, RGBA, palette): save it as unsigned 8- or 16-bit") from None  # fmt: skip
    except (OSError, ValueError, SyntaxError) as exc:
        raise ApiError(400, "corrupt_image", f"the {image.format} image could not be decoded: {exc}") from None


def png_bytes(picture: Image.Image) -> bytes:
    """``picture`` encoded as PNG (fast compression: responses are made per request)."""
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def rle_encode(mask: np.ndarray) -> dict:
    """Row-major run-length encoding of a label map: ``values[i]`` repeated ``lengths[i]`` times."""
    flat = mask.ravel()
    if flat.size == 0:
        return {"size": list(mask.shape), "order": "row-major", "values": [], "lengths": []}
    starts = np.flatnonzero(np.concatenate([[True], flat[1:] != flat[:-1]]))
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    return {"size": list(mask.shape), "order": "row-major",
            "values": flat[starts].tolist(), "lengths": lengths.tolist()}  # fmt: skip


def rle_decode(rle: dict) -> np.ndarray:
    """Inverse of :func:`rle_encode` (clients and tests use it)."""
    dtype = np.uint8 if max(rle["values"], default=0) <= 255 else np.uint16  # as Predictor's label maps
    values = np.repeat(np.asarray(rle["values"], dtype=dtype), np.asarray(rle["lengths"], dtype=np.int64))
    return values.reshape(rle["size"])


def class_summary(mask: np.ndarray, classes: Sequence[str], palette: Sequence[Sequence[int]]) -> list[dict]:
    """Per class: id, name, colour, pixel count and the fraction of the image it covers."""
    counts = np.bincount(mask.ravel(), minlength=len(classes))
    total = max(1, mask.size)
    return [{"id": i, "name": name, "color": list(palette[i]), "pixels": int(counts[i]),
             "fraction": float(counts[i]) / total} for i, name in enumerate(classes)]  # fmt: skip
