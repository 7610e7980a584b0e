"""Inference engines behind one interface, and the one function that chooses among them.

To the :class:`~semseg.inference.predictor.Predictor` every engine looks the same: a callable
from a ``(N, 3, H, W)`` float32 tensor to ``(N, C, H, W)`` logits, carrying the model file's
``metadata`` (classes, palette, normalisation, ``model_config``) and its ``engine`` name:

- ``torch``: the model rebuilt from a ``.safetensors`` checkpoint, run eagerly (NCHW).
- ``torch-channels-last``: the same in channels-last memory format, the layout oneDNN's CPU
  convolutions (and cuDNN's tensor cores) prefer: 13-18% faster than NCHW on CPU in issue 13.
- ``onnxruntime``: an ``.onnx`` file written by ``semseg export``.
- ``openvino``: an OpenVINO IR ``.xml`` (``semseg export --format openvino``), an ``.onnx``
  file, or a ``.safetensors`` checkpoint converted once and cached (see :func:`cached_openvino`).
  The fastest CPU engine measured here (docs/benchmarks.md).

:func:`choose_backend` turns ``auto`` (the default of every command) into one of these, by
the file's type, the device and what is installed.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from semseg.engine.checkpoint import CheckpointError, check_metadata, load_model, read_metadata, sha256
from semseg.pretrained import resolve_checkpoint

ENGINES = ("torch", "torch-channels-last", "onnxruntime", "openvino")
BACKENDS = ("auto", *ENGINES)
# `semseg benchmark` also measures torch.compile (one compile per input shape, minutes for the large
# models, so no Predictor default) and OpenVINO int8 (a model of its own, written by `semseg export
# --format openvino --int8 IMAGES`; benchmarked calibrated on random inputs: the same kernels, so the
# same speed, not the same accuracy).
BENCHMARK_ENGINES = (*BACKENDS, "torch-compile", "openvino-int8")
# What `semseg export` stores in a model file besides the weights, and the part a predictor needs.
META_KEYS = ("classes", "palette", "mean", "std", "bands", "infer_scale", "model_config")
REQUIRED_META = ("classes", "palette", "mean", "std")
INSTALL_HINT = {"onnxruntime": "pip install onnxruntime", "openvino": 'pip install "semseg[openvino]"'}
# What each engine runs: a semseg checkpoint, an ONNX file, an OpenVINO IR file, or a torch model in
# memory (which `semseg benchmark` exports for the engines that need a file).
RUNS = {"torch": {"checkpoint", "module"}, "torch-channels-last": {"checkpoint", "module"},
        "onnxruntime": {"onnx", "module"}, "openvino": {"checkpoint", "onnx", "openvino", "module"}}  # fmt: skip


def installed(engine: str) -> bool:
    """Whether the package behind ``engine`` can be imported (torch always can)."""
    return engine.startswith("torch") or importlib.util.find_spec(engine) is not None


def file_kind(path: str | Path | None) -> str:
    """``onnx`` for ``.onnx``, ``openvino`` for ``.xml``, else ``checkpoint``; ``module`` for ``None``."""
    if path is None:
        return "module"
    return {".onnx": "onnx", ".xml": "openvino"}.get(Path(path).suffix.lower(), "checkpoint")


def choose_backend(path: str | Path | None, backend: str = "auto", device: str | torch.device = "cpu") -> str:
    """The engine that runs the model file ``path`` (``None``: a torch model in memory) on ``device``.

    ``auto``: an ``.xml`` runs on OpenVINO; an ``.onnx`` on OpenVINO if installed, else ONNX
    Runtime; a checkpoint on a CPU on OpenVINO if installed (converted once, then cached), else
    torch channels-last; on CUDA, torch channels-last. An explicit ``backend`` is checked
    against the file, the device and the installed packages; ``ValueError`` says what is wrong.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    kind, cpu = file_kind(path), torch.device(device).type == "cpu"
    name = Path(path).name if path is not None else "a torch model"
    if backend == "auto":
        if kind in ("checkpoint", "module"):
            backend = "openvino" if cpu and installed("openvino") else "torch-channels-last"
        elif kind == "onnx":
            backend = "openvino" if installed("openvino") or not installed("onnxruntime") else "onnxruntime"
        else:
            backend = "openvino"
    if kind not in RUNS[backend]:
        hint = "export it first with `semseg export`" if kind == "checkpoint" else "pass --backend auto"
        raise ValueError(f"the {backend} backend cannot run {name} (a {kind} file); {hint}")
    if not cpu and not backend.startswith("torch"):
        raise ValueError(f"the {backend} backend runs on the CPU here, not {device}; use --device cpu or a "
                         "torch backend")  # fmt: skip
    if not installed(backend):
        raise ValueError(f"running {name} needs {backend}, which is not installed: {INSTALL_HINT[backend]}")
    return backend


class Backend:
    """Common ground of the engines: ``engine``, ``metadata``, and the ``to`` / ``eval`` a module has."""

    engine: str
    metadata: dict[str, Any]

    def to(self, device: torch.device | str) -> Backend:
        return self

    def eval(self) -> Backend:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def load_backend(path: str | Path, backend: str = "auto", device: str | torch.device = "cpu") -> Backend:
    """The engine :func:`choose_backend` picks for ``path`` (or a shipped model's name), with the model loaded into it."""
    path = resolve_checkpoint(path)
    engine = choose_backend(path, backend, device)
    kind = file_kind(path)
    if kind != "checkpoint":
        return OnnxRuntimeModel(path) if engine == "onnxruntime" else OpenVinoModel(path)
    # Checked first: a file that is no checkpoint, or lacks what prediction needs, is named before
    # anything is hashed, converted or built from it.
    meta = read_metadata(path)
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"{path} lacks what prediction needs in its metadata ({', '.join(missing)}); semseg train "
                         "writes them, or pass them to save_weights (classes=, palette=, mean=, std=)")  # fmt: skip
    if engine == "openvino":  # the converted file keeps only META_KEYS; the checkpoint has more
        return OpenVinoModel(cached_openvino(path), metadata=meta)
    module, meta = load_model(path)
    return TorchModel(module, meta, channels_last=engine == "torch-channels-last")


class TorchModel(Backend):
    """A PyTorch module, optionally in channels-last memory format (weights and inputs alike)."""

    def __init__(self, module: nn.Module, metadata: dict[str, Any], *, channels_last: bool = False) -> None:
        self.channels_last = channels_last
        self.module = module.to(memory_format=torch.channels_last) if channels_last else module
        self.metadata = metadata
        self.engine = "torch-channels-last" if channels_last else "torch"

    def to(self, device: torch.device | str) -> TorchModel:
        self.module.to(device)  # keeps each parameter's memory format
        return self

    def eval(self) -> TorchModel:
        self.module.eval()
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.contiguous(memory_format=torch.channels_last) if self.channels_last else x)


def onnxruntime_session(path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)) -> Any:
    """An ONNX Runtime session with torch's thread count and no spin-waiting.

    ONNX Runtime's threads spin between operators by default; on a machine another process
    keeps busy, spinning threads take the CPU from the working ones, as OpenMP's did for torch
    (README, "Threads on a busy machine").
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=list(providers))


class OnnxRuntimeModel(Backend):
    """An ONNX file written by ``semseg export``, run by ONNX Runtime."""

    engine = "onnxruntime"

    def __init__(self, path: str | Path, providers: Sequence[str] = ("CPUExecutionProvider",)) -> None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such ONNX file: {path}")
        try:
            self.session = onnxruntime_session(path, providers)
        except Exception as exc:  # onnxruntime raises its own unrelated classes (InvalidProtobuf, Fail, ...)
            raise ValueError(f"{path} is not a model ONNX Runtime can load ({exc}); "
                             "write one with `semseg export --format onnx`") from None  # fmt: skip
        props = self.session.get_modelmeta().custom_metadata_map
        found = {k.removeprefix("semseg."): v for k, v in props.items() if k.startswith("semseg.")}
        shape = self.session.get_outputs()[0].shape
        self.metadata = exported_metadata(found, path, shape[1] if len(shape) >= 2 else None)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"image": x.detach().cpu().numpy()})[0])


_CORE_LOCK = threading.Lock()


def openvino_core() -> Any:
    """The process's one ``openvino.Core``, through which semseg reads and compiles every OpenVINO model.

    Each Core loads its own CPU plugin, and the plugin (OpenVINO 2025-2026) swaps the calling
    thread's alternate signal stack for one of its own when it loads and swaps the previous one
    back when it is freed. Two Cores freed in the order they were made (two Predictors dropped
    first-made first) leave the thread on the first one's stack, already unmapped: the next signal
    Python handles there (Ctrl-C, a DataLoader worker's exit) kills the process with SIGSEGV. One
    Core kept for the life of the process never unwinds out of order, and loads the plugin once.
    (NNCF's int8 quantization makes and frees Cores of its own, in order, inside one call.)
    """
    with _CORE_LOCK:  # two threads' first calls must not make two Cores
        return _core()


@functools.cache
def _core() -> Any:
    import openvino as ov

    return ov.Core()


def compile_openvino(model: Any) -> Any:
    """``model`` (an ``openvino.Model`` or a file OpenVINO reads) compiled for this CPU.

    fp32 throughout: on CPUs with bfloat16 units (AVX-512 BF16, AMX) OpenVINO would otherwise
    run in bfloat16, moving logits by ~1e-2 and flipping labels. Latency hint (one image at a
    time) and torch's thread count, so ``--threads`` means the same for every engine.
    """
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
              "INFERENCE_NUM_THREADS": torch.get_num_threads()}  # fmt: skip
    return openvino_core().compile_model(model, "CPU", config)


class OpenVinoModel(Backend):
    """An OpenVINO IR (``.xml`` + ``.bin``) or ONNX file, run by OpenVINO on the CPU.

    One compiled model runs one request at a time: call it from one thread (as the Predictor
    and ``semseg serve``'s single inference thread do).
    """

    engine = "openvino"

    def __init__(self, path: str | Path, *, metadata: dict[str, Any] | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such {'ONNX' if path.suffix.lower() == '.onnx' else 'OpenVINO'} file: {path}")
        try:
            model = openvino_core().read_model(str(path))
        except RuntimeError as exc:
            raise ValueError(f"{path} is not a model OpenVINO can read ({openvino_reason(exc)}); "
                             "write one with `semseg export --format openvino`") from None  # fmt: skip
        self.metadata = openvino_metadata(model, path) if metadata is None else metadata
        self.compiled = compile_openvino(model)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().cpu().contiguous().numpy()
        return torch.from_numpy(self.compiled(x)[0])  # outputs are copied out of the request (share_outputs=False)


def openvino_reason(exc: BaseException) -> str:
    """OpenVINO's own words for an error: its messages open with the C++ source lines that raised
    ("Exception from src/...", "Check '...' failed at ..."); the reason ("bin file cannot be found!") follows."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return (said or lines or [type(exc).__name__])[0]


def openvino_metadata(model: Any, path: str | Path) -> dict[str, Any]:
    """semseg's metadata in an ``openvino.Model``: the rt_info entries ``semseg/KEY`` that ``semseg
    export --format openvino`` writes (JSON strings), or, for an ``.onnx`` file, its ``semseg.KEY``
    metadata_props, which OpenVINO's ONNX reader keeps under rt_info ``framework``."""
    found = {}
    for key in META_KEYS:
        for where in (["semseg", key], ["framework", f"semseg.{key}"]):
            if model.has_rt_info(where):
                found[key] = model.get_rt_info(where).astype(str)
                break
    shape = model.output(0).get_partial_shape()
    ranked = shape.rank.is_static and shape.rank.get_length() >= 2 and shape[1].is_static
    return exported_metadata(found, path, shape[1].get_length() if ranked else None)


def exported_metadata(raw: dict[str, str], path: str | Path, outputs: Any) -> dict[str, Any]:
    """The metadata ``semseg export`` stored in a model file (JSON strings by key), decoded and checked
    as a checkpoint's is, and its classes against the ``outputs`` channels of the graph itself (when
    the graph says: an int)."""
    missing = [k for k in REQUIRED_META if k not in raw]
    if missing:
        raise ValueError(f"{path} lacks semseg metadata ({', '.join(missing)}); export it with `semseg export`")
    try:
        meta = {key: json.loads(value) for key, value in raw.items()}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: semseg metadata is not valid JSON ({exc}); export the model again") from None
    classes = meta["classes"]
    named = len(classes) if isinstance(classes, list) and classes else 1  # for files without model_config
    check_metadata({"model_config": {"name": "exported", "num_classes": named}, **meta}, path)
    if isinstance(outputs, int) and len(classes) != outputs:
        raise CheckpointError(f"{path}: metadata classes has {len(classes)} names for a model with {outputs} "
                              "outputs; the file is damaged or was not written by semseg")  # fmt: skip
    return meta


def cache_dir() -> Path:
    """Where converted models are kept: ``$SEMSEG_CACHE_DIR``, else ``$XDG_CACHE_HOME/semseg``,
    else ``~/.cache/semseg``."""
    if os.environ.get("SEMSEG_CACHE_DIR"):
        return Path(os.environ["SEMSEG_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "semseg"


def cached_openvino(checkpoint: str | Path) -> Path:
    """The OpenVINO IR of ``checkpoint``: converted (and parity-checked) on first use, read back after.

    The cache entry is named by the checkpoint's SHA-256 and the OpenVINO version, so a
    retrained file or an upgraded OpenVINO converts anew, and a renamed or copied one does not.
    It is written beside its final place and renamed in, so concurrent processes (``serve
    --workers``) never read half a file. Where :func:`cache_dir` cannot be written, the cache
    lives in the system's temporary folder instead.
    """
    import openvino as ov

    from semseg.inference.export import export

    name = f"{sha256(checkpoint)}-openvino-{ov.__version__.split('-')[0]}.xml"
    for folder in (cache_dir() / "openvino", Path(tempfile.gettempdir()) / f"semseg-{os.getuid()}" / "openvino"):
        if (folder / name).is_file() and _cache_stamp(folder / name) == _stored_stamp(folder / name):
            return folder / name  # else damaged, or from a version that stored no stamp: converted anew, over it
        try:
            folder.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(dir=folder, prefix=".converting-"))
            break
        except OSError:
            continue
    else:
        raise ValueError(f"no writable folder to cache the OpenVINO model in (tried {cache_dir()}); "
                         "set SEMSEG_CACHE_DIR or pass --backend torch")  # fmt: skip
    target, fresh = folder / name, scratch / name
    try:
        export(checkpoint, fresh, fmt="openvino", check_sizes=((64, 64),))
        for suffix in (".bin", ".xml"):  # the .xml last: it marks the entry done
            os.replace(fresh.with_suffix(suffix), target.with_suffix(suffix))
        stamp = fresh.with_suffix(".stamp")  # of the files in place: a rename keeps size and mtime
        stamp.write_text(_cache_stamp(target))
        os.replace(stamp, target.with_suffix(".stamp"))
    finally:
        for leftover in scratch.iterdir():
            leftover.unlink()
        scratch.rmdir()
    return target


def _cache_stamp(xml: Path) -> str:
    """Size and modification time of a cached IR's ``.xml`` and ``.bin``, as written: every later command
    re-reads the entry, so one damaged since (cut short, overwritten) is converted anew, not run. Cheaper
    than hashing (VGG16-FCN-8s' ``.bin`` is 0.5 GB) and enough for a cache semseg alone writes."""
    try:
        return " ".join(f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (xml, xml.with_suffix(".bin")))
    except OSError:
        return "unreadable"


def _stored_stamp(xml: Path) -> str | None:
    try:
        return xml.with_suffix(".stamp").read_text().strip()
    except OSError:
        return None
