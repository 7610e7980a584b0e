"""semseg train keeps freed memory in the process (glibc trim threshold / top pad)."""

import os
import platform
import subprocess
import sys

import pytest

import semseg.allocator as allocator
import semseg.engine.trainer as trainer
from semseg.cli import main


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_accepts_the_settings():
    # In a child process: the suite's own process keeps glibc's defaults (tests/conftest.py).
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    code = "from semseg.allocator import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


@pytest.mark.parametrize("variable", ["MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"])
def test_an_explicit_setting_wins(monkeypatch, variable):
    monkeypatch.setenv(variable, "131072")
    assert allocator.keep_freed_memory() is False


def test_train_applies_it_before_training(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append("allocator") or True)
    result = {"history": [], "best_mIoU": float("-inf"), "epochs_run": 0}  # what fit returns when nothing ran
    monkeypatch.setattr(trainer, "fit", lambda config, **kw: calls.append("fit") or result)
    assert main(["train", "configs/unet_camvid.yaml"]) == 0
    assert calls == ["allocator", "fit"]
