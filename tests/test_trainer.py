"""End-to-end training on the built-in shapes: checkpoints, exact resume, logs, errors, DDP."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from semseg.cli import main
from semseg.config import ConfigError, load_config
from semseg.engine.checkpoint import load_model, read_metadata, save_weights, sha256
from semseg.engine.trainer import _wall_time, fit

RECIPE = """
model:
  name: unet
  options: {base_channels: 4, depth: 2}
data:
  dataset: shapes
  options: {train_size: 32, val_size: 8, size: 32}
  batch_size: 8
  workers: 0
optim:
  name: sgd
  lr: 0.05
  warmup_steps: 2
epochs: 4
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def weights(out):
    return load_file(str(out / "last.safetensors"))


def test_fit_writes_checkpoints_logs_and_curves(recipe, tmp_path):
    out = tmp_path / "run"
    result = fit(load_config(recipe, [f"out={out}"]), progress=False)
    assert sorted(p.name for p in out.iterdir()) == [  # no tensorboard/: it is off by default
        "best.safetensors", "curves.png", "last.safetensors", "last.state.pt", "log.jsonl",
    ]
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    assert lines[-1]["val_mIoU"] == result["mIoU"]
    assert result["best_mIoU"] == max(r["val_mIoU"] for r in lines)
    meta = read_metadata(out / "best.safetensors")
    assert meta["classes"][0] == "background" and meta["config"]["optim"]["lr"] == 0.05
    assert meta["metrics"]["mIoU"] == result["best_mIoU"]
    model, _ = load_model(out / "last.safetensors")
    assert model.model_config["base_channels"] == 4


@pytest.mark.parametrize(("amp", "ema"), [("none", 0.0), ("fp16", 0.0), ("none", 0.8)])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(recipe, tmp_path, amp, ema):
    straight = tmp_path / "straight"
    fit(load_config(recipe, [f"out={straight}", f"amp={amp}", f"ema={ema}"]), progress=False)
    split = tmp_path / "split"
    config = load_config(recipe, [f"out={split}", f"amp={amp}", f"ema={ema}"])
    fit(config, stop_after=2, progress=False)
    assert read_metadata(split / "last.safetensors")["epoch"] == 2
    scaler = torch.load(split / "last.state.pt", weights_only=True)["scaler"]
    assert (scaler is None) == (amp == "none")  # fp16 keeps the GradScaler's scale and growth tracker
    torch.manual_seed(1234)  # a fresh process would start from other RNG state
    fit(config, resume=True, progress=False)
    a, b = weights(straight), weights(split)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    records = [json.loads(line) for line in (split / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert all(r["epoch_s"] > 0 for r in records)  # the run's wall time adds up across the resume
    assert [r["train_time_s"] for r in records] == pytest.approx(
        [sum(r["epoch_s"] for r in records[: i + 1]) for i in range(4)], rel=1e-9)
    if ema:  # the average and the weights it averages both continue exactly
        trained = [torch.load(run / "last.state.pt", weights_only=True)["ema"] for run in (straight, split)]
        assert trained[0]["steps"] == trained[1]["steps"] == 16  # 4 epochs of 4 steps
        for key, value in trained[0]["trained_weights"].items():
            assert torch.equal(value, trained[1]["trained_weights"][key]), key
            if value.is_floating_point() and value.numel() > 1:
                assert not torch.equal(value, a[key]), key  # the checkpoint holds the average, not these


def test_the_total_train_time_is_unknown_after_a_record_without_one():
    """A run resumed from a version that logged no epoch times has no honest total; it says so."""
    assert _wall_time([{"epoch": 1, "epoch_s": 2.0}], 3.0) == {"epoch_s": 3.0, "train_time_s": 5.0}
    assert _wall_time([{"epoch": 1}, {"epoch": 2, "epoch_s": 2.0}], 3.0) == {"epoch_s": 3.0, "train_time_s": None}


def test_ema_checkpoints_hold_the_validated_average_and_resume_refuses_another_setting(recipe, tmp_path):
    from semseg.engine.evaluate import evaluate
    from semseg.engine.datasets import build_datasets

    out = tmp_path / "run"
    config = load_config(recipe, [f"out={out}", "ema=0.8"])
    result = fit(config, stop_after=3, progress=False)
    model, _ = load_model(out / "last.safetensors")
    data = build_datasets(config)
    batches = torch.utils.data.DataLoader(data.val, batch_size=config.data.val_batch_size)
    scored = evaluate(model, batches, num_classes=len(data.classes), progress=False)
    assert scored["mIoU"] == pytest.approx(result["mIoU"])  # validation scored the weights the file holds
    with pytest.raises(ConfigError, match=r"these settings differ from its recipe: ema \(0\.8 -> 0\.0\)"):
        fit(load_config(recipe, [f"out={out}", "ema=0"]), resume=True, progress=False)
    with pytest.raises(ConfigError, match=r"ema must be in \[0, 1\)"):
        load_config(recipe, ["ema=1"])


def test_ema_warmup_follows_the_model_early_and_resumes_exactly(recipe, tmp_path):
    from semseg.engine.trainer import warmed_up_ema

    averaged, current = [torch.zeros(2)], [torch.ones(2)]
    warmed_up_ema(0.99)(averaged, current, torch.tensor(1))  # n = 1: decay 2/11, not 0.99
    torch.testing.assert_close(averaged[0], torch.full((2,), 9 / 11))
    warmed_up_ema(0.5)(averaged, current, torch.tensor(1000))  # late: the configured decay
    torch.testing.assert_close(averaged[0], torch.full((2,), 0.5 * 9 / 11 + 0.5))

    def distance_to_trained(out):
        trained = torch.load(out / "last.state.pt", weights_only=True)["ema"]["trained_weights"]
        average = weights(out)
        return sum(float((average[k].float() - v.float()).norm()) for k, v in trained.items() if v.is_floating_point())

    plain, warm, split = tmp_path / "plain", tmp_path / "warm", tmp_path / "split"
    fit(load_config(recipe, [f"out={plain}", "ema=0.99", "epochs=2"]), progress=False)
    fit(load_config(recipe, [f"out={warm}", "ema=0.99", "ema_warmup=true", "epochs=2"]), progress=False)
    assert distance_to_trained(warm) < 0.5 * distance_to_trained(plain)  # 8 steps: 0.99 still holds ~92% of the start
    config = load_config(recipe, [f"out={split}", "ema=0.99", "ema_warmup=true", "epochs=2"])
    fit(config, stop_after=1, progress=False)
    fit(config, resume=True, progress=False)
    a, b = weights(warm), weights(split)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_tensorboard_holds_the_jsonl_log_and_is_closed_when_a_run_stops_early(recipe, tmp_path, monkeypatch):
    summary = pytest.importorskip("torch.utils.tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    closed = []
    close = summary.SummaryWriter.close
    monkeypatch.setattr(summary.SummaryWriter, "close", lambda self: closed.append(self) or close(self))
    out = tmp_path / "run"
    config = load_config(recipe, [f"out={out}", "epochs=2", "tensorboard=true"])
    fit(config, stop_after=1, progress=False)
    assert len(closed) == 1
    fit(config, resume=True, progress=False)  # a second event file, from epoch 2 on
    assert len(closed) == 2

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    groups = {"per_class_IoU": "val_IoU", "per_class_accuracy": "val_accuracy", "per_class_dice": "val_dice"}
    expected: dict[str, list[float]] = {}
    for record in log:
        values = {"train/loss": record["train_loss"], "train/lr": record["lr"],
                  "train/images_per_s": record["images_per_s"], "train/skipped_batches": record["skipped_batches"],
                  "train/epoch_s": record["epoch_s"]}
        for key, value in record["val"].items():
            if key in groups:
                values.update({f"{groups[key]}/{name}": v for name, v in value.items()})
            else:
                values[f"val/{key}"] = value
        for tag, value in values.items():
            expected.setdefault(tag, []).append(value)
    assert {"val/mIoU", "val/pixel_accuracy", "val_IoU/background", "val_dice/cross"} <= expected.keys()
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    for tag, values in expected.items():
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2], tag
        # TensorBoard stores float32; NaN where a class is absent from the tiny val set
        assert [s.value for s in scalars] == pytest.approx(values, rel=1e-6, abs=1e-12, nan_ok=True), tag
    assert expected["val/mIoU"] == [r["val_mIoU"] for r in log]


def test_tensorboard_without_the_package_fails_before_training(recipe, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r'^tensorboard: true needs .*pip install "semseg\[tensorboard\]"'):
        fit(load_config(recipe, [f"out={out}", "tensorboard=true"]), progress=False)
    assert not out.exists()


def test_resume_without_a_checkpoint_says_what_is_missing(recipe, tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot resume: .*last.safetensors"):
        fit(load_config(recipe, [f"out={tmp_path / 'none'}"]), resume=True, progress=False)


def test_mismatched_weights_and_state_are_refused(recipe, tmp_path):
    out = tmp_path / "run"
    config = load_config(recipe, [f"out={out}"])
    fit(config, stop_after=1, progress=False)
    state = (out / "last.state.pt").read_bytes()
    fit(config, resume=True, stop_after=1, progress=False)
    (out / "last.state.pt").write_bytes(state)  # as if the crash hit between the two writes
    with pytest.raises(ValueError, match="from different epochs"):
        fit(config, resume=True, progress=False)


def test_bad_dataset_settings(recipe, tmp_path):
    with pytest.raises(ConfigError, match="data: dataset 'imagenet' is unknown; valid datasets: shapes, folder, camvid"):
        fit(load_config(recipe, ["data.dataset=imagenet"]), progress=False)
    with pytest.raises(ConfigError, match="data: a root folder is required for dataset 'camvid'"):
        fit(load_config(recipe, ["data.dataset=camvid"]), progress=False)
    with pytest.raises(ValueError, match="class_weights has 2 values for 5 classes"):
        fit(load_config(recipe, ["loss.class_weights=[1, 2]", f"out={tmp_path}"]), progress=False)


def test_sync_bn_on_cpu_is_refused_with_a_reason(recipe):
    from semseg.engine import distributed
    from semseg.engine.trainer import _fit

    config = load_config(recipe, ["sync_bn=true"])
    two_cpus = distributed.DistInfo(rank=0, world_size=2, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="sync_bn needs CUDA"):
        _fit(config, two_cpus, resume=False, overwrite=False, stop_after=None, progress=False)


def test_cli_train_and_bad_override(recipe, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["train", str(recipe), f"--out={out}", "--epochs=1", "--quiet"]) == 0
    assert "val mIoU" in capsys.readouterr().out
    assert main(["train", str(recipe), "--optim.lrr=1"]) == 1
    assert "unknown key(s) optim.lrr" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["train", str(recipe), "--lr"])
    assert exc.value.code == 2


def test_two_processes_match_one_with_the_same_global_batch(recipe, tmp_path):
    # torchrun with 2 CPU processes (gloo), each with half of the global batch of 8. A model
    # without BatchNorm: on CPU there is no SyncBatchNorm, and per-process BN statistics
    # would (rightly) differ from those of the whole batch.
    one, two = tmp_path / "one", tmp_path / "two"
    no_bn = "model.options={base_channels: 4, depth: 2, batch_norm: false}"
    fit(load_config(recipe, [f"out={one}", "epochs=2", no_bn]), progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
           "-m", "semseg", "train", str(recipe), f"--out={two}", "--epochs=2", f"--{no_bn}", "--quiet"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = weights(one), weights(two)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    log_one = [json.loads(x) for x in (one / "log.jsonl").read_text().splitlines()]
    log_two = [json.loads(x) for x in (two / "log.jsonl").read_text().splitlines()]
    assert [r["val_mIoU"] for r in log_two] == pytest.approx([r["val_mIoU"] for r in log_one], abs=1e-3)


@pytest.fixture
def custom_dataset(tmp_path):
    """A folder dataset (JPEG images, index PNG masks) and its description YAML."""
    import numpy as np
    from PIL import Image

    from semseg.data.synthetic import ShapesConfig, generate_sample

    for split, count in [("train", 8), ("val", 2)]:
        for folder in ("images", "masks"):
            (tmp_path / split / folder).mkdir(parents=True)
        for i in range(count):
            image, mask = generate_sample(5 if split == "train" else 6, i, ShapesConfig(size=40))
            Image.fromarray(image).save(tmp_path / split / "images" / f"{i}.jpg")
            Image.fromarray(mask.astype(np.uint8)).save(tmp_path / split / "masks" / f"{i}.png")
    path = tmp_path / "shapes.yaml"
    path.write_text(
        "name: my-shapes\nclasses: [background, disk, square, triangle, cross]\nmask_format: index\n"
        "splits:\n  train: {images: train/images, masks: train/masks}\n  val: {images: val/images, masks: val/masks}\n"
    )
    return path


def test_train_then_evaluate_a_custom_folder_dataset(custom_dataset, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.replace("dataset: shapes", f"dataset: {custom_dataset}")
                      .replace("options: {train_size: 32, val_size: 8, size: 32}", "crop_size: [32, 32]"))
    out = tmp_path / "run"
    result = fit(load_config(recipe, [f"out={out}", "epochs=1"]), progress=False)
    assert len(result["history"]) == 1
    meta = read_metadata(out / "last.safetensors")
    assert meta["classes"] == ["background", "disk", "square", "triangle", "cross"]
    assert meta["config"]["data"]["crop_size"] == [32, 32]

    report = tmp_path / "eval"
    args = ["evaluate", str(out / "last.safetensors"), "--data", str(custom_dataset), "--out", str(report), "--quiet"]
    assert main(args) == 0
    assert "| **mean** |" in capsys.readouterr().out
    metrics = json.loads((report / "metrics.json").read_text())
    # The validation pass inside training saw the same images with the same weights.
    assert metrics["mIoU"] == pytest.approx(result["mIoU"])
    assert metrics["images"] == 2
    assert sorted(p.name for p in report.iterdir()) == ["confusion.png", "metrics.json", "per_class.md", "worst"]
    assert len(list((report / "worst").iterdir())) == 2  # both val images, worst first


def test_infer_scale_is_validated_stored_and_followed_by_evaluate_and_the_predictor(custom_dataset, tmp_path):
    import numpy as np

    from semseg.inference.evaluation import evaluate_checkpoint
    from semseg.inference.predictor import Predictor

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.replace("dataset: shapes", f"dataset: {custom_dataset}")
                      .replace("options: {train_size: 32, val_size: 8, size: 32}", "crop_size: [32, 32]"))
    with pytest.raises(ConfigError, match=r"data.infer_scale must be in \(0, 4.0\], got 0"):
        load_config(recipe, ["data.infer_scale=0"])
    out = tmp_path / "run"
    result = fit(load_config(recipe, [f"out={out}", "epochs=40", "val_every=40", "data.infer_scale=2"]), progress=False)
    checkpoint = out / "last.safetensors"
    assert read_metadata(checkpoint)["infer_scale"] == 2
    predictor = Predictor.from_checkpoint(checkpoint, backend="torch")
    assert predictor.input_scale == 2
    sizes = []
    predictor.model.module.register_forward_hook(lambda module, args, output: sizes.append(tuple(args[0].shape[-2:])))
    image = custom_dataset.parent / "val" / "images" / "0.jpg"
    labels = predictor(image)
    assert labels.shape == (40, 40) and sizes == [(80, 80)]  # run at twice the size, labels at the image's own
    # The trainer's validation and `semseg evaluate` run the model at the same scale, so score alike;
    # the same weights at the inputs' own size give other probabilities (the scale is not a no-op here).
    assert evaluate_checkpoint(checkpoint, str(custom_dataset), progress=False)["mIoU"] == pytest.approx(result["mIoU"])
    at_one = evaluate_checkpoint(checkpoint, str(custom_dataset), progress=False, input_scale=1.0)["mIoU"]
    assert abs(at_one - result["mIoU"]) > 1e-3  # so the trainer did validate at 2x
    report = tmp_path / "eval"
    args = ["evaluate", str(checkpoint), "--data", str(custom_dataset), "--out", str(report), "--quiet", "--input-scale", "1"]
    assert main(args) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["input_scale"] == 1.0 and metrics["mIoU"] == pytest.approx(at_one)
    with pytest.raises(SystemExit):
        main(["evaluate", str(checkpoint), "--data", str(custom_dataset), "--input-scale", "9"])
    native = Predictor.from_checkpoint(checkpoint, backend="torch", input_scale=1.0)
    assert np.abs(native(image, return_probs=True)[1] - predictor(image, return_probs=True)[1]).max() > 1e-3


@pytest.mark.parametrize("options", [[], ["--tile", "32"], ["--flip", "--scales", "0.75,1", "--tile", "32"]])
def test_evaluate_scores_the_predictions_its_options_give(custom_dataset, tmp_path, options):
    import numpy as np
    from PIL import Image

    import semseg
    from semseg.inference.predictor import Predictor

    torch.manual_seed(3)  # an untrained U-Net with a zero classifier bias: varied labels, changed by tiling and TTA
    model = semseg.create_model("unet", num_classes=5, base_channels=4, depth=2).eval()
    with torch.no_grad():
        model.classifier.bias.zero_()
    checkpoint = save_weights(model, tmp_path / "m.safetensors", classes=read_classes(custom_dataset),
                              palette=[[i * 50] * 3 for i in range(5)], mean=[0.5] * 3, std=[0.25] * 3)  # fmt: skip
    report = tmp_path / "eval"
    args = ["evaluate", str(checkpoint), "--data", str(custom_dataset), "--out", str(report), "--quiet", *options]
    assert main(args) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    tile = int(options[options.index("--tile") + 1]) if "--tile" in options else None
    tta = {"tile": tile, "flip": "--flip" in options, "scales": (0.75, 1.0) if "--scales" in options else (1.0,)}
    assert (metrics["tile"], metrics["flip"], metrics["scales"]) == (tile, tta["flip"], list(tta["scales"]))
    val = custom_dataset.parent / "val"
    images = [val / "images" / f"{i}.jpg" for i in range(2)]
    masks = [np.array(Image.open(val / "masks" / f"{i}.png")) for i in range(2)]
    predictions = [Predictor.from_checkpoint(checkpoint, **tta)(image) for image in images]
    plain = [Predictor.from_checkpoint(checkpoint)(image) for image in images]
    assert options == [] or any((p != q).any() for p, q in zip(predictions, plain))  # the options change labels
    correct = sum(int((p == m).sum()) for p, m in zip(predictions, masks))
    assert metrics["pixel_accuracy"] == pytest.approx(correct / sum(m.size for m in masks))


def test_evaluate_a_plain_folder_takes_the_checkpoints_classes(custom_dataset, tmp_path, capsys):
    """``--data folder`` has no class list: the checkpoint's applies (it was a TypeError from the dataset)."""
    out = tmp_path / "run"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.replace("dataset: shapes", f"dataset: {custom_dataset}")
                      .replace("options: {train_size: 32, val_size: 8, size: 32}", "crop_size: [32, 32]"))
    result = fit(load_config(recipe, [f"out={out}", "epochs=1"]), progress=False)
    args = ["evaluate", str(out / "last.safetensors"), "--data", "folder", "--root", str(custom_dataset.parent),
            "--out", str(tmp_path / "eval"), "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["mIoU"] == pytest.approx(result["mIoU"])
    with pytest.raises(ConfigError, match="dataset 'folder' needs options.classes"):
        from semseg.engine.datasets import open_dataset

        open_dataset("folder", "val", root=str(custom_dataset.parent))


def read_classes(description) -> list[str]:
    """The class names of a dataset description YAML."""
    import yaml

    return list(yaml.safe_load(description.read_text())["classes"])


def test_evaluate_refuses_a_dataset_with_other_classes(tmp_path, recipe, custom_dataset):
    out = tmp_path / "run"
    fit(load_config(recipe, [f"out={out}", "epochs=1"]), progress=False)
    (tmp_path / "two.yaml").write_text(custom_dataset.read_text().replace(
        "classes: [background, disk, square, triangle, cross]", "classes: [a, b, c, d, e]"))
    from semseg.inference.evaluation import evaluate_checkpoint

    with pytest.raises(ValueError, match="evaluate on the dataset it was trained for"):
        evaluate_checkpoint(out / "last.safetensors", str(tmp_path / "two.yaml"), progress=False)


@pytest.fixture
def teacher(recipe, tmp_path):
    """A shapes model whose classifier is biased to say class 1 ("square" or whatever it is) nearly
    everywhere: a teacher whose advice differs visibly from the labels."""
    out = tmp_path / "teacher"
    fit(load_config(recipe, [f"out={out}", "epochs=1"]), progress=False)
    model, meta = load_model(out / "last.safetensors")
    with torch.no_grad():
        model.classifier.bias.copy_(8.0 * (torch.arange(len(meta["classes"])) == 1))
    path = tmp_path / "teacher.safetensors"
    save_weights(model, path, **{k: v for k, v in meta.items() if k != "model_config"})
    return path


def _share_of_class_1(path, config) -> float:
    """The fraction of val pixels the model at ``path`` labels as class 1."""
    from semseg.engine.datasets import build_datasets

    data = build_datasets(config)
    images = torch.stack([data.val[i][0] for i in range(len(data.val))])
    model, _ = load_model(path)
    with torch.no_grad():
        return float((model.eval()(images).argmax(1) == 1).float().mean())


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_distillation_teaches_resumes_exactly_and_refuses_another_teacher(recipe, tmp_path, teacher, capsys, amp):
    plain, straight, split = tmp_path / "plain", tmp_path / "straight", tmp_path / "split"
    fit(load_config(recipe, [f"out={plain}", f"amp={amp}"]), progress=False)
    distill = [f"distill.teacher={teacher}", "distill.weight=5", "distill.temperature=2", f"amp={amp}"]
    config = load_config(recipe, [f"out={straight}", *distill])
    fit(config, progress=False)
    assert f"distill: teacher {teacher} (sha256 {sha256(teacher)[:12]}), weight 5.0, temperature 2.0" in capsys.readouterr().out
    assert _share_of_class_1(teacher, config) > 0.99
    assert _share_of_class_1(straight / "last.safetensors", config) > 0.5 > _share_of_class_1(plain / "last.safetensors", config) + 0.2
    state = torch.load(straight / "last.state.pt", weights_only=True)
    assert state["distill"] == {"teacher_sha256": sha256(teacher), "weight": 5.0, "temperature": 2.0}
    meta = read_metadata(straight / "last.safetensors")
    assert meta["config"]["distill"]["teacher"] == str(teacher) and meta["distill_teacher_sha256"] == sha256(teacher)
    for line in (straight / "log.jsonl").read_text().splitlines():  # the term is logged alone and inside the loss
        record = json.loads(line)
        assert 0 < record["distill_loss"] < record["train_loss"]
    assert "distill_loss" not in json.loads((plain / "log.jsonl").read_text().splitlines()[0])

    split_config = load_config(recipe, [f"out={split}", *distill])
    fit(split_config, stop_after=2, progress=False)
    fit(split_config, resume=True, progress=False)
    a, b = weights(straight), weights(split)
    for key in a:
        assert torch.equal(a[key], b[key]), key

    other = tmp_path / "other.safetensors"
    model, meta = load_model(teacher)
    with torch.no_grad():
        model.classifier.bias.zero_()
    save_weights(model, other, **{k: v for k, v in meta.items() if k != "model_config"})
    with pytest.raises(ConfigError, match="resume it with the distill settings it was started with"):  # another file
        fit(load_config(recipe, [f"out={split}", *distill, f"distill.teacher={other}", "epochs=5"]), resume=True,
            progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match=r"differ from its recipe: distill\.weight \(5\.0 -> 1\.0\)\. "):
        fit(load_config(recipe, [f"out={split}", *distill, "distill.weight=1", "epochs=5"]), resume=True, progress=False)
    with pytest.raises(ConfigError, match=r"distill\.weight \(5\.0 -> 1\.0\); distill\.temperature \(2\.0 -> 1\.0\)"):
        fit(load_config(recipe, [f"out={split}", "epochs=5"]), resume=True, progress=False)  # no teacher at all


def test_distillation_refuses_a_teacher_of_other_classes_or_a_missing_file(recipe, tmp_path, teacher):
    model, meta = load_model(teacher)
    renamed = tmp_path / "renamed.safetensors"
    classes = list(reversed(meta["classes"]))
    save_weights(model, renamed, **{**{k: v for k, v in meta.items() if k != "model_config"}, "classes": classes})
    with pytest.raises(ConfigError, match=r"predicts classes \[.*\], the dataset has .*same classes in the same order"):
        fit(load_config(recipe, [f"out={tmp_path / 'a'}", f"distill.teacher={renamed}"]), progress=False)
    bands = tmp_path / "bands.safetensors"  # the same classes, but read from 3 full-precision bands
    save_weights(model, bands, **{**{k: v for k, v in meta.items() if k != "model_config"}, "bands": 3})
    with pytest.raises(ConfigError, match="takes 3 full-precision bands, the dataset gives 3-channel 8-bit images"):
        fit(load_config(recipe, [f"out={tmp_path / 'c'}", f"distill.teacher={bands}"]), progress=False)
    for missing, message in [(tmp_path / "nothing.safetensors", "nothing.safetensors is not a file"),
                             (tmp_path, "is not a file"), ("no-such-model", "neither a file nor a shipped model")]:  # fmt: skip
        with pytest.raises(ConfigError, match=f"distill.teacher: .*{message}.*give a semseg checkpoint"):
            fit(load_config(recipe, [f"out={tmp_path / 'b'}", f"distill.teacher={missing}"]), progress=False)
    with pytest.raises(ConfigError, match="distill.weight and distill.temperature must be finite and > 0"):
        load_config(recipe, ["distill.temperature=0"])
    for bad in ["distill.weight=.nan", "distill.weight=.inf"]:
        with pytest.raises(ConfigError, match="distill.weight must be a finite number"):
            load_config(recipe, [bad])


def test_the_teacher_sees_its_own_normalisation(teacher):
    from semseg.config import DistillConfig
    from semseg.engine.distill import build_distiller

    model, meta = load_model(teacher)
    mean, std = [0.2, 0.3, 0.4], [0.5, 0.25, 0.2]
    distiller = build_distiller(DistillConfig(teacher=str(teacher), weight=3.0), classes=meta["classes"], mean=mean,
                                std=std, bands=None, ignore_index=255)  # fmt: skip
    x = torch.randn(2, 3, 32, 32)
    raw = x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)  # the image the dataset normalised
    as_teacher = (raw - torch.tensor(meta["mean"]).view(1, 3, 1, 1)) / torch.tensor(meta["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.eval()(as_teacher)
    torch.testing.assert_close(distiller.teacher_logits(x), expected, rtol=1e-4, atol=1e-4)
    student, masks = torch.randn_like(expected), torch.randint(0, expected.shape[1], (2, 32, 32))
    assert distiller(student, expected, masks).item() == pytest.approx(3.0 * distiller.loss(student, expected, masks).item())
    distiller.train()
    assert not distiller.teacher.training and not any(p.requires_grad for p in distiller.teacher.parameters())
    same = build_distiller(DistillConfig(teacher=str(teacher)), classes=meta["classes"], mean=meta["mean"],
                           std=meta["std"], bands=None, ignore_index=255)  # fmt: skip
    assert same.scale is None
