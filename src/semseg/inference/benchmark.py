"""``semseg benchmark``: how fast a model runs here, and how close to this machine's peak.

Latency is measured per batch after warm-up; throughput and achieved GFLOP/s follow
from it and the model's counted FLOPs. The peak is measured in the same run with a
large matmul and a large convolution in the same dtype, so the ratio compares like with
like on whatever machine runs the command.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from semseg.inference.backends import BACKENDS, BENCHMARK_ENGINES, choose_backend, compile_openvino, onnxruntime_session
from semseg.profile import model_cost
from semseg.registry import create_model

INT8_CALIBRATION_BATCHES = 4  # random inputs: int8 speed does not depend on the ranges fitted


def measure_peak_gflops(dtype: torch.dtype = torch.float32, seconds: float = 2.0) -> float:
    """Best GFLOP/s of large matmuls (torch and NumPy) and a large 3x3 convolution, over ``seconds``.

    The best single call counts, not the average: the peak is what the machine can do,
    and a busy neighbour only ever makes calls slower. In fp32 the shapes (2048^2 matmul,
    256-channel conv) are large enough to keep every core's vector units busy; in bf16 they
    are smaller so that a CPU without native bfloat16 (emulated, ~100x slower) still
    finishes a call quickly.
    """
    n, channels = (2048, 256) if dtype == torch.float32 else (768, 128)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(dtype)
    x = torch.randn(1, channels, 56, 56, dtype=dtype)
    tasks = [(lambda: a @ b, 2 * n**3), (lambda: conv(x), 2 * 56 * 56 * channels**2 * 9)]
    if dtype == torch.float32:  # NumPy's BLAS (OpenBLAS) beats torch's matmul on some CPUs (e.g. AMD EPYC)
        an, bn = a.numpy(), b.numpy()
        tasks.append((lambda: an @ bn, 2 * n**3))
    best = 0.0
    with torch.inference_mode():
        for fn, flops in tasks:
            fn()
            deadline = time.perf_counter() + seconds / len(tasks)
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                fn()
                best = max(best, flops / (time.perf_counter() - start) / 1e9)
    return best


def benchmark(
    name: str,
    *,
    size: tuple[int, int],
    batch: int = 1,
    backend: str = "auto",
    channels_last: bool = False,
    bf16: bool = False,
    num_classes: int = 21,
    repeats: int = 10,
    warmup: int = 2,
) -> dict[str, float | str]:
    """Params, GFLOPs, latency (median, p90), images/s, achieved GFLOP/s and its share of the peak.

    The first call (export, compilation, quantization, buffer allocation) and then ``warmup`` more
    batches are untimed; ``compile_s`` is the first call's seconds.
    ``backend`` is any of :data:`~semseg.inference.backends.BENCHMARK_ENGINES`; ``auto`` resolves as
    for a checkpoint on the CPU, and the engine that ran is in the result.
    """
    if backend not in BENCHMARK_ENGINES:
        raise ValueError(f"backend must be one of {', '.join(BENCHMARK_ENGINES)}, not {backend!r}")
    if channels_last and backend in ("auto", "torch"):
        backend = "torch-channels-last"
    elif bf16 and backend == "auto":  # a torch-only option: auto means torch then
        backend = "torch"
    if backend in BACKENDS:
        backend = choose_backend(None, backend, "cpu")
    cost = model_cost(name, num_classes=num_classes, size=size)
    model = create_model(name, num_classes=num_classes).eval()
    x = torch.randn(batch, 3, *size)
    start = time.perf_counter()
    run = _runner(model, x, backend=backend, channels_last=channels_last, bf16=bf16)
    run()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        run()
    latencies = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        latencies.append(time.perf_counter() - start)
    median = statistics.median(latencies)
    p90 = sorted(latencies)[min(len(latencies) - 1, int(0.9 * len(latencies)))]
    achieved = cost["gflops"] * batch / median
    peak = measure_peak_gflops(torch.bfloat16 if bf16 else torch.float32)
    return {
        "model": name, "size": f"{size[0]}x{size[1]}", "batch": batch, "backend": backend,
        "params_M": cost["params"] / 1e6, "gflops": cost["gflops"], "latency_ms_median": median * 1e3,
        "latency_ms_p90": p90 * 1e3, "images_per_s": batch / median, "achieved_gflops_per_s": achieved,
        "peak_gflops_per_s": peak, "share_of_peak": achieved / peak, "compile_s": compile_s,
    }  # fmt: skip


def _runner(model, x: torch.Tensor, *, backend: str, channels_last: bool, bf16: bool) -> Callable[[], object]:
    if not backend.startswith("torch"):
        if channels_last or bf16:
            raise ValueError("--channels-last and --bf16 apply to the torch backends only")
        return _exported_runner(model, x, backend)
    if backend == "torch-compile" and channels_last:
        raise ValueError("--channels-last does not apply to torch-compile, which compiles the NCHW model")
    if backend == "torch-channels-last":
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    if backend == "torch-compile":
        model = torch.compile(model)

    def run() -> object:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model(x)

    return run


def _exported_runner(model, x: torch.Tensor, backend: str) -> Callable[[], object]:
    """``model`` exported to ONNX at ``x``'s shape and run by ONNX Runtime or OpenVINO, each configured
    as the Predictor configures it (threads, no spinning, fp32; int8 as `semseg export` quantizes)."""
    import warnings

    from semseg.inference.quantize import quantize_openvino

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"])
        if backend.startswith("openvino"):
            model = str(path)
            if backend == "openvino-int8":
                generator = torch.Generator().manual_seed(0)
                calibration = [torch.randn(x.shape, generator=generator).numpy() for _ in range(INT8_CALIBRATION_BATCHES)]
                model = quantize_openvino(model, calibration)
            compiled, array = compile_openvino(model), x.numpy()
            return lambda: compiled(array)
        session = onnxruntime_session(path)
    feed = {"image": x.numpy()}
    return lambda: session.run(None, feed)
