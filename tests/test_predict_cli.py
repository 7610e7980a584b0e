import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import semseg
from semseg.cli import main
from semseg.engine.checkpoint import save_weights
from semseg.inference import Predictor

CLASSES = ["background", "thing"]


@pytest.fixture
def checkpoint(tmp_path):
    model = semseg.create_model("unet", num_classes=2, base_channels=4, depth=2).eval()
    return save_weights(model, tmp_path / "m.safetensors", classes=CLASSES, palette=[[0, 0, 0], [255, 0, 0]],
                        mean=[0.5] * 3, std=[0.25] * 3)  # fmt: skip


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / folder / "0.png")
    Image.fromarray(rng.integers(0, 256, (33, 35, 3), dtype=np.uint8)).save(tmp_path / "a" / "1.jpg")
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG truncated")
    return tmp_path


def test_predict_writes_masks_overlays_cutouts_and_reports_failures(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["predict", str(checkpoint), str(images / "a"), str(images / "b" / "*.png"), "nothing.png",
                 "--out", str(out), "--cutout", "thing", "--quiet"])  # fmt: skip
    assert code == 1  # two inputs failed
    err = capsys.readouterr().err
    assert "skipped nothing.png: no such file" in err and "broken.png: cannot read image" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3
    assert sorted(summary["outputs"].values()) == ["0-2.png", "0.png", "1.png"]  # a/0 and b/0 both kept
    with Image.open(out / "masks" / "1.png") as mask:
        assert mask.mode == "P" and mask.size == (35, 33)
        assert set(np.unique(np.array(mask))) <= {0, 1}
    with Image.open(out / "cutouts" / "1.png") as cut:
        assert cut.mode == "RGBA"
        alpha = np.array(cut)[..., 3]
        with Image.open(out / "masks" / "1.png") as mask:
            assert np.array_equal(alpha == 255, np.array(mask) == 1)
    assert (out / "overlays" / "0-2.png").is_file()


def test_all_good_inputs_exit_zero(checkpoint, images, tmp_path):
    assert main(["predict", str(checkpoint), str(images / "b"), "--out", str(tmp_path / "o"), "--quiet",
                 "--tile", "32", "--flip", "--scales", "0.75,1"]) == 0  # fmt: skip


def test_unknown_cutout_class_is_named(checkpoint, images, tmp_path, capsys):
    assert main(["predict", str(checkpoint), str(images / "b"), "--out", str(tmp_path / "o"), "--cutout", "cat"]) == 1
    assert "cat not in the model's classes: background, thing" in capsys.readouterr().err


def test_bad_scales_are_a_usage_error(checkpoint, images, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(checkpoint), str(images), "--out", str(tmp_path), "--scales", "1,x"])
    assert exc.value.code == 2


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_checks_parity_and_embeds_metadata(checkpoint, tmp_path, capsys, fmt):
    pytest.importorskip("onnxruntime")
    out = tmp_path / f"m.{'onnx' if fmt == 'onnx' else 'pt'}"
    assert main(["export", str(checkpoint), "--format", fmt, "--out", str(out)]) == 0
    assert "max abs diff" in capsys.readouterr().out
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(props["semseg.classes"]) == CLASSES


def test_onnxruntime_predictor_gives_the_same_masks(checkpoint, images, tmp_path):
    pytest.importorskip("onnxruntime")
    from semseg.inference import Predictor

    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(checkpoint), "--out", str(onnx_path)]) == 0
    torch_pred = Predictor.from_checkpoint(checkpoint)
    ort_pred = Predictor.from_checkpoint(onnx_path, backend="onnxruntime")
    assert ort_pred.classes == CLASSES
    for path in [images / "a" / "0.png", images / "a" / "1.jpg"]:
        assert np.array_equal(ort_pred(path), torch_pred(path))
    code = main(["predict", str(onnx_path), str(images / "b"), "--backend", "onnxruntime", "--out", str(tmp_path / "p"),
                 "--quiet"])  # fmt: skip
    assert code == 0 and (tmp_path / "p" / "masks" / "0.png").is_file()


@pytest.mark.parametrize(("extra", "engine"), [
    ([], None), (["--backend", "torch"], "torch"), (["--channels-last", "--bf16"], "torch-channels-last, bf16"),
    (["--backend", "onnxruntime"], "onnxruntime"), (["--backend", "openvino"], "openvino"),
    (["--backend", "openvino-int8"], "openvino-int8"),
])  # fmt: skip
def test_benchmark_prints_latency_and_share_of_peak(capsys, extra, engine):
    from semseg.inference.backends import choose_backend

    for runtime in ("onnxruntime", "openvino", "nncf"):
        if any(runtime in arg for arg in extra) or (runtime == "nncf" and "openvino-int8" in extra):
            pytest.importorskip(runtime)
    assert main(["benchmark", "--model", "lraspp", "--size", "64x64", "--repeats", "2", *extra]) == 0
    out = capsys.readouterr().out
    assert f"batch 1 ({engine or choose_backend(None)}): 3.22M params" in out  # auto: the engine it chose
    assert "latency median" in out and "% of the measured peak" in out and "first call (export, compile)" in out


def test_benchmark_int8_runs_an_nncf_quantized_model(monkeypatch):
    """openvino-int8 times the model NNCF quantized (the one `semseg export --int8` writes), not the fp32 IR."""
    pytest.importorskip("nncf")
    from semseg.inference import benchmark as bench
    from semseg.inference import quantize

    quantized, real = [], quantize.quantize_openvino

    def recording(model, batches):
        quantized.append((model, [b.shape for b in batches]))
        return real(model, batches)

    monkeypatch.setattr(quantize, "quantize_openvino", recording)
    row = bench.benchmark("lraspp", size=(64, 96), backend="openvino-int8", repeats=1, warmup=0)
    assert row["backend"] == "openvino-int8" and row["latency_ms_median"] > 0
    assert len(quantized) == 1 and str(quantized[0][0]).endswith(".onnx")
    assert quantized[0][1] == [(1, 3, 64, 96)] * bench.INT8_CALIBRATION_BATCHES


def test_benchmark_torch_compile_times_the_compiled_model(monkeypatch):
    """torch-compile runs what torch.compile returned (compiling for real takes minutes: recorded here)."""
    import torch

    from semseg.inference.benchmark import benchmark

    compiled = []

    def fake_compile(model):
        def run(x):
            compiled.append(x.shape)
            return model(x)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    row = benchmark("lraspp", size=(64, 64), backend="torch-compile", repeats=2, warmup=1)
    assert row["backend"] == "torch-compile" and len(compiled) == 1 + 1 + 2  # first call, warm-up, timed
    with pytest.raises(ValueError, match="backend must be one of auto, torch, .*torch-compile, openvino-int8"):
        benchmark("lraspp", size=(64, 64), backend="tensorrt")
    with pytest.raises(ValueError, match="--channels-last does not apply to torch-compile"):
        benchmark("lraspp", size=(64, 64), backend="torch-compile", channels_last=True)


def test_benchmark_rejects_torch_only_flags_on_onnxruntime(capsys):
    pytest.importorskip("onnxruntime")
    assert main(["benchmark", "--model", "lraspp", "--size", "64x64", "--backend", "onnxruntime", "--bf16"]) == 1
    assert "apply to the torch backends only" in capsys.readouterr().err


def _write_video(path, fourcc, frames=6, size=(64, 48)):
    """A small clip: red left half, blue right half, and a white square moving across."""
    cv2 = pytest.importorskip("cv2")
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (w, h))
    assert writer.isOpened()
    for i in range(frames):
        rgb = np.zeros((h, w, 3), dtype=np.uint8)
        rgb[:, : w // 2] = (220, 30, 30)
        rgb[:, w // 2 :] = (30, 30, 220)
        rgb[10:26, 4 + 8 * i : 20 + 8 * i] = 255
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _read_video(path):
    cv2 = pytest.importorskip("cv2")
    capture = cv2.VideoCapture(str(path))
    frames = []
    while (frame := capture.read())[0]:
        frames.append(cv2.cvtColor(frame[1], cv2.COLOR_BGR2RGB))
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


@pytest.mark.parametrize(("suffix", "fourcc"), [(".mp4", "mp4v"), (".avi", "MJPG")])
def test_video_is_segmented_frame_by_frame_into_an_overlay_video(checkpoint, tmp_path, capsys, suffix, fourcc):
    from semseg.inference import Predictor
    from semseg.visualize import overlay

    clip = _write_video(tmp_path / f"clip{suffix}", fourcc)
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(clip), "--out", str(out), "--quiet", "--no-overlay"]) == 0
    assert f"{clip}: 6 frames at" in capsys.readouterr().out
    video = json.loads((out / "summary.json").read_text())["videos"][str(clip)]
    assert video["output"] == f"videos/clip{suffix}" and video["frames"] == 6 and video["fps"] > 0
    written, fps = _read_video(out / video["output"])
    inputs, _ = _read_video(clip)
    assert len(written) == 6 and written[0].shape == (48, 64, 3) and fps == pytest.approx(10.0)
    # each written frame is the overlay of the RGB frame (not BGR), up to the codec's loss
    predictor = Predictor.from_checkpoint(checkpoint)
    for frame, result in zip(inputs, written):
        expected = np.asarray(overlay(frame, predictor(frame), predictor.palette), dtype=np.float32)
        assert np.abs(result.astype(np.float32) - expected).mean() < 8
        swapped = np.asarray(overlay(frame[..., ::-1], predictor(frame[..., ::-1]), predictor.palette))
        assert np.abs(result.astype(np.float32) - swapped).mean() > 30


def test_a_video_cut_short_is_segmented_as_far_as_it_goes_and_said(checkpoint, tmp_path, capsys):
    clip = _write_video(tmp_path / "clip.avi", "MJPG")
    data = clip.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) * 3 // 4])  # the header still declares 6 frames
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(cut), "--out", str(out), "--quiet", "--no-overlay"]) == 0
    video = json.loads((out / "summary.json").read_text())["videos"][str(cut)]
    assert 0 < video["frames"] < 6 and video["declared_frames"] == 6
    assert (f"semseg predict: warning: {cut}: only {video['frames']} of the 6 frames its header declares could be "
            "decoded; the file may be cut short") in capsys.readouterr().err
    assert main(["predict", str(checkpoint), str(clip), "--out", str(tmp_path / "whole"), "--quiet"]) == 0
    assert "declared_frames" not in json.loads((tmp_path / "whole" / "summary.json").read_text())["videos"][str(clip)]
    assert "warning" not in capsys.readouterr().err


def test_videos_in_folders_are_found_and_unreadable_ones_reported(checkpoint, images, tmp_path, capsys):
    _write_video(images / "b" / "clip.avi", "MJPG")
    (images / "b" / "x.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(images / "b"), "--out", str(out), "--quiet"]) == 1
    assert f"skipped {images / 'b' / 'x.mp4'}: cannot open video" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 1 and (out / "masks" / "0.png").is_file()
    clip = str(images / "b" / "clip.avi")
    assert list(summary["videos"]) == [clip] and summary["videos"][clip]["frames"] == 6
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["clip.avi"]  # nothing left for x.mp4


def test_videos_without_opencv_name_the_extra_and_images_still_work(checkpoint, images, tmp_path, monkeypatch):
    from semseg.inference import Predictor
    from semseg.inference.predict import predict_files

    _write_video(images / "b" / "clip.mp4", "mp4v")
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    predictor = Predictor.from_checkpoint(checkpoint)
    summary = predict_files(predictor, [str(images / "b")], tmp_path / "out", progress=False)
    assert summary["images"] == 1 and summary["videos"] == {}
    assert 'pip install "semseg[video]"' in summary["failed"][str(images / "b" / "clip.mp4")]


def test_video_output_never_overwrites_its_input(checkpoint, tmp_path, capsys):
    (tmp_path / "out" / "videos").mkdir(parents=True)
    clip = _write_video(tmp_path / "out" / "videos" / "clip.mp4", "mp4v")
    before = clip.read_bytes()
    assert main(["predict", str(checkpoint), str(clip), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    assert f"refusing to write outputs into {tmp_path / 'out' / 'videos'}, which holds the input" in capsys.readouterr().err
    assert clip.read_bytes() == before


def test_inputs_inside_an_output_folder_are_refused_before_anything_is_written(checkpoint, tmp_path, capsys):
    (tmp_path / "out" / "overlays").mkdir(parents=True)
    for name in ("a", "bw"):
        Image.new("RGB", (40, 40), (9, 99, 199)).save(tmp_path / "out" / "overlays" / f"{name}.png")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out" / "overlays").iterdir()}
    assert main(["predict", str(checkpoint), str(tmp_path / "out" / "overlays"), "--out", str(tmp_path / "out"),
                 "--quiet", "--backend", "torch"]) == 1  # fmt: skip
    assert "which holds the input" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["overlays"]  # no masks/ of the first image
    assert {p.name: p.read_bytes() for p in (tmp_path / "out" / "overlays").iterdir()} == before
    (tmp_path / "out" / "masks").mkdir()
    (tmp_path / "elsewhere.png").write_bytes(before["a.png"])
    (tmp_path / "out" / "masks" / "elsewhere.png").symlink_to(tmp_path / "elsewhere.png")  # its mask would write through
    assert main(["predict", str(checkpoint), str(tmp_path / "out" / "masks" / "elsewhere.png"), "--out",
                 str(tmp_path / "out"), "--quiet", "--backend", "torch"]) == 1  # fmt: skip
    assert "which holds the input" in capsys.readouterr().err
    assert (tmp_path / "elsewhere.png").read_bytes() == before["a.png"]


def test_probs_are_float16_class_probabilities_matching_the_mask(checkpoint, images, tmp_path):
    out = tmp_path / "out"
    inputs = [str(images / "a" / "0.png"), str(images / "a" / "1.jpg")]
    assert main(["predict", str(checkpoint), *inputs, "--out", str(out), "--probs", "--quiet"]) == 0
    for stem, size in [("0", (40, 56)), ("1", (33, 35))]:
        probs = np.load(out / "probs" / f"{stem}.npy")
        assert probs.dtype == np.float16 and probs.shape == (len(CLASSES), *size)
        assert np.allclose(probs.astype(np.float32).sum(0), 1, atol=1e-2)
        with Image.open(out / "masks" / f"{stem}.png") as png:
            mask = np.array(png)  # palette PNG: the values are the class ids
        # float16 rounding can tie two classes but never reorders them
        assert np.array_equal(np.take_along_axis(probs, mask[None].astype(np.int64), 0)[0], probs.max(0))
        top2 = np.sort(probs, axis=0)[-2:]
        untied = top2[1] > top2[0]
        assert untied.mean() > 0.9 and np.array_equal(probs.argmax(0)[untied], mask[untied])


def test_unloadable_model_files_are_named(images, tmp_path, capsys):
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    assert main(["predict", str(junk), str(images / "b"), "--backend", "onnxruntime", "--out", str(tmp_path / "o")]) == 1
    assert "junk.onnx is not a model ONNX Runtime can load" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "gone.onnx"), str(images / "b"), "--backend", "onnxruntime",
                 "--out", str(tmp_path / "o")]) == 1  # fmt: skip
    assert "no such ONNX file" in capsys.readouterr().err


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` RGB pixels but carries almost no data (a bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_oversize_images_are_skipped_one_line_each_and_the_rest_written(checkpoint, images, tmp_path, capsys):
    (images / "b" / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    (images / "b" / "a-big.png").write_bytes(png_header_only(3000, 2000))
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(images / "b"), "--out", str(out), "--quiet",
                 "--max-pixels", "5000000"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "skipped" in line]
    assert len(lines) == 2
    assert "a-big.png: cannot read image" in lines[0] and "3000x2000 = 6,000,000 pixels" in lines[0]
    assert "the limit is 5,000,000 pixels (--max-pixels)" in lines[0]
    assert "bomb.png" in lines[1] and "decompression bomb" in lines[1]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 1 and (out / "masks" / "0.png").is_file()
    assert sorted(summary["failed"]) == [str(images / "b" / "a-big.png"), str(images / "b" / "bomb.png")]


def test_without_flags_bombs_and_images_over_100_megapixels_are_skipped(checkpoint, images, tmp_path, capsys):
    (images / "b" / "big.png").write_bytes(png_header_only(10_001, 10_000))
    (images / "b" / "bomb.png").write_bytes(png_header_only(100_000, 100_000))  # used to abort the run
    assert main(["predict", str(checkpoint), str(images / "b"), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "10001x10000 = 100,010,000 pixels; the limit is 100,000,000" in err
    assert "bomb.png: cannot read image" in err and "decompression bomb" in err and "Traceback" not in err
    assert (tmp_path / "o" / "masks" / "0.png").is_file()


class RunsOutOfMemory(torch.nn.Module):
    """Segments images up to 2,000 pixels; larger ones fail as torch's CPU allocator does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] * x.shape[-1] > 2000:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 274877906944 bytes")  # fmt: skip
        return torch.zeros(x.shape[0], 2, *x.shape[-2:])


def test_an_output_path_taken_by_a_folder_skips_that_image_only(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "masks" / "0.png").mkdir(parents=True)  # where a/0.png's mask would go
    code = main(["predict", str(checkpoint), str(images / "a" / "0.png"), str(images / "a" / "1.jpg"),
                 "--out", str(out), "--quiet"])  # fmt: skip
    assert code == 1
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["outputs"]) == [str(images / "a" / "1.jpg")] and (out / "masks" / "1.png").is_file()
    reason = summary["failed"][str(images / "a" / "0.png")]
    assert reason == (f"cannot write its output {out / 'masks' / '0.png'}: it is a folder; "
                      "move that away or choose another --out")
    assert not (out / "overlays" / "0.png").exists()  # nothing of an input is written when one of its paths is taken
    assert reason in capsys.readouterr().err


def test_an_output_folder_that_is_a_file_or_a_broken_link_is_one_line_before_any_image(checkpoint, images, tmp_path,
                                                                                       capsys):  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    (out / "overlays").write_text("x")
    (out / "probs").symlink_to(tmp_path / "gone")
    assert main(["predict", str(checkpoint), str(images / "a" / "1.jpg"), "--out", str(out), "--quiet"]) == 1
    assert capsys.readouterr().err.strip() == (f"semseg predict: error: --out {out}: {out / 'overlays'} is a file; "
                                               "choose a folder")  # fmt: skip
    assert not (out / "masks").exists()
    assert main(["predict", str(checkpoint), str(images / "a" / "1.jpg"), "--out", str(out), "--quiet",
                 "--no-overlay", "--probs"]) == 1  # fmt: skip
    assert capsys.readouterr().err.strip().endswith(f"{out / 'probs'} is a broken link; choose a folder")
    # Neither folder in use: the run goes ahead.
    assert main(["predict", str(checkpoint), str(images / "a" / "1.jpg"), "--out", str(out), "--quiet",
                 "--no-overlay"]) == 0  # fmt: skip


def test_running_out_of_memory_skips_that_image_only(images, tmp_path):
    from semseg.inference import Predictor
    from semseg.inference.predict import predict_files

    predictor = Predictor(RunsOutOfMemory(), classes=CLASSES, palette=[[0, 0, 0], [255, 0, 0]], mean=[0.5] * 3,
                          std=[0.25] * 3)  # fmt: skip
    summary = predict_files(predictor, [str(images / "a")], tmp_path / "out", progress=False)
    assert list(summary["outputs"]) == [str(images / "a" / "1.jpg")]  # 33x35: small enough
    reason = summary["failed"][str(images / "a" / "0.png")]
    assert reason.startswith(f"out of memory segmenting {images / 'a' / '0.png'} (56x40)") and "--tile" in reason


def test_a_bug_that_is_not_about_memory_still_raises(images, tmp_path):
    from semseg.inference import Predictor
    from semseg.inference.predict import predict_files

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    predictor = Predictor(Broken(), classes=CLASSES, palette=[[0, 0, 0], [255, 0, 0]], mean=[0.5] * 3, std=[0.25] * 3)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        predict_files(predictor, [str(images / "b")], tmp_path / "out", progress=False)


def test_torchrun_shards_prediction_and_matches_one_process(tmp_path):
    """2 gloo processes under torchrun: each segments every other input, no input twice or never, the
    files equal one process's byte for byte, and rank 0 writes the merged summary."""
    torch.manual_seed(0)
    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2).eval()
    with torch.no_grad():
        model.classifier.bias.zero_()
    ckpt = save_weights(model, tmp_path / "m.safetensors", classes=["a", "b", "c"],
                        palette=[[0, 0, 0], [255, 0, 0], [0, 255, 0]], mean=[0.5] * 3, std=[0.25] * 3)  # fmt: skip
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8)).save(inputs / f"img{i}.png")
    rasterio = pytest.importorskip("rasterio")
    from rasterio.transform import Affine

    # A georeferenced raster of 7 bands of 32-px windows: split by rows between the two processes.
    with rasterio.open(inputs / "scene.tif", "w", driver="GTiff", width=90, height=150, count=3, dtype="uint8",
                       crs="EPSG:32633", transform=Affine(0.5, 0, 500_000.0, 0, -0.5, 4_600_000.0)) as dst:  # fmt: skip
        dst.write(rng.integers(0, 256, (3, 150, 90), dtype=np.uint8))
    args = ["predict", str(ckpt), str(inputs), str(tmp_path / "nothing*.png"), "--backend", "torch", "--quiet",
            "--tile", "32", "--probs"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "semseg", *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29518",
           "-m", "semseg", *args, "--out", str(tmp_path / "two")]  # fmt: skip
    two = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == two.returncode == 1, two.stderr[-3000:]  # the unmatched glob is a failure in both
    assert "2 processes" in two.stdout and two.stdout.count("6 image(s)") == 1  # rank 0 reports, once
    for folder, count in (("masks", 6), ("overlays", 5), ("probs", 6)):
        names = sorted(p.name for p in (tmp_path / "one" / folder).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "two" / folder).iterdir()) and len(names) == count
        for name in names:
            if name.endswith(".tif"):  # the raster's merged parts: same pixels, georeferencing and palette
                with rasterio.open(tmp_path / "one" / folder / name) as a, rasterio.open(tmp_path / "two" / folder / name) as b:
                    assert np.array_equal(a.read(), b.read()) and a.profile == b.profile
                    assert a.tags() == b.tags() and (folder == "probs" or a.colormap(1) == b.colormap(1))
            else:
                assert (tmp_path / "one" / folder / name).read_bytes() == (tmp_path / "two" / folder / name).read_bytes()
    assert not list((tmp_path / "two").rglob(".*part*"))  # the parts are gone
    a = json.loads((tmp_path / "one" / "summary.json").read_text())
    b = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert b.pop("processes") == 2
    assert {**a, "out": None} == {**b, "out": None}


def test_a_model_of_more_than_256_classes_gets_exact_16_bit_label_maps(tmp_path):
    torch.manual_seed(0)
    model = semseg.create_model("unet", num_classes=300, base_channels=4, depth=2).eval()
    image = np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    with torch.no_grad():  # class 265 made to win about half the pixels
        logits = model((torch.from_numpy(image).permute(2, 0, 1)[None] / 255 - 0.5) / 0.25)[0]
        last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 300][-1]
        last.bias[265] += (logits.max(0).values - logits[265]).median()
    classes, palette = [f"c{i}" for i in range(300)], [[i % 256, 0, 0] for i in range(300)]
    checkpoint = save_weights(model, tmp_path / "m.safetensors", classes=classes, palette=palette,
                              mean=[0.5] * 3, std=[0.25] * 3)  # fmt: skip
    Image.fromarray(image).save(tmp_path / "x.png")
    predictor = Predictor.from_checkpoint(checkpoint, backend="torch")
    labels, probs = predictor(image, return_probs=True)
    assert labels.dtype == np.uint16 and np.array_equal(labels, probs.argmax(0))
    assert np.array_equal(predictor(image), labels) and labels.max() > 255  # ids past 8 bits, not wrapped
    assert main(["predict", str(checkpoint), str(tmp_path / "x.png"), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    with Image.open(tmp_path / "o" / "masks" / "x.png") as mask:
        assert np.array_equal(np.array(mask), labels)
    overlay = np.asarray(Image.open(tmp_path / "o" / "overlays" / "x.png"))
    red = np.array(palette)[labels][..., 0]
    assert np.abs(overlay[..., 0].astype(int) - np.round(0.5 * image[..., 0] + 0.5 * red)).max() <= 1


def test_an_out_that_is_a_file_is_refused_before_any_image_is_segmented(checkpoint, images, tmp_path, capsys):
    blocker = tmp_path / "a.png"
    blocker.write_bytes(b"x")
    for out in (blocker, blocker / "sub"):
        assert main(["predict", str(checkpoint), str(images / "a"), "--out", str(out), "--quiet"]) == 1
        err = capsys.readouterr().err.strip()
        assert err == f"semseg predict: error: --out {out}: {blocker} is a file; choose a folder"
