"""`semseg serve` over real HTTP: each output type, the model description, and each kind of bad request."""

from __future__ import annotations

import io
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from semseg.inference.backends import choose_backend
from semseg.inference.predictor import Predictor
from semseg.serving.codec import rle_decode
from semseg.visualize import overlay


@pytest.fixture(scope="module")
def expected(server, photo):
    """What the library itself predicts for the photo: the server must return exactly this."""
    rgb = np.array(Image.open(photo).convert("RGB"))
    return rgb, Predictor.from_checkpoint(server.checkpoint)(rgb)


def segment(server, photo, **params) -> httpx.Response:
    with open(photo, "rb") as f:
        return httpx.post(f"{server.url}/v1/segment", params=params, files={"image": ("photo.png", f, "image/png")},
                          timeout=30)  # fmt: skip


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


def test_json_output_counts_pixels_and_carries_the_rle_mask(server, photo, expected):
    _, mask = expected
    response = segment(server, photo, rle="true")
    assert response.status_code == 200
    body = response.json()
    assert (body["height"], body["width"]) == mask.shape
    assert [c["name"] for c in body["classes"]] == list(server.classes)
    assert [c["pixels"] for c in body["classes"]] == np.bincount(mask.ravel(), minlength=3).tolist()
    assert sum(c["fraction"] for c in body["classes"]) == pytest.approx(1.0)
    assert len({c["id"] for c in body["classes"] if c["pixels"]}) >= 2  # the test image is not one class
    assert np.array_equal(rle_decode(body["rle"]), mask)
    assert float(response.headers["x-inference-ms"]) > 0
    assert "rle" not in segment(server, photo).json()


def test_mask_png_holds_the_class_ids(server, photo, expected):
    response = segment(server, photo, output="mask")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as png:
        assert png.mode == "P"
        assert np.array_equal(np.array(png), expected[1])
        assert png.getpalette()[:9] == [v for colour in server.palette for v in colour]


def test_overlay_is_the_library_overlay(server, photo, expected):
    rgb, mask = expected
    response = segment(server, photo, output="overlay", alpha="0.3")
    with Image.open(io.BytesIO(response.content)) as png:
        assert np.array_equal(np.array(png), np.array(overlay(rgb, mask, server.palette, alpha=0.3)))


def test_cutout_keeps_only_the_named_classes(server, photo, expected):
    rgb, mask = expected
    response = segment(server, photo, output="cutout", classes="cat,2")
    with Image.open(io.BytesIO(response.content)) as png:
        cut = np.array(png)
    assert cut.shape == (*mask.shape, 4)
    assert np.array_equal(cut[..., 3] == 255, np.isin(mask, [1, 2]))
    assert np.array_equal(cut[..., :3], rgb)


def test_raw_body_upload_equals_multipart(server, photo, expected):
    response = httpx.post(f"{server.url}/v1/segment?output=mask", content=photo.read_bytes(),
                          headers={"content-type": "image/png"}, timeout=30)  # fmt: skip
    with Image.open(io.BytesIO(response.content)) as png:
        assert np.array_equal(np.array(png), expected[1])


def test_model_description_health_and_openapi(server):
    model = httpx.get(f"{server.url}/v1/model").json()
    assert model["architecture"] == "unet" and model["options"]["base_channels"] == 4
    assert model["classes"] == list(server.classes) and model["palette"] == list(server.palette)
    assert model["normalization"]["mean"] == [0.5] * 3 and model["normalization"]["std"] == [0.25] * 3
    assert model["input_scale"] == 1.0  # a checkpoint without data.infer_scale: uploads as they are
    assert model["backend"] == choose_backend(server.checkpoint)  # auto: openvino where installed
    assert model["limits"] == {"max_upload_bytes": 262144, "max_pixels": 1_000_000}
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}
    spec = httpx.get(f"{server.url}/openapi.json").json()
    body = spec["paths"]["/v1/segment"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "image/*" in body
    assert {"/v1/model", "/healthz", "/readyz"} <= set(spec["paths"])
    page = httpx.get(f"{server.url}/")
    assert page.headers["content-type"].startswith("text/html") and 'id="file"' in page.text


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` RGB pixels but carries almost no data (a bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def post_raw(server, data: bytes, content_type: str = "image/png", **params) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/segment", params=params, content=data, headers={"content-type": content_type},
                      timeout=30)  # fmt: skip


def test_not_an_image_is_400(server):
    error = error_of(post_raw(server, b"this is not an image"), 400)
    assert error["code"] == "not_an_image" and "PNG" in error["message"]


def test_truncated_png_is_400(server, photo):
    data = photo.read_bytes()
    error = error_of(post_raw(server, data[: len(data) // 2]), 400)
    assert error["code"] == "corrupt_image" and "PNG" in error["message"]


@pytest.mark.parametrize(("pixels", "said"), [
    (np.array([[0, 70000], [5, 1_000_000]] * 8, dtype=np.int32), "integer values 0..1000000, outside the 0..65535"),
    (np.full((16, 2), 0.5, dtype=np.float32), "floating-point samples (mode F)"),
])
def test_an_image_without_an_8_bit_reading_is_400_with_advice_for_the_server(server, pixels, said):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="TIFF")
    error = error_of(post_raw(server, buffer.getvalue(), "image/tiff"), 400)
    assert error["code"] == "unsupported_image"
    assert error["message"].startswith(f"the TIFF upload has {said}")
    assert "save it as unsigned 8- or 16-bit" in error["message"] and "dataset" not in error["message"]


def test_empty_body_is_400(server):
    assert error_of(post_raw(server, b""), 400)["code"] == "empty_image"


def test_huge_dimensions_are_refused_before_decoding(server):
    error = error_of(post_raw(server, png_header_only(100_000, 100_000)), 413)
    assert error["code"] == "too_many_pixels"
    assert "decompression bomb" in error["message"] and "1,000,000" in error["message"]
    error = error_of(post_raw(server, png_header_only(1001, 1000)), 413)  # just over this server's 1 MP limit
    assert error["code"] == "too_many_pixels" and "1001x1000 = 1,001,000 pixels" in error["message"]


def test_oversize_body_is_413(server):
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 262144
    error = error_of(post_raw(server, buffer.getvalue()), 413)
    assert error["code"] == "body_too_large" and "262,144" in error["message"]
    files = {"image": ("big.png", buffer.getvalue(), "image/png")}
    assert error_of(httpx.post(f"{server.url}/v1/segment", files=files, timeout=30), 413)["code"] == "body_too_large"


def test_wrong_field_and_text_field_are_422(server, photo):
    files = {"file": ("photo.png", photo.read_bytes(), "image/png")}
    error = error_of(httpx.post(f"{server.url}/v1/segment", files=files), 422)
    assert error["code"] == "missing_field" and "fields sent: file" in error["message"]
    error = error_of(httpx.post(f"{server.url}/v1/segment", data={"image": "hello"}, files={"x": b"1"}), 422)
    assert error["code"] == "not_a_file"
    two = [("image", ("a.png", photo.read_bytes(), "image/png")), ("image", ("b.png", photo.read_bytes(), "image/png"))]
    error = error_of(httpx.post(f"{server.url}/v1/segment", files=two), 422)
    assert error == {"status": 422, "code": "duplicate_field",
                     "message": "the multipart form has 2 fields named 'image'; send one image a request"}


def test_unsupported_content_type_is_415(server):
    error = error_of(post_raw(server, b"hello", content_type="text/plain"), 415)
    assert "text/plain" in error["message"] and "multipart/form-data" in error["message"]


def test_bad_parameters_are_422(server, photo):
    error = error_of(segment(server, photo, output="jpeg"), 422)
    assert error["code"] == "invalid_parameter" and "'mask'" in error["message"]
    assert error_of(segment(server, photo, alpha="2"), 422)["code"] == "invalid_parameter"
    error = error_of(segment(server, photo, output="cutout"), 422)
    assert error["code"] == "missing_classes" and "cat" in error["message"]
    error = error_of(segment(server, photo, output="cutout", classes="horse"), 422)
    assert error["code"] == "unknown_class" and "'horse'" in error["message"]
    error = error_of(segment(server, photo, output="cutout", classes="\u00b2"), 422)  # a digit to isdigit, not to int: was 500
    assert error["code"] == "unknown_class" and "'\u00b2'" in error["message"]
    error = error_of(segment(server, photo, output="cutout", classes=",,,"), 422)  # used to give an empty cut-out
    assert error["code"] == "missing_classes" and "',,,' names no class" in error["message"]


def test_multipart_body_cut_mid_part_is_400(server, photo):
    whole = httpx.Request("POST", f"{server.url}/v1/segment", files={"image": ("photo.png", photo.read_bytes())})
    body = whole.read()
    for cut in (body[: len(body) // 2], body[:-10]):  # inside the file, and inside the closing boundary
        response = httpx.post(f"{server.url}/v1/segment", content=cut,
                              headers={"content-type": whole.headers["content-type"]})  # fmt: skip
        error = error_of(response, 400)
        assert error["code"] == "bad_multipart" and "cut short" in error["message"]
    response = httpx.post(f"{server.url}/v1/segment", content=body, headers={"content-type": whole.headers["content-type"]})
    assert response.status_code == 200  # the same body, whole, is fine


def test_unknown_route_and_method_are_json_errors(server):
    assert error_of(httpx.get(f"{server.url}/v2/segment"), 404)["code"] == "not_found"
    assert error_of(httpx.get(f"{server.url}/v1/segment"), 405)["code"] == "method_not_allowed"


def test_server_survives_bad_requests(server, photo, expected):
    for data in (b"", b"junk", png_header_only(50_000, 50_000), photo.read_bytes()[:100]):
        assert 400 <= post_raw(server, data).status_code < 500
    assert server.process.poll() is None
    response = segment(server, photo, output="mask")
    with Image.open(io.BytesIO(response.content)) as png:
        assert np.array_equal(np.array(png), expected[1])
