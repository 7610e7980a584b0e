"""Serving an ONNX export and several worker processes; the RLE codec and the wait-queue limit."""

from __future__ import annotations

import io
import threading
import time

import anyio
import httpx
import numpy as np
import pytest
from PIL import Image

from semseg.inference.export import export
from semseg.inference.predictor import Predictor
from semseg.serving.app import InferenceRunner
from semseg.serving.codec import ApiError, rle_decode, rle_encode

from serving_helpers import make_checkpoint, start_server, stop_server


def mask_from(server, photo) -> np.ndarray:
    response = httpx.post(f"{server.url}/v1/segment?output=mask", content=photo.read_bytes(),
                          headers={"content-type": "image/png"}, timeout=30)  # fmt: skip
    assert response.status_code == 200, response.text
    with Image.open(io.BytesIO(response.content)) as png:
        return np.array(png)


def test_onnx_file_is_served_by_onnxruntime_with_the_same_masks(tmp_path, photo):
    checkpoint = make_checkpoint(tmp_path / "model.safetensors")
    onnx_file = tmp_path / "model.onnx"
    export(checkpoint, onnx_file, check_sizes=((64, 64),))
    server = start_server(onnx_file, tmp_path / "server.log")
    try:
        model = httpx.get(f"{server.url}/v1/model").json()
        assert model["backend"] == "onnxruntime" and model["architecture"] == "unet"
        assert model["classes"] == list(server.classes)
        assert np.array_equal(mask_from(server, photo), Predictor.from_checkpoint(checkpoint)(photo))
    finally:
        stop_server(server)


def test_two_worker_processes_answer_concurrent_requests(tmp_path, photo):
    checkpoint = make_checkpoint(tmp_path / "model.safetensors")
    server = start_server(checkpoint, tmp_path / "server.log", "--workers", "2")
    try:
        expected = Predictor.from_checkpoint(checkpoint)(photo)
        results = [None] * 6

        def client(i: int) -> None:
            results[i] = mask_from(server, photo)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert all(r is not None and np.array_equal(r, expected) for r in results)
    finally:
        stop_server(server)


@pytest.mark.parametrize("shape", [(0, 5), (1, 1), (7, 9)])
def test_rle_round_trip(shape):
    mask = np.random.default_rng(0).integers(0, 4, shape, dtype=np.uint8)
    mask[:, : shape[1] // 2] = 2  # long runs as well as short ones
    rle = rle_encode(mask)
    assert sum(rle["lengths"]) == mask.size
    assert all(a != b for a, b in zip(rle["values"], rle["values"][1:]))  # runs are maximal
    assert np.array_equal(rle_decode(rle), mask)


def test_requests_beyond_the_queue_limit_get_503():
    started = threading.Event()

    def slow_predictor(rgb: np.ndarray) -> np.ndarray:
        started.set()
        time.sleep(0.3)
        return np.zeros(rgb.shape[:2], dtype=np.uint8)

    runner = InferenceRunner(slow_predictor, max_queue=2)
    outcomes: list[object] = []

    async def call() -> None:
        try:
            outcomes.append((await runner(np.zeros((4, 4, 3), dtype=np.uint8))).shape)
        except ApiError as exc:
            outcomes.append(exc.status)

    async def main() -> None:
        runner.limiter = anyio.CapacityLimiter(1)
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(call)
        assert runner.pending == 0

    anyio.run(main)
    assert sorted(map(str, outcomes)) == ["(4, 4)", "(4, 4)", "503"]


def test_serve_refuses_missing_and_unreadable_model_files(tmp_path, capsys):
    from semseg.cli import main

    assert main(["serve", str(tmp_path / "gone.safetensors")]) == 1
    assert "gone.safetensors" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "gone.onnx")]) == 1
    assert "no such ONNX file" in capsys.readouterr().err
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not weights")
    assert main(["serve", str(junk)]) == 1
    assert "junk.safetensors is not a readable safetensors file" in capsys.readouterr().err
