"""``semseg serve``: a thin FastAPI layer over :class:`~semseg.inference.predictor.Predictor`.

No model logic lives here: requests are read (with size limits), decoded (with a pixel
limit), handed to the predictor, and the label map is rendered as the client asked.

Concurrency: each server process runs one inference at a time, in a worker thread
(``anyio`` capacity limiter of 1), so the event loop keeps answering ``/healthz`` while a
request is being segmented and two requests never share the model's threads. A request is
decoded only once it holds the model, so waiting ones cost their compressed bytes, not their
pixels; requests beyond ``max_queue`` waiting ones get 503 at once. Large images run in
tiles (the Predictor's ``max_whole_pixels``), so one request's memory stays bounded too.
Scale out with ``--workers N``: N processes, each with its own copy of the model.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Literal, TypeVar

import anyio
import numpy as np
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from python_multipart.multipart import parse_options_header
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect

from semseg import __version__
from semseg.inference.predictor import Predictor
from semseg.serving.codec import ApiError, class_summary, decode_image, png_bytes, rle_encode
from semseg.visualize import cutout, overlay, palette_image

SETTINGS_ENV = "SEMSEG_SERVE_SETTINGS"  # how `--workers N` hands the settings to each worker process
RAW_TYPES = ("image/", "application/octet-stream")
log = logging.getLogger("uvicorn.error")  # uvicorn's own log, so its --log-level and format apply
T = TypeVar("T")


@dataclass(frozen=True)
class ServeSettings:
    """What a server process needs: the model file and the limits it enforces."""

    checkpoint: str
    backend: str = "auto"  # one of semseg.inference.backends.BACKENDS; auto: by file type and what is installed
    device: str = "cpu"
    threads: int | None = None  # inference threads per process (every backend); None keeps torch's default
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 25_000_000
    max_queue: int = 32
    body_timeout: float = 30.0  # seconds to receive a whole request body before 408


def load_predictor(settings: ServeSettings) -> Predictor:
    """The predictor for ``settings.checkpoint`` on ``settings.backend`` (ONNX Runtime and OpenVINO
    take torch's thread count, so ``threads`` applies to every backend)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    return Predictor.from_checkpoint(settings.checkpoint, device=settings.device, backend=settings.backend)


def model_description(predictor: Predictor, settings: ServeSettings) -> dict:
    """What ``GET /v1/model`` returns: architecture, classes, palette, normalisation and limits."""
    config = dict(predictor.metadata.get("model_config", {}))
    return {
        "architecture": config.pop("name", None),
        "options": config,
        "classes": predictor.classes,
        "palette": [list(c) for c in predictor.palette],
        "normalization": {"mean": predictor.mean.flatten().tolist(), "std": predictor.std.flatten().tolist(),
                          "scale": "pixel values / 255, then (x - mean) / std"},  # fmt: skip
        "input_scale": predictor.input_scale,  # the model runs on uploads resized by this, labels at their size
        "file": os.path.basename(settings.checkpoint),
        "backend": predictor.backend,
        "trained_with": predictor.metadata.get("semseg_version"),
        "server_version": __version__,
        "limits": {"max_upload_bytes": settings.max_upload_bytes, "max_pixels": settings.max_pixels},
    }


class InferenceRunner:
    """Runs jobs on the model off the event loop, one at a time, with at most ``max_queue`` waiting."""

    def __init__(self, max_queue: int) -> None:
        self.max_queue = max_queue
        self.pending = 0  # admitted: running or waiting; only touched from the event loop thread, so no lock
        self.limiter: anyio.CapacityLimiter | None = None  # made inside the running loop (lifespan)

    async def __call__(self, job: Callable[[], T]) -> T:
        """``job()`` in a worker thread once the model is free; 503 when ``max_queue`` requests already wait.

        The first admitted request holds the model, so ``pending - 1`` are waiting.
        """
        if self.pending - 1 >= self.max_queue:
            raise ApiError(503, "busy", f"{self.pending - 1} requests are already waiting for the one being "
                           "segmented (--max-queue); retry shortly")  # fmt: skip
        self.pending += 1
        try:
            return await anyio.to_thread.run_sync(job, limiter=self.limiter)
        finally:
            self.pending -= 1


class ClientGone(Exception):
    """The client closed the connection before its request body arrived; there is nobody to answer."""


async def read_image_bytes(request: Request, limit: int, timeout: float) -> bytes:
    """The uploaded image: the ``image`` field of a multipart form, or the raw body; at most ``limit`` bytes,
    received within ``timeout`` seconds (408 otherwise, so a stalled client cannot hold a socket forever)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"the request body is {int(declared):,} bytes; the limit is "
                       f"{limit:,} bytes (semseg serve --max-upload-mb)")  # fmt: skip
    body = bytearray()
    try:
        with anyio.fail_after(timeout):
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise ApiError(413, "body_too_large", f"the request body exceeds the limit of {limit:,} bytes")
    except TimeoutError:
        raise ApiError(408, "body_timeout", f"the request body did not arrive within {timeout:g} s (semseg serve "
                       f"--body-timeout); {len(body):,} bytes came") from None  # fmt: skip
    except ClientDisconnect:
        raise ClientGone(f"client {_peer(request)} disconnected after {len(body):,} of {declared or '?'} "
                         "body bytes") from None  # fmt: skip
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return await _multipart_image(request, bytes(body))
    if kind.startswith(RAW_TYPES):
        return bytes(body)
    raise ApiError(415, "unsupported_media_type",
                   f"Content-Type {kind or '(none)'} is not accepted: send multipart/form-data with the file in "
                   "the field 'image', or the raw image bytes as image/png, image/jpeg, ...")  # fmt: skip


def _peer(request: Request) -> str:
    """``host:port`` of the client, for log lines."""
    return f"{request.client.host}:{request.client.port}" if request.client else "(unknown)"


async def _multipart_image(request: Request, body: bytes) -> bytes:
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    _, options = parse_options_header(request.headers["content-type"])
    boundary = options.get(b"boundary")
    if boundary and b"--" + boundary + b"--" not in body:  # the parser would just drop the unfinished part
        raise ApiError(400, "bad_multipart", "the multipart body ends before its closing boundary: the upload was "
                       "cut short")  # fmt: skip
    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except (MultiPartException, StarletteHTTPException) as exc:
        raise ApiError(400, "bad_multipart", f"the multipart body could not be parsed: {getattr(exc, 'detail', exc)}")
    try:
        fields = form.getlist("image")
        if len(fields) > 1:  # which one the client meant is a guess: say so rather than take the last
            raise ApiError(422, "duplicate_field", f"the multipart form has {len(fields)} fields named 'image'; "
                           "send one image a request")  # fmt: skip
        field = fields[0] if fields else None
        if field is None:
            sent = ", ".join(form.keys()) or "none"
            raise ApiError(422, "missing_field", f"the multipart form has no field 'image' (fields sent: {sent})")
        if isinstance(field, str):
            raise ApiError(422, "not_a_file", "the multipart field 'image' must be a file upload, not text")
        return await field.read()
    finally:
        await form.close()


def render(mask: np.ndarray, rgb: np.ndarray, predictor: Predictor, output: str, keep: list[int], rle: bool,
           alpha: float) -> Response:  # fmt: skip
    """The response body the client asked for: a PNG (mask, overlay, cut-out) or JSON."""
    if output == "json":
        payload = {"height": int(mask.shape[0]), "width": int(mask.shape[1]),
                   "classes": class_summary(mask, predictor.classes, predictor.palette)}  # fmt: skip
        if rle:
            payload["rle"] = rle_encode(mask)
        return JSONResponse(payload)
    if output == "mask":
        picture = palette_image(mask, predictor.palette)
    elif output == "overlay":
        picture = overlay(rgb, mask, predictor.palette, alpha=alpha)
    else:
        picture = cutout(rgb, mask, keep)
    return Response(png_bytes(picture), media_type="image/png")


def cutout_ids(text: str | None, classes: list[str]) -> list[int]:
    """Class ids from a comma-separated list of class names or ids."""
    if not text:
        raise ApiError(422, "missing_classes", "output=cutout needs classes=NAME[,NAME...]; "
                       f"this model's classes: {', '.join(classes)}")  # fmt: skip
    ids = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        if item in classes:
            ids.append(classes.index(item))
        elif item.isascii() and item.isdigit() and int(item) < len(classes):
            ids.append(int(item))
        else:
            raise ApiError(422, "unknown_class", f"unknown class {item!r}; this model's classes: {', '.join(classes)}")
    if not ids:
        raise ApiError(422, "missing_classes", f"classes={text!r} names no class; this model's classes: "
                       f"{', '.join(classes)}")  # fmt: skip
    return ids


SEGMENT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["image"],
                           "properties": {"image": {"type": "string", "format": "binary"}}}},  # fmt: skip
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    "responses": {"200": {"content": {"image/png": {}, "application/json": {}}},
                  "400": {"description": "undecodable image, or a malformed or truncated form"},
                  "408": {"description": "the body did not arrive within the timeout"},
                  "413": {"description": "body or pixel count over the limit"},
                  "415": {"description": "unsupported Content-Type"},
                  "422": {"description": "bad parameter or missing field"},
                  "503": {"description": "too many requests waiting"}},  # fmt: skip
}


def create_app(predictor: Predictor, settings: ServeSettings) -> FastAPI:
    """The ASGI app serving ``predictor`` under ``settings``' limits."""
    if predictor.bands is not None:
        raise ValueError(f"{settings.checkpoint} reads {predictor.bands} band(s) at full precision; the server decodes "
                         "uploads as RGB images. Use `semseg predict` (or the Predictor) for such models")  # fmt: skip
    runner = InferenceRunner(settings.max_queue)
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runner.limiter = anyio.CapacityLimiter(1)
        await runner(lambda: predictor(np.zeros((64, 64, 3), dtype=np.uint8)))  # warm-up: first calls allocate and plan
        state["ready"] = True
        yield
        state["ready"] = False

    app = FastAPI(title="semseg", version=__version__, lifespan=lifespan,
                  description="Semantic segmentation over HTTP: label masks, overlays, cut-outs and class statistics.")  # fmt: skip
    _install_error_handlers(app)
    description = model_description(predictor, settings)
    page = resources.files("semseg.serving").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz")
    async def healthz() -> dict:
        """The process is up and answering."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """The model is loaded and warmed up (503 while starting or shutting down)."""
        if not state["ready"]:
            return JSONResponse(ApiError(503, "not_ready", "the model is not ready yet").body(), status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/v1/model")
    async def model() -> dict:
        """Architecture, options, classes, palette, input normalisation and request limits."""
        return description

    @app.post("/v1/segment", openapi_extra=SEGMENT_BODY)
    async def segment(
        request: Request,
        output: Literal["json", "mask", "overlay", "cutout"] = "json",
        classes: str | None = Query(None, description="cut-out classes, comma-separated names or ids"),
        rle: bool = Query(False, description="json only: add the label map, run-length encoded"),
        alpha: float = Query(0.5, ge=0, le=1, description="overlay only: the class colour's share"),
    ) -> Response:
        """Segment one image: a palette PNG mask, a colour overlay, an RGBA cut-out, or JSON statistics."""
        keep = cutout_ids(classes, predictor.classes) if output == "cutout" else []
        data = await read_image_bytes(request, settings.max_upload_bytes, settings.body_timeout)

        def decode_and_segment() -> tuple[np.ndarray, np.ndarray, float]:
            rgb = decode_image(data, max_pixels=settings.max_pixels)
            start = time.perf_counter()
            return rgb, predictor(rgb), (time.perf_counter() - start) * 1000

        rgb, mask, elapsed_ms = await runner(decode_and_segment)
        response = await anyio.to_thread.run_sync(lambda: render(mask, rgb, predictor, output, keep, rle, alpha))
        response.headers["X-Inference-Ms"] = f"{elapsed_ms:.1f}"
        return response

    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Every refusal is JSON: ``{"error": {"status", "code", "message"}}``."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        # after a 408 the rest of the body may still come: close rather than read it as the next request
        headers = {"connection": "close"} if exc.status == 408 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(ClientGone)
    async def client_gone(_: Request, exc: ClientGone) -> Response:
        log.info("%s", exc)  # one line: a client hanging up is not the server's error
        return Response(status_code=400)  # never delivered; the ASGI app must still answer

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{' '.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse(ApiError(422, "invalid_parameter", problems).body(), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(ApiError(exc.status_code, code, str(exc.detail)).body(), status_code=exc.status_code,
                            headers=exc.headers)  # fmt: skip


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory`` worker processes: settings come from ``$SEMSEG_SERVE_SETTINGS``."""
    settings = ServeSettings(**json.loads(os.environ[SETTINGS_ENV]))
    return create_app(load_predictor(settings), settings)


def serve(settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log_level: str = "info") -> None:  # fmt: skip
    """Load the model (failing fast on a bad file) and serve it until interrupted."""
    import uvicorn

    predictor = load_predictor(settings)
    print(f"semseg serve: {settings.checkpoint} runs on {predictor.backend}", flush=True)
    if workers == 1:
        uvicorn.run(create_app(predictor, settings), host=host, port=port, log_level=log_level)
        return
    os.environ[SETTINGS_ENV] = json.dumps(asdict(settings))
    uvicorn.run("semseg.serving.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level)  # fmt: skip
