"""Load test of `semseg serve` on loopback: N concurrent clients, a fixed number of requests.

    python benchmarks/serve_load.py MODEL.onnx|CKPT.safetensors IMAGE --clients 8 --requests 200 [-- SERVE OPTIONS]

Starts the server itself (127.0.0.1, a free port), waits for /readyz, sends ``--requests``
POSTs of IMAGE to /v1/segment from ``--clients`` threads, each request timed from send to
last byte; then stops the server. Prints throughput, p50/p90/p99 latency, the error count
and the server's resident memory before and after (a leak shows as growth) and its peak
(what one large image costs). Stops by itself; exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process and its children (uvicorn workers), in MiB (Linux /proc);
    ``field="VmHWM"`` gives the peak since each process started instead."""
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    total = 0
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                total += int(line.split()[1])
    return total / 1024


def start(model: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "semseg", "serve", model, "--port", str(port), "--log-level", "warning", *extra]
    process = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server was not ready after 60 s")


def run_clients(url: str, image: bytes, *, clients: int, requests: int, output: str) -> tuple[list[float], list[str]]:
    """Latencies (s) of the successful requests and a description of each failed one."""
    latencies, errors, lock = [], [], threading.Lock()
    remaining = iter(range(requests))

    def client() -> None:
        with httpx.Client(timeout=120) as session:
            while True:
                with lock:
                    if next(remaining, None) is None:
                        return
                start = time.perf_counter()
                try:
                    response = session.post(f"{url}/v1/segment", params={"output": output}, content=image,
                                            headers={"content-type": "image/png"})  # fmt: skip
                    ok = response.status_code == 200
                    failure = "" if ok else f"HTTP {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    failure = f"{type(exc).__name__}: {exc}"
                elapsed = time.perf_counter() - start
                with lock:
                    (errors.append(failure) if failure else latencies.append(elapsed))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="checkpoint or ONNX file to serve")
    parser.add_argument("image", help="the image every request sends (PNG)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--output", default="mask", choices=["json", "mask", "overlay"])
    parser.add_argument("--warmup", type=int, default=8, help="untimed requests first")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args, extra = parser.parse_args(argv[:split]), argv[split + 1 :]  # after `--`: options for semseg serve
    image = Path(args.image).read_bytes()
    process, url = start(args.model, extra)
    try:
        run_clients(url, image, clients=args.clients, requests=args.warmup, output=args.output)
        rss_before = rss_mib(process.pid)
        start_time = time.perf_counter()
        latencies, errors = run_clients(url, image, clients=args.clients, requests=args.requests, output=args.output)
        wall = time.perf_counter() - start_time
        rss_after, rss_peak = rss_mib(process.pid), rss_mib(process.pid, "VmHWM")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    ms = np.asarray(latencies) * 1000
    print(f"model {os.path.basename(args.model)}, image {os.path.basename(args.image)}, output={args.output}, "
          f"{args.clients} clients, {args.requests} requests, serve args: {' '.join(extra) or '(defaults)'}")
    print(f"throughput {len(latencies) / wall:.2f} req/s over {wall:.1f} s; errors {len(errors)}")
    if len(ms):
        print(f"latency ms: p50 {np.percentile(ms, 50):.0f}, p90 {np.percentile(ms, 90):.0f}, "
              f"p99 {np.percentile(ms, 99):.0f}, max {ms.max():.0f}")
    print(f"server RSS: {rss_before:.0f} MiB before, {rss_after:.0f} MiB after, {rss_peak:.0f} MiB peak")
    for failure in errors[:5]:
        print("error:", failure)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
