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

from semseg.inference.backends import choose_backend, installed
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


@pytest.mark.parametrize("backend", ["auto", "onnxruntime", "openvino"])
def test_onnx_file_is_served_with_the_same_masks_as_torch(tmp_path, photo, backend):
    for needed in {"onnxruntime", backend} - {"auto"}:  # onnxruntime: the export's parity check
        if not installed(needed):
            pytest.skip(f"{needed} is not installed")
    checkpoint = make_checkpoint(tmp_path / "model.safetensors")
    onnx_file = tmp_path / "model.onnx"
    export(checkpoint, onnx_file, check_sizes=((64, 64),))
    server = start_server(onnx_file, tmp_path / "server.log", "--backend", backend)
    try:
        model = httpx.get(f"{server.url}/v1/model").json()
        assert model["backend"] == choose_backend(onnx_file, backend) and model["architecture"] == "unet"
        assert model["classes"] == list(server.classes)
        assert np.array_equal(mask_from(server, photo), Predictor.from_checkpoint(checkpoint, backend="torch")(photo))
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


def test_max_queue_counts_the_waiting_requests_not_the_running_one():
    ran: list[int] = []

    def job(i: int):
        def run() -> int:
            ran.append(i)
            time.sleep(0.3)
            return i
        return run

    runner = InferenceRunner(max_queue=2)
    outcomes: dict[int, object] = {}

    async def call(i: int) -> None:
        try:
            outcomes[i] = await runner(job(i))
        except ApiError as exc:
            outcomes[i] = exc.status

    async def main() -> None:
        runner.limiter = anyio.CapacityLimiter(1)
        async with anyio.create_task_group() as group:
            for i in range(4):
                group.start_soon(call, i)
        assert runner.pending == 0

    anyio.run(main)
    # one runs and two wait (--max-queue 2, as the README says); only the fourth is refused, and its job never runs
    assert outcomes == {0: 0, 1: 1, 2: 2, 3: 503}
    assert ran == [0, 1, 2]


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
