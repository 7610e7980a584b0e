import pytest

from semseg.config import ConfigError, TrainConfig, load_config


def write(path, text):
    path.write_text(text)
    return path


def test_defaults_round_trip():
    config = load_config()
    assert config == TrainConfig()
    assert config.to_dict()["optim"]["lr"] == 0.01


def test_yaml_base_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", "optim:\n  lr: 0.1\n  name: sgd\nepochs: 3\nmodel:\n  name: pspnet\n")
    path = write(tmp_path / "run.yaml", "base: base.yaml\noptim:\n  name: adamw\nmodel:\n  options: {backbone: resnet18}\n")
    config = load_config(path, ["--optim.lr=3e-4", "epochs=5", "--data.crop_size=[64, 96]"])
    assert config.optim.name == "adamw" and config.optim.lr == 3e-4
    assert config.epochs == 5 and config.data.crop_size == [64, 96]
    assert config.model.name == "pspnet" and config.model.options == {"backbone": "resnet18"}


def test_ints_are_accepted_for_floats():
    assert load_config(overrides=["optim.lr=1"]).optim.lr == 1.0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=0.1", "unknown key\\(s\\) optim.lrr; valid keys: optim.name, optim.lr"),
        ("optim.name=adam", "optim.name must be one of 'sgd', 'adamw', got 'adam'"),
        ("epochs=ten", "epochs must be int, got 'ten'"),
        ("epochs=true", "epochs must be int, got True"),
        ("epochs=0", "epochs must be > 0, got 0"),
        ("data.crop_size=[16, 16]", "data.crop_size must be \\[H, W\\] with both >= 32"),
        ("loss.class_weights=[1, x]", "loss.class_weights\\[1\\] must be float, got 'x'"),
        ("optim=3", "optim must be a mapping, got 3"),
        ("lr0.1", "is not of the form --key.sub=value"),
    ],
)
def test_bad_configs_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path / "bad.yaml", "optim: [\n"))
    (tmp_path / "latin1.yaml").write_bytes("data: {classes: [caf\u00e9]}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml is not valid YAML: unacceptable character"):
        load_config(tmp_path / "latin1.yaml")
    (tmp_path / "utf16.yaml").write_bytes("epochs: 2\n".encode("utf-16"))  # what PowerShell's > writes
    assert load_config(tmp_path / "utf16.yaml").epochs == 2
    write(tmp_path / "a.yaml", "epochs: 2\n")
    write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="one level of base"):
        load_config(write(tmp_path / "c.yaml", "base: b.yaml\n"))
