import json

import numpy as np
import pytest
from PIL import Image

import semseg
from semseg.cli import main
from semseg.engine.checkpoint import save_weights

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


@pytest.mark.parametrize("extra", [[], ["--channels-last", "--bf16"], ["--backend", "onnxruntime"]])
def test_benchmark_prints_latency_and_share_of_peak(capsys, extra):
    if "onnxruntime" in extra:
        pytest.importorskip("onnxruntime")
    assert main(["benchmark", "--model", "lraspp", "--size", "64x64", "--repeats", "2", *extra]) == 0
    out = capsys.readouterr().out
    assert "3.22M params" in out and "latency median" in out and "% of the measured peak" in out


def test_benchmark_rejects_torch_only_flags_on_onnxruntime(capsys):
    pytest.importorskip("onnxruntime")
    assert main(["benchmark", "--model", "lraspp", "--size", "64x64", "--backend", "onnxruntime", "--bf16"]) == 1
    assert "apply to the torch backend only" in capsys.readouterr().err
