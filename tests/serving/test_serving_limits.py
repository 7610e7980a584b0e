"""What a request can hold and cost: body timeouts, client disconnects, the wait queue, large images."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from semseg.inference.predictor import AUTO_TILE, Predictor
from semseg.serving import app as app_module
from semseg.serving.app import ServeSettings, create_app

from serving_helpers import CLASSES, PALETTE, Server, make_checkpoint, serve_in_thread, start_server, stop_server

STALLED = b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server that waits 1 s for a body and logs at info level, where client disconnects are reported."""
    folder = tmp_path_factory.mktemp("serve")
    running = start_server(make_checkpoint(folder / "model.safetensors"), folder / "server.log",
                           "--body-timeout", "1", "--log-level", "info")  # fmt: skip
    yield running
    stop_server(running)


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def test_stalled_bodies_get_408_and_their_sockets_closed(server):
    sockets = [socket.create_connection(("127.0.0.1", port_of(server)), timeout=20) for _ in range(20)]
    for s in sockets:
        s.sendall(STALLED)  # declares 1000 bytes, sends 10, then nothing: used to hold the socket forever
    for s in sockets:
        answer = b""
        while chunk := s.recv(4096):  # until the server closes the connection
            answer += chunk
        s.close()
        assert answer.startswith(b"HTTP/1.1 408") and b'"code":"body_timeout"' in answer
        assert b"connection: close" in answer.lower()
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_a_client_disconnect_is_one_log_line(server):
    line = "disconnected after 10 of 1000 body bytes"
    with socket.create_connection(("127.0.0.1", port_of(server))) as s:
        s.sendall(STALLED)
    deadline = time.monotonic() + 20
    while line not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    text = server.log.read_text()
    assert text.count(line) == 1
    assert "Traceback" not in text and "Exception in ASGI application" not in text


class GatedConv(nn.Module):
    """A 1x1 convolution whose forward waits for ``gate`` and records the input sizes it sees."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.gate, self.sizes = nn.Conv2d(3, len(CLASSES), 1), threading.Event(), []
        self.gate.set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.gate.wait(60), "the test never opened the gate"
        self.sizes.append(tuple(x.shape[-2:]))
        return self.conv(x)


def in_process_app(model: nn.Module, **limits) -> object:
    predictor = Predictor(model, classes=CLASSES, palette=PALETTE, mean=[0.5] * 3, std=[0.25] * 3)
    return create_app(predictor, ServeSettings(checkpoint="gated.safetensors", **limits))


def test_max_queue_refuses_beyond_the_waiting_requests_and_decodes_only_admitted_ones(monkeypatch, photo):
    decoded = []
    decode = app_module.decode_image
    monkeypatch.setattr(app_module, "decode_image", lambda data, **kw: decoded.append(len(data)) or decode(data, **kw))
    model = GatedConv()
    statuses: list[int] = []

    def client() -> None:
        response = httpx.post(f"{url}/v1/segment", content=photo.read_bytes(), headers={"content-type": "image/png"},
                              timeout=60)  # fmt: skip
        statuses.append(response.status_code)

    with serve_in_thread(in_process_app(model, max_queue=2)) as url:
        model.gate.clear()  # the first request now holds the model until the gate opens
        clients = [threading.Thread(target=client) for _ in range(4)]
        for c in clients:
            c.start()
        deadline = time.monotonic() + 30
        while not statuses and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = list(statuses)
        model.gate.set()
        for c in clients:
            c.join(60)
    assert refused == [503]  # 1 running + 2 waiting (--max-queue 2) fit; the fourth is refused at once
    assert sorted(statuses) == [200, 200, 200, 503]
    assert len(decoded) == 3  # the refused request was never decoded


def test_large_images_are_segmented_in_bounded_windows(photo):
    model = GatedConv()
    yy, xx = np.mgrid[0:2100, 0:2100]
    rgb = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    with serve_in_thread(in_process_app(model)) as url:
        model.sizes.clear()  # forget the warm-up
        response = httpx.post(f"{url}/v1/segment", content=buffer.getvalue(), headers={"content-type": "image/png"},
                              timeout=120)  # fmt: skip
    assert response.status_code == 200, response.text
    assert (response.json()["height"], response.json()["width"]) == (2100, 2100)
    assert len(model.sizes) > 1 and set(model.sizes) == {(AUTO_TILE, AUTO_TILE)}
