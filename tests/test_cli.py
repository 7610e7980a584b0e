import subprocess
import sys

import pytest
import torch

from semseg import __version__
from semseg.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "semseg", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "demo" in result.stdout and "models" in result.stdout


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"semseg {__version__}"


def test_unknown_command_is_a_usage_error():
    result = run_cli("fly")
    assert result.returncode == 2
    assert "invalid choice: 'fly'" in result.stderr


def test_bad_argument_value_names_the_argument(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--epochs", "zero"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --epochs: expected a positive integer, got 'zero'" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "m.safetensors", "x.png", "--device", "cuda"], "argument --device: cuda: this machine has no CUDA device"),
        (["predict", "m.safetensors", "x.png", "--device", "xpu:1"], "argument --device: xpu:1: this machine has no XPU device"),
        (["evaluate", "m.safetensors", "--data", "camvid", "--device", "bogus"],
         "argument --device: expected a device such as cpu, cuda or cuda:1, got 'bogus'"),
        (["serve", "m.safetensors", "--device", "meta"], "argument --device: meta: not a device semseg can run on"),
        (["predict", "m.safetensors", "x.png", "--scales", "1,inf"], "scales must be positive and finite, got '1,inf'"),
        (["evaluate", "m.safetensors", "--data", "camvid", "--scales", "nan"], "scales must be positive and finite"),
        (["serve", "m.safetensors", "--max-upload-mb", "-1"], "argument --max-upload-mb: expected a positive number"),
        (["serve", "m.safetensors", "--max-upload-mb", "inf"], "argument --max-upload-mb: expected a positive number"),
        (["serve", "m.safetensors", "--port", "70000"], "argument --port: expected a port number in 0..65535, got 70000"),
        (["serve", "m.safetensors", "--port", "-5"], "argument --port: expected a port number in 0..65535, got -5"),
        (["export", "m.safetensors", "--out", "m.onnx", "--min-agreement", "nan"],
         "argument --min-agreement: expected a share between 0 and 1 (e.g. 0.95), got nan"),
        (["export", "m.safetensors", "--out", "m.onnx", "--min-agreement", "2"],
         "argument --min-agreement: expected a share between 0 and 1 (e.g. 0.95), got 2.0"),
    ],
)
def test_impossible_devices_scales_and_limits_are_usage_errors(capsys, argv, message):
    if {"cuda", "xpu:1"} & set(argv) and (torch.cuda.is_available() or torch.xpu.is_available()):
        pytest.skip("this machine has the accelerator")
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_models_lists_params_and_gflops(capsys):
    assert main(["models", "--size", "64x64"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("unet"))
    params, gflops = (float(v) for v in row.split()[1:])
    assert params == pytest.approx(31.04, abs=0.01)
    assert gflops == pytest.approx(386.0 / 64, rel=0.01)  # FLOPs scale with pixels: 512^2 / 64^2 = 64


def test_bad_size_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["models", "--size", "16x16"])
    assert exc.value.code == 2
    assert "must be >= 32" in capsys.readouterr().err


def test_data_check_is_wired_to_the_checker(tmp_path, capsys):
    assert main(["data", "check", "imagenet", "--root", str(tmp_path)]) == 1
    assert "imagenet" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["data"])
    assert exc.value.code == 2


def test_a_file_name_that_is_not_utf8_is_printed_escaped_on_a_strict_utf8_terminal(tmp_path):
    import os

    import numpy as np
    from PIL import Image

    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / os.fsdecode(b"bad\xff.png")).write_bytes(b"not a png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "good.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "masks" / "good.png")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}  # a UTF-8 desktop terminal
    result = subprocess.run([sys.executable, "-m", "semseg", "data", "check", "folder", "--root", str(tmp_path)],
                            capture_output=True, env=env, timeout=120)  # fmt: skip
    out = result.stdout.decode("utf-8")
    assert result.returncode == 1, result.stderr.decode("utf-8", "replace")
    assert "bad\\udcff.png" in out and "unreadable" in out and "Traceback" not in result.stderr.decode("utf-8")
