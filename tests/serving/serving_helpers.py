"""Starting and stopping a real `semseg serve` process on 127.0.0.1 for the serving tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

import semseg
from semseg.engine.checkpoint import save_weights

CLASSES = ["background", "cat", "dog"]
PALETTE = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    checkpoint: Path
    classes: tuple[str, ...] = tuple(CLASSES)
    palette: tuple[list[int], ...] = tuple(PALETTE)
    log: Path | None = None  # where the process writes its output


def make_checkpoint(path: Path) -> Path:
    """A small untrained U-Net; with its classifier bias zeroed, the photo below gets all three classes."""
    torch.manual_seed(3)
    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2).eval()
    with torch.no_grad():
        model.classifier.bias.zero_()
    return save_weights(model, path, classes=CLASSES, palette=PALETTE, mean=[0.5] * 3, std=[0.25] * 3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_file: Path, log: Path, *extra: str) -> Server:
    """Start `semseg serve` and wait (up to 60 s) until /readyz says the model is warm."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "semseg", "serve", str(model_file), "--port", str(port), "--threads", "1",
               "--log-level", "warning", *extra]  # fmt: skip
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"semseg serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return Server(url, process, model_file, log=log)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"semseg serve did not become ready in 60 s:\n{log.read_text()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()


@contextmanager
def serve_in_thread(app) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a background thread of this process (so a test can hold its model);
    yields the URL once startup, warm-up included, is complete."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the in-process server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(15)
