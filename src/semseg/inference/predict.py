"""``semseg predict``: segment files, folders and globs of images and videos.

Images give palette masks, overlays, cut-outs and (on request) class probabilities;
videos give one overlay video each, written frame by frame at the input's FPS and size.
GeoTIFFs, and TIFFs over ``max_pixels``, are streamed window by window to label GeoTIFFs
(:mod:`semseg.inference.raster`), never held whole.
"""

from __future__ import annotations

import glob
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semseg.data.base import ARRAY_SUFFIX, IMAGE_SUFFIXES
from semseg.inference.pipeline import run_pipeline
from semseg.inference.predictor import ImageTooLarge, Predictor
from semseg.inference.raster import RasterError, is_streamed, merge_raster_parts, predict_raster
from semseg.paths import check_folder, check_not_folders
from semseg.progress import progress_bar
from semseg.visualize import cutout, overlay, palette_image

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
VIDEO_HINT = 'reading videos needs OpenCV: pip install "semseg[video]"'
OUTPUT_FOLDERS = ("masks", "overlays", "cutouts", "probs", "videos")  # what predict writes into, under --out
MAX_PIXELS = 100_000_000  # the default --max-pixels: 10,000 x 10,000 (larger images are refused from their header)


def expand_inputs(inputs: Sequence[str], *, arrays: bool = False) -> tuple[list[Path], list[str]]:
    """Image and video files named directly, inside folders (not recursive) or matched by globs (with
    ``arrays``, for a model of full-precision bands, ``.npy`` files too); plus the inputs that matched nothing."""
    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES + ((ARRAY_SUFFIX,) if arrays else ())
    files, missing = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes)
        elif path.exists():
            found = [path]
        else:
            found = sorted(Path(p) for p in glob.glob(item) if Path(p).suffix.lower() in suffixes)
        if not found:
            missing.append(item)
        files.extend(found)
    return list(dict.fromkeys(files)), missing


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def output_names(files: Sequence[Path]) -> dict[Path, str]:
    """Output file stem for each input: its own stem, with ``-2``, ``-3``... where stems repeat,
    so that ``a/0.png`` and ``b/0.png`` never overwrite each other's results."""
    names, used = {}, set()
    for path in files:
        name, n = path.stem, 1
        while name in used:
            n += 1
            name = f"{path.stem}-{n}"
        used.add(name)
        names[path] = name
    return names


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str],
    out: str | Path,
    *,
    overlays: bool = True,
    cutout_classes: Sequence[str] = (),
    probs: bool = False,
    max_pixels: int = MAX_PIXELS,
    progress: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """Segment every input; returns a summary. A file that cannot be read, declares more than
    ``max_pixels`` pixels (a TIFF is then streamed instead), or runs out of memory is reported in
    ``failed`` and skipped.

    ``overlays``, ``cutout_classes`` and ``probs`` apply to images; a video always gives its
    overlay video, since that is its only output.
    """
    out = Path(out)
    unknown = [c for c in cutout_classes if c not in predictor.classes]
    if unknown:
        raise ValueError(f"--cutout class(es) {', '.join(unknown)} not in the model's classes: {', '.join(predictor.classes)}")
    keep = [predictor.classes.index(c) for c in cutout_classes]
    if predictor.bands is not None and keep:
        raise ValueError(f"--cutout needs an RGB image to cut from; this model reads {predictor.bands} band(s) at "
                         "full precision, so it writes masks (and --probs) only")  # fmt: skip
    files, missing = expand_inputs(inputs, arrays=predictor.bands is not None)
    used = ["masks", *(["overlays"] if overlays else []), *(["cutouts"] if keep else []), *(["probs"] if probs else []),
            *(["videos"] if any(is_video(p) for p in files) else [])]  # fmt: skip
    for folder in used:  # --out and the folders under it: one line now, not the same failure for every input later
        check_folder(out / folder, f"--out {out}")
    folders = {(out / folder).resolve() for folder in OUTPUT_FOLDERS}
    inside = next((p for p in files if {p.parent.resolve(), p.resolve().parent} & folders), None)  # link or target
    if inside is not None:  # checked before anything is written: an input is never overwritten or mixed with outputs
        raise ValueError(f"refusing to write outputs into {inside.parent}, which holds the input {inside}; "
                         "choose another --out")  # fmt: skip
    failed = {} if rank else {item: "no such file, folder or matching image or video" for item in missing}
    # Output names over every input, so that each process names its share as one process would.
    names = output_names([p for p in files if not is_video(p)])
    video_names = output_names([p for p in files if is_video(p)])
    to_merge: list[tuple[Path, list[tuple[Path, Path | None]]]] = []
    if world_size > 1:  # a streamed raster is split among all processes by rows; other inputs go whole
        rasters = [p for p in files if not is_video(p) and _streams(p, max_pixels)]
        for path in progress_bar(rasters, desc="rasters", enabled=progress):
            parts, why = _predict_raster_part(predictor, path, out, names[path], probs=probs, rank=rank,
                                              world_size=world_size)  # fmt: skip
            if why is None:
                to_merge.append((path, parts))
            elif rank == 0:
                failed[str(path)] = why
        files = [p for p in files if p not in rasters]
    files = files[rank::world_size]  # under torchrun each process takes every world_size-th input
    try:
        summary = _predict_share(predictor, files, out, failed, names, video_names, overlays=overlays, keep=keep,
                                 probs=probs, max_pixels=max_pixels, progress=progress)  # fmt: skip
        error = None
    except Exception as exc:
        if world_size == 1:
            raise
        # Every process must still reach the gather in _merged, or the others would wait for it.
        summary, error = {"images": 0, "outputs": {}, "videos": {}, "failed": {}}, exc
    if world_size > 1:
        summary = _merged(summary, world_size, error)
    if rank == 0 and to_merge:  # after the last collective: the others need not wait for the merges
        merged = {}
        for path, parts in to_merge:
            name = names[path]
            try:
                merge_raster_parts(predictor, path, parts, out / "masks" / f"{name}.tif",
                                   out / "probs" / f"{name}.tif" if probs else None)  # fmt: skip
                merged[str(path)] = f"{name}.tif"
            except Exception as exc:  # noqa: BLE001 -- reported like any input that failed
                summary["failed"][str(path)] = f"merging the processes' parts failed: {type(exc).__name__}: {exc}"
        summary["outputs"] = {**merged, **summary["outputs"]}
        summary["images"] += len(merged)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _predict_share(predictor: Predictor, files: Sequence[Path], out: Path, failed: dict[str, str],
                   names: dict[Path, str], video_names: dict[Path, str], *, overlays: bool, keep: Sequence[int],
                   probs: bool, max_pixels: int, progress: bool) -> dict:  # fmt: skip
    """Segment ``files`` (this process's share of the inputs) and return their summary."""
    images = [p for p in files if not is_video(p)]
    written = {}
    for path in progress_bar(images, desc="predict", enabled=progress):
        try:
            if is_streamed(path, max_pixels):
                _predict_raster(predictor, path, out, names[path], probs=probs)
                written[str(path)] = f"{names[path]}.tif"
                continue
        except (ImportError, RasterError) as exc:
            failed[str(path)] = str(exc)
            continue
        except IsADirectoryError as exc:
            failed[str(path)] = _taken(exc)
            continue
        try:
            image = predictor.read(path, max_pixels=max_pixels)
        except ImageTooLarge as exc:
            failed[str(path)] = f"{exc} (--max-pixels)"
            continue
        except ValueError as exc:
            failed[str(path)] = str(exc)
            continue
        try:
            _predict_image(predictor, image, path, out, names[path], overlays=overlays, keep=keep, probs=probs)
        except (MemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            h, w = image.shape[:2]
            failed[str(path)] = f"out of memory segmenting {path} ({w}x{h}); try a smaller --tile, e.g. --tile 512"
            continue
        except IsADirectoryError as exc:
            failed[str(path)] = _taken(exc)
            continue
        written[str(path)] = f"{names[path]}.png"
    videos = predict_videos(predictor, [p for p in files if is_video(p)], out, failed=failed, progress=progress,
                            names=video_names)  # fmt: skip
    return {"images": len(written), "outputs": written, "videos": videos, "failed": failed, "out": str(out),
            "backend": predictor.backend, "input_scale": predictor.input_scale}  # fmt: skip


def _streams(path: Path, max_pixels: int) -> bool:
    """Whether ``path`` is a raster streamed window by window (errors are reported when it is segmented)."""
    try:
        return is_streamed(path, max_pixels)
    except ImportError:
        return False


def _predict_raster_part(predictor: Predictor, path: Path, out: Path, name: str, *, probs: bool, rank: int,
                         world_size: int) -> tuple[list[tuple[Path, Path | None]], str | None]:  # fmt: skip
    """This process's share of the streamed raster ``path``: a contiguous run of its bands of windows
    (:meth:`Predictor.row_bands`) written as row parts, which rank 0 merges into ``masks/<name>.tif`` (the
    file one process writes) once every process is done. Returns the parts written by all processes and,
    the same on every rank, why the raster failed (None if it did not). An error that is no fault of the
    input (a bug) is raised on every rank."""
    import torch.distributed as dist

    from semseg.inference.raster import import_rasterio

    parts = [(out / "masks" / f".{name}.part{r}.tif", out / "probs" / f".{name}.part{r}.tif" if probs else None)
             for r in range(world_size)]  # fmt: skip
    written: list[tuple[Path, Path | None]] = []
    why, fatal = None, None
    try:
        # The folders the parts are written into, and the merged files rank 0 will write there.
        folders = ("masks", "probs") if probs else ("masks",)
        check_not_folders(*(_target(out, folder, f"{name}.tif") for folder in folders))
        with import_rasterio().open(path) as src:
            bands = predictor.row_bands(src.height, src.width)
        shares = np.array_split(np.arange(len(bands)), world_size)
        written = [pair for pair, share in zip(parts, shares) if len(share)]
        if len(shares[rank]):
            rows = (bands[shares[rank][0]][0], bands[shares[rank][-1]][1])
            predict_raster(predictor, path, parts[rank][0], probs_target=parts[rank][1], rows=rows)
    except IsADirectoryError as exc:
        why = _taken(exc)
    except (ImportError, RasterError, ValueError, OSError, MemoryError) as exc:
        why = str(exc) or type(exc).__name__
    except Exception as exc:  # every process must reach the gather below, or the others would wait for it
        why, fatal = f"{type(exc).__name__}: {exc}", exc
    outcomes: list[tuple[str | None, bool]] = [(None, False)] * world_size
    dist.all_gather_object(outcomes, (why, fatal is not None))
    if fatal is not None:
        raise fatal
    if any(is_fatal for _, is_fatal in outcomes):
        stopped = [f"process {r}: {w}" for r, (w, is_fatal) in enumerate(outcomes) if is_fatal]
        raise RuntimeError(f"semseg predict stopped: {'; '.join(stopped)}")
    why = next((w for w, _ in outcomes if w is not None), None)
    if why is not None:
        for part in parts[rank]:
            if part is not None and not part.is_dir():  # a folder in a part's place is what failed; it stays
                part.unlink(missing_ok=True)
    return written, why


def _merged(summary: dict, world_size: int, error: Exception | None) -> dict:
    """Every process's summary gathered into one (for each, in input order), as one process would write it.
    A process that failed re-raises its error, and the others raise one naming it."""
    import torch.distributed as dist

    parts: list[tuple[dict, str | None]] = [({}, None)] * world_size
    dist.all_gather_object(parts, (summary, None if error is None else f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    failures = [f"process {rank}: {message}" for rank, (_, message) in enumerate(parts) if message is not None]
    if failures:
        raise RuntimeError(f"semseg predict stopped: {'; '.join(failures)}")
    merged = {**summary, "images": sum(p["images"] for p, _ in parts), "processes": world_size}
    for key in ("outputs", "videos", "failed"):
        merged[key] = {k: v for part, _ in parts for k, v in part[key].items()}
    return merged


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: NumPy's MemoryError, CUDA's OutOfMemoryError, or the
    RuntimeError of torch's CPU allocator ("DefaultCPUAllocator: can't allocate memory")."""
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(exc)


def _taken(exc: IsADirectoryError) -> str:
    """Why an input was skipped when a folder stands at one of its output paths."""
    return f"cannot write its output {exc.filename}: it is a folder; move that away or choose another --out"


def _target(out: Path, folder: str, filename: str) -> Path:
    """``out/folder/filename``, its folder created (:func:`predict_files` made sure no input lies in it)."""
    target = out / folder / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _predict_raster(predictor: Predictor, path: Path, out: Path, name: str, *, probs: bool) -> None:
    """Stream the GeoTIFF ``path`` to ``masks/<name>.tif`` (and ``probs/<name>.tif``): the whole image is
    never in memory, so there are no overlays or cut-outs."""
    probs_target = _target(out, "probs", f"{name}.tif") if probs else None
    predict_raster(predictor, path, _target(out, "masks", f"{name}.tif"), probs_target=probs_target)


def _predict_image(
    predictor: Predictor, image: np.ndarray, path: Path, out: Path, name: str, *,
    overlays: bool, keep: Sequence[int], probs: bool,
) -> None:  # fmt: skip
    """Write the mask of ``image`` (as :meth:`Predictor.read` gave it) read from ``path`` (and its overlay,
    cut-out, probabilities). Raises ``IsADirectoryError`` before writing any of them if a folder stands
    at one of their paths."""
    if probs:
        mask, probabilities = predictor(image, return_probs=True)
    else:
        mask = predictor(image)
    pictures = {"masks": palette_image(mask, predictor.palette)}
    if overlays and predictor.bands is None:  # an overlay needs RGB to draw on
        pictures["overlays"] = overlay(image, mask, predictor.palette)
    if keep:
        pictures["cutouts"] = cutout(image, mask, keep)
    targets = {folder: _target(out, folder, f"{name}.png") for folder in pictures}
    if probs:
        targets["probs"] = _target(out, "probs", f"{name}.npy")
    check_not_folders(*targets.values())
    if probs:  # float16 halves the file size; class probabilities need no more than ~3 significant digits
        np.save(targets["probs"], probabilities.astype(np.float16))
    for folder, picture in pictures.items():
        picture.save(targets[folder])


def predict_videos(
    predictor: Predictor, videos: Sequence[Path], out: Path, *, failed: dict[str, str], progress: bool = True,
    names: dict[Path, str] | None = None,
) -> dict[str, dict]:
    """Segment each video into ``out/videos/<stem>.mp4`` (``.avi`` stays ``.avi``); unreadable ones go to ``failed``.

    Returns, per input, ``{"output", "frames", "fps"}`` where ``fps`` is frames per wall-clock second
    of the whole loop: decoding, segmenting, drawing the overlay and encoding; plus ``declared_frames``
    when clearly fewer frames could be decoded than the container declares (a file cut short).
    """
    results = {}
    names = output_names(videos) if names is None else names
    for path in videos:
        name = names[path]
        if predictor.bands is not None:
            failed[str(path)] = f"videos are RGB; this model reads {predictor.bands} band(s) at full precision"
            continue
        suffix = ".avi" if path.suffix.lower() == ".avi" else ".mp4"
        target = _target(out, "videos", name + suffix)
        try:
            frames, seconds, declared = segment_video(predictor, path, target, progress=progress)
        except (ImportError, ValueError) as exc:
            failed[str(path)] = str(exc)
            continue
        results[str(path)] = {"output": f"videos/{target.name}", "frames": frames, "fps": round(frames / seconds, 2)}
        # Decoding stopped early: a file cut short. Containers' counts are estimates (variable frame rate
        # phone videos, MKV, WebM), so a shortfall of 1% (at least one frame) passes unremarked.
        if frames < declared - max(1, declared // 100):
            results[str(path)]["declared_frames"] = declared
    return results


def segment_video(predictor: Predictor, path: Path, target: Path, *, progress: bool = True) -> tuple[int, float, int]:
    """Write the overlay of every frame of ``path`` to ``target``; returns (frames, seconds, the frame count
    the container declares: 0 when it declares none; more than ``frames`` for a file cut short).

    Decoding, segmenting and drawing + encoding overlap in three threads
    (:func:`~semseg.inference.pipeline.run_pipeline`); every frame is written, in order.
    ValueError for a video that cannot be opened or has no frames; ImportError without OpenCV.
    """
    cv2 = _import_cv2()
    capture = cv2.VideoCapture(str(path))
    writer = None

    def decoded() -> Iterator[np.ndarray]:
        while (frame := capture.read())[0]:
            yield cv2.cvtColor(frame[1], cv2.COLOR_BGR2RGB)  # OpenCV decodes to BGR; the model was trained on RGB

    def write(item: tuple[np.ndarray, np.ndarray]) -> None:
        nonlocal writer
        rgb, mask = item
        tinted = np.asarray(overlay(rgb, mask, predictor.palette))
        if writer is None:  # opened on the first frame, so an empty video leaves no file behind
            writer = _open_writer(cv2, target, fps, rgb.shape)
        writer.write(cv2.cvtColor(tinted, cv2.COLOR_RGB2BGR))
        bar.update()

    try:
        if not capture.isOpened():
            raise ValueError(f"cannot open video {path}")
        fps = capture.get(cv2.CAP_PROP_FPS)
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))  # an estimate for some containers: only for the bar
        start = time.perf_counter()
        with progress_bar(total=count if count > 0 else None, desc=path.name, unit="frame", enabled=progress) as bar:
            frames = run_pipeline(decoded(), lambda rgb: (rgb, predictor(rgb)), write)
        seconds = time.perf_counter() - start
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if frames == 0:
        raise ValueError(f"no frames could be read from video {path}")
    return frames, max(seconds, 1e-9), max(count, 0)


def _open_writer(cv2: Any, target: Path, fps: float, shape: tuple[int, ...]) -> Any:
    """A VideoWriter matching the input's size and FPS: MJPG for ``.avi``, mp4v for ``.mp4``
    (both ship with every OpenCV build, unlike H.264)."""
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if target.suffix == ".avi" else "mp4v"))
    fps = fps if fps and fps > 0 else 25.0  # some containers report no rate; 25 keeps the video playable
    writer = cv2.VideoWriter(str(target), fourcc, fps, (shape[1], shape[0]))
    if not writer.isOpened():
        raise ValueError(f"cannot write video {target} with OpenCV")
    return writer


def _import_cv2() -> Any:
    """OpenCV, imported only when a video is given (it is an optional dependency)."""
    try:
        import cv2
    except ImportError:
        raise ImportError(VIDEO_HINT) from None
    return cv2
