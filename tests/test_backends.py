"""Choosing and loading inference engines: ``--backend auto`` with each runtime present and absent,
OpenVINO export and its metadata, the conversion cache, and OpenMP's wait policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from PIL import Image

import semseg
from semseg.cli import main
from semseg.engine.checkpoint import save_weights, sha256
from semseg.inference import backends
from semseg.inference.backends import cache_dir, choose_backend
from semseg.inference.predictor import Predictor

CLASSES = ["background", "thing", "other"]
META = {"classes": CLASSES, "palette": [[0, 0, 0], [255, 0, 0], [0, 0, 255]], "mean": [0.5] * 3, "std": [0.25] * 3}
PIP_OPENVINO = r'pip install "semseg\[openvino\]"'
needs_openvino = pytest.mark.skipif(not backends.installed("openvino"), reason="openvino is not installed")
needs_onnxruntime = pytest.mark.skipif(not backends.installed("onnxruntime"), reason="onnxruntime is not installed")


@pytest.fixture
def checkpoint(tmp_path):
    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2).eval()
    return save_weights(model, tmp_path / "m.safetensors", **META)


@pytest.fixture
def image(tmp_path):
    yy, xx = np.mgrid[0:45, 0:61]
    rgb = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    return path


def only_installed(monkeypatch, *present: str) -> None:
    """Make ``present`` the only non-torch runtimes ``choose_backend`` sees."""
    monkeypatch.setattr(backends, "installed", lambda engine: engine.startswith("torch") or engine in present)


@pytest.mark.parametrize(
    ("path", "device", "present", "expected"),
    [
        ("m.safetensors", "cpu", ("openvino", "onnxruntime"), "openvino"),
        ("m.safetensors", "cpu", ("onnxruntime",), "torch-channels-last"),
        ("m.safetensors", "cpu", (), "torch-channels-last"),
        ("m.safetensors", "cuda", ("openvino", "onnxruntime"), "torch-channels-last"),
        ("m.onnx", "cpu", ("openvino", "onnxruntime"), "openvino"),
        ("m.ONNX", "cpu", ("onnxruntime",), "onnxruntime"),
        ("m.xml", "cpu", ("openvino",), "openvino"),
        (None, "cpu", ("openvino",), "openvino"),  # semseg benchmark's in-memory model
        (None, "cpu", ("onnxruntime",), "torch-channels-last"),
    ],
)  # fmt: skip
def test_auto_chooses_by_file_type_device_and_what_is_installed(monkeypatch, path, device, present, expected):
    only_installed(monkeypatch, *present)
    assert choose_backend(path, "auto", device) == expected


@pytest.mark.parametrize(
    ("path", "backend", "device", "present", "message"),
    [
        ("m.xml", "auto", "cpu", ("onnxruntime",), rf"needs openvino, which is not installed: {PIP_OPENVINO}"),
        ("m.onnx", "auto", "cpu", (), "needs openvino, which is not installed"),
        ("m.onnx", "onnxruntime", "cpu", ("openvino",), "needs onnxruntime, which is not installed: pip install"),
        ("m.safetensors", "onnxruntime", "cpu", ("onnxruntime",), r"cannot run m\.safetensors \(a checkpoint file\)"),
        ("m.onnx", "torch", "cpu", (), r"torch backend cannot run m\.onnx"),
        ("m.xml", "onnxruntime", "cpu", ("onnxruntime",), r"onnxruntime backend cannot run m\.xml"),
        ("m.onnx", "openvino", "cuda", ("openvino",), "runs on the CPU here, not cuda"),
        ("m.onnx", "tensorrt", "cpu", (), "backend must be one of auto, torch, torch-channels-last, onnxruntime"),
    ],
)  # fmt: skip
def test_impossible_choices_say_why(monkeypatch, path, backend, device, present, message):
    only_installed(monkeypatch, *present)
    with pytest.raises(ValueError, match=message):
        choose_backend(path, backend, device)


def test_installed_follows_the_import_system(monkeypatch):
    assert backends.installed("torch") and backends.installed("torch-channels-last")
    monkeypatch.setitem(sys.modules, "openvino", None)  # how Python marks a module that must not import
    assert not backends.installed("openvino")


@needs_openvino
def test_checkpoint_runs_on_openvino_by_default_with_torchs_labels(image, tmp_path):
    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2).eval()
    checkpoint = save_weights(model, tmp_path / "r.safetensors", recipe={"epochs": 3}, **META)
    predictor = Predictor.from_checkpoint(checkpoint)
    assert predictor.backend == "openvino" and predictor.classes == CLASSES
    assert predictor.metadata["recipe"] == {"epochs": 3}  # the checkpoint's whole metadata, not only the IR's
    assert np.array_equal(predictor(image), Predictor.from_checkpoint(checkpoint, backend="torch")(image))


def test_without_openvino_a_checkpoint_runs_on_torch_channels_last(checkpoint, image, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    predictor = Predictor.from_checkpoint(checkpoint)
    assert predictor.backend == "torch-channels-last"
    assert np.array_equal(predictor(image), Predictor.from_checkpoint(checkpoint, backend="torch")(image))


@needs_onnxruntime
@pytest.mark.parametrize("openvino_present", [True, False])
def test_predict_runs_an_onnx_file_with_no_backend_given(checkpoint, image, tmp_path, monkeypatch, capsys,
                                                         openvino_present):  # fmt: skip
    if openvino_present and not backends.installed("openvino"):
        pytest.skip("openvino is not installed")
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", str(checkpoint), "--out", str(onnx_file)]) == 0
    if not openvino_present:
        monkeypatch.setitem(sys.modules, "openvino", None)
    expected = "openvino" if openvino_present else "onnxruntime"
    assert main(["predict", str(onnx_file), str(image), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    assert f"backend: {expected}" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["backend"] == expected
    with Image.open(tmp_path / "o" / "masks" / "photo.png") as png:
        assert np.array_equal(np.array(png), Predictor.from_checkpoint(checkpoint, backend="torch")(image))


@needs_openvino
@pytest.mark.parametrize("out", ["ir", "ir/named.xml"])
def test_openvino_export_keeps_the_metadata(checkpoint, image, tmp_path, capsys, out):
    assert main(["export", str(checkpoint), "--format", "openvino", "--out", str(tmp_path / out)]) == 0
    xml = tmp_path / ("ir/m.xml" if out == "ir" else out)
    assert f"wrote {xml} and its .bin" in capsys.readouterr().out
    assert xml.with_suffix(".bin").is_file()
    ir = backends.openvino_core().read_model(str(xml))
    assert json.loads(ir.get_rt_info(["semseg", "classes"]).astype(str)) == CLASSES
    assert json.loads(ir.get_rt_info(["semseg", "model_config"]).astype(str))["name"] == "unet"
    predictor = Predictor.from_checkpoint(xml)
    assert predictor.backend == "openvino" and predictor.classes == CLASSES and predictor.palette[1] == (255, 0, 0)
    assert predictor.metadata["mean"] == META["mean"] and predictor.metadata["std"] == META["std"]
    assert np.array_equal(predictor(image), Predictor.from_checkpoint(checkpoint, backend="torch")(image))


@needs_openvino
@needs_onnxruntime
def test_exported_files_keep_the_input_scale_and_their_predictors_follow_it(image, tmp_path):
    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2).eval()
    checkpoint = save_weights(model, tmp_path / "m.safetensors", infer_scale=2.0, **META)
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert main(["export", str(checkpoint), "--format", "openvino", "--out", str(tmp_path / "ir")]) == 0
    torch_probs = Predictor.from_checkpoint(checkpoint, backend="torch")(image, return_probs=True)[1]
    native = Predictor.from_checkpoint(checkpoint, backend="torch", input_scale=1.0)(image, return_probs=True)[1]
    assert np.abs(torch_probs - native).max() > 1e-3
    for path, backend in [(tmp_path / "m.onnx", "onnxruntime"), (tmp_path / "ir" / "m.xml", "openvino")]:
        predictor = Predictor.from_checkpoint(path, backend=backend)
        assert predictor.input_scale == 2.0 and predictor.backend == backend
        np.testing.assert_allclose(predictor(image, return_probs=True)[1], torch_probs, atol=1e-4)
    import onnx

    proto = onnx.load(str(tmp_path / "m.onnx"))
    for prop in proto.metadata_props:
        if prop.key == "semseg.infer_scale":
            prop.value = "100"
    onnx.save(proto, str(tmp_path / "forged.onnx"))
    with pytest.raises(ValueError, match=r"forged.onnx: metadata infer_scale must be a number in \(0, 4.0\], got 100"):
        Predictor.from_checkpoint(tmp_path / "forged.onnx", backend="onnxruntime")


FIVE = {"classes": json.dumps(["a", "b", "c", "d", "e"]), "palette": json.dumps([[0, 0, 0]] * 5),
        "model_config": json.dumps({"name": "unet", "num_classes": 5, "base_channels": 4, "depth": 2})}
FORGERIES = [
    ({"classes": json.dumps(["a", "b", "c", "d", "e"])}, "metadata classes has 5 names for a model with 3 outputs"),
    (FIVE, "metadata classes has 5 names for a model with 3 outputs"),  # consistent metadata, but not the graph's
    ({"std": "[0, 0, 0]"}, r"metadata std must be > 0 for every channel"),
    ({"palette": "[[0, 0, 999], [0, 0, 0], [0, 0, 0]]"}, r"metadata palette must be a list of \[R, G, B\] triples"),
    ({"mean": '"abc"'}, "metadata mean must be a list of finite numbers"),
    ({"classes": "[oops"}, "semseg metadata is not valid JSON"),
]


@pytest.mark.parametrize("backend", [pytest.param("onnxruntime", marks=needs_onnxruntime),
                                     pytest.param("openvino", marks=needs_openvino)])  # fmt: skip
@pytest.mark.parametrize(("forged", "message"), FORGERIES)
def test_forged_metadata_of_exported_files_is_refused_naming_the_file(checkpoint, tmp_path, forged, message, backend):
    import onnx

    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    proto = onnx.load(str(tmp_path / "m.onnx"))
    for prop in proto.metadata_props:
        prop.value = forged.get(prop.key.removeprefix("semseg."), prop.value)
    onnx.save(proto, str(tmp_path / "forged.onnx"))
    with pytest.raises(ValueError, match=rf"forged\.onnx: {message}"):
        Predictor.from_checkpoint(tmp_path / "forged.onnx", backend=backend)


@needs_openvino
def test_unusable_openvino_files_are_named(checkpoint, image, tmp_path, capsys):
    import openvino as ov

    assert main(["predict", str(tmp_path / "gone.xml"), str(image), "--out", str(tmp_path / "o")]) == 1
    assert "no such OpenVINO file" in capsys.readouterr().err
    junk = tmp_path / "junk.xml"
    junk.write_text("<net>")
    assert main(["predict", str(junk), str(image), "--out", str(tmp_path / "o")]) == 1
    assert "junk.xml is not a model OpenVINO can read" in capsys.readouterr().err
    assert main(["export", str(checkpoint), "--format", "openvino", "--out", str(tmp_path / "ir")]) == 0
    full = backends.openvino_core().read_model(str(tmp_path / "ir" / "m.xml"))
    bare = ov.Model(full.get_results(), full.get_parameters(), "bare")  # the same graph without its rt_info
    ov.save_model(bare, str(tmp_path / "bare.xml"), compress_to_fp16=False)
    with pytest.raises(ValueError, match=r"bare\.xml lacks semseg metadata \(classes, palette, mean, std\)"):
        Predictor.from_checkpoint(tmp_path / "bare.xml")


@needs_openvino
def test_conversions_are_cached_by_the_files_hash(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("SEMSEG_CACHE_DIR", str(tmp_path / "cache"))
    Predictor.from_checkpoint(checkpoint)
    entries = sorted(p.name for p in (cache_dir() / "openvino").iterdir())
    assert [p.split("-openvino-")[0] for p in entries] == [sha256(checkpoint)] * 3  # .bin, .stamp, .xml, nothing more
    copy = tmp_path / "renamed.safetensors"
    copy.write_bytes(checkpoint.read_bytes())

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr("semseg.inference.export.export", no_conversion)
    assert Predictor.from_checkpoint(copy).backend == "openvino"  # same bytes, same cache entry
    model = semseg.create_model("unet", num_classes=3, base_channels=4, depth=2)
    retrained = save_weights(model, tmp_path / "m.safetensors", **META)  # new weights under the old name
    with pytest.raises(AssertionError, match="converted again"):
        Predictor.from_checkpoint(retrained)


@needs_openvino
@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_cache_entry_damaged_since_it_was_written_is_converted_anew(checkpoint, image, tmp_path, monkeypatch, damage):
    monkeypatch.setenv("SEMSEG_CACHE_DIR", str(tmp_path / "cache"))
    expected = Predictor.from_checkpoint(checkpoint, backend="torch")(image)
    Predictor.from_checkpoint(checkpoint)
    (weights,) = (cache_dir() / "openvino").glob("*.bin")
    data = weights.read_bytes()
    # Cut short: OpenVINO refuses it; the same size with other bytes: it would run and answer wrongly.
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else bytes(len(data)))
    predictor = Predictor.from_checkpoint(checkpoint)
    assert predictor.backend == "openvino" and np.array_equal(predictor(image), expected)
    assert weights.read_bytes() == data  # the entry was rebuilt, not patched around


@needs_openvino
def test_openvino_models_freed_in_the_order_they_were_made_leave_signal_handling_working(checkpoint, tmp_path):
    # OpenVINO's CPU plugin swaps in an alternate signal stack of its own per Core and unmaps it when
    # freed; with one Core per model, freeing the first-made model first left the thread on an unmapped
    # stack, and the next signal Python handled (Ctrl-C, a DataLoader worker's exit) was a SIGSEGV.
    assert main(["export", str(checkpoint), "--format", "openvino", "--out", str(tmp_path / "ir")]) == 0
    code = f"""
import os, signal
from semseg.inference.backends import OpenVinoModel
first, second = OpenVinoModel({str(tmp_path / "ir" / "m.xml")!r}), OpenVinoModel({str(tmp_path / "ir" / "m.xml")!r})
del first, second
signal.signal(signal.SIGUSR1, lambda *_: print("handled"))
os.kill(os.getpid(), signal.SIGUSR1)
print("alive")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (done.returncode, done.stdout.split()) == (0, ["handled", "alive"]), done.stderr


@needs_openvino
def test_an_ir_whose_bin_is_missing_says_so(checkpoint, tmp_path):
    assert main(["export", str(checkpoint), "--format", "openvino", "--out", str(tmp_path / "ir")]) == 0
    (tmp_path / "renamed.xml").write_bytes((tmp_path / "ir" / "m.xml").read_bytes())
    with pytest.raises(ValueError, match=r"renamed\.xml is not a model OpenVINO can read \([^)]*bin file[^)]*\)"):
        Predictor.from_checkpoint(tmp_path / "renamed.xml")


@needs_openvino
def test_an_unwritable_cache_falls_back_to_the_temporary_folder(checkpoint, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("SEMSEG_CACHE_DIR", str(blocker))  # mkdir under a file fails, even as root
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert Predictor.from_checkpoint(checkpoint).backend == "openvino"
    assert list((tmp_path / "tmp").glob("semseg-*/openvino/*.xml"))


def test_a_file_that_is_no_checkpoint_is_named_before_any_conversion(tmp_path, monkeypatch):
    junk = tmp_path / "junk.safetensors"
    junk.write_text("not weights")
    monkeypatch.setattr(backends, "sha256", lambda path: pytest.fail("hashed before validating"))
    with pytest.raises(ValueError, match="junk.safetensors is not a readable safetensors file"):
        Predictor.from_checkpoint(junk)


@pytest.mark.parametrize(("preset", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_importing_semseg_makes_idle_openmp_threads_sleep_unless_told_otherwise(preset, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if preset:
        env["OMP_WAIT_POLICY"] = preset
    code = "import os, semseg; print(os.environ['OMP_WAIT_POLICY'])"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == expected
