"""Protocol loading, overrides and the config hash."""

import pytest

from harness.config import (
    check_overrides,
    load_protocol,
    parse_overrides,
    resolve_config,
    run_id_for,
)
from harness.errors import ConfigError


def resolve(loss="sgsl", items=(), losses=None):
    protocol = load_protocol(None, "digits")
    overrides = parse_overrides(list(items))
    check_overrides(overrides, losses or [loss])
    return resolve_config(protocol, "digits", loss, overrides)


def test_default_protocol_resolves_every_section():
    config = resolve()
    assert config.protocol == "default"
    assert config.data.dataset == "digits"
    assert config.model.backbone == "resnet10t"
    assert config.eval.k == (1, 2, 4, 8)
    assert config.loss.kwargs() == {
        "gamma_1": 1.0,
        "gamma_2": 16.0,
        "sgsl_weight": 1.0,
        "normalize_stopped_weights": False,
        "stop_gradient": True,
    }


def test_config_is_frozen():
    config = resolve()
    with pytest.raises(AttributeError):
        config.train.epochs = 3


def test_hash_stable_and_sensitive():
    assert resolve().config_hash == resolve().config_hash
    assert resolve(items=["train.epochs=3"]).config_hash != resolve().config_hash
    assert resolve(items=["loss.gamma_2=32"]).config_hash != resolve().config_hash


def test_hash_ignores_output_only_settings():
    assert resolve(items=["train.device='cpu'"]).config_hash == resolve().config_hash
    assert resolve(items=["eval.batch_size=7"]).config_hash == resolve().config_hash


def test_run_id_names_dataset_loss_hash_seed():
    config = resolve()
    assert run_id_for(config, 3) == f"digits-sgsl-{config.config_hash[:12]}-s3"


def test_overrides_parse_toml_values():
    config = resolve(items=["eval.k=[1,2,4]", "model.rbr=true", "loss.gamma_2=32", "model.backbone=resnet18"])
    assert config.eval.k == (1, 2, 4)
    assert config.model.rbr is True
    assert config.loss.kwargs()["gamma_2"] == 32.0
    assert config.model.backbone == "resnet18"


def test_loss_key_skipped_for_losses_without_it():
    config = resolve(loss="softmax", items=["loss.gamma_2=32"], losses=["sgsl", "softmax"])
    assert config.loss.kwargs() == {}


@pytest.mark.parametrize(
    "item, losses, message",
    [
        ("train.epoch=3", ["sgsl"], "unknown key 'train.epoch'.*train.epochs"),
        ("trian.epochs=3", ["sgsl"], "unknown section 'trian'"),
        ("train.epochs=three", ["sgsl"], "train.epochs: expected a value of type int"),
        ("train.epochs=0", ["sgsl"], "at least 1"),
        ("train.lr=true", ["sgsl"], "expected a value of type float"),
        ("eval.k=[]", ["sgsl"], "non-empty list"),
        ("model.pooling='mean'", ["sgsl"], "allowed values: avg, max, avgmax"),
        ("loss.gamma_2=32", ["softmax"], "unknown key for loss softmax"),
        ("loss.gamma_2='big'", ["sgsl"], "expected a value of type float"),
        ("loss.name='softmax'", ["sgsl"], "set by --loss"),
        ("data.dataset='cub'", ["sgsl"], "set by --dataset"),
        ("train.epochs", ["sgsl"], "expected SECTION.KEY=VALUE"),
    ],
)
def test_bad_overrides_rejected(item, losses, message):
    with pytest.raises(ConfigError, match=message):
        check_overrides(parse_overrides([item]), losses)


@pytest.mark.parametrize(
    "loss, item, message",
    [
        ("sgsl", "loss.gamma_2=-5", r"loss.gamma_2: invalid value -5.0 for loss 'sgsl'; expected a value > 0.0"),
        ("sgsl", "loss.gamma_1=0", r"loss.gamma_1: invalid value 0.0 .* > 0.0. Its default is 1.0"),
        ("sgsl", "loss.sgsl_weight=-0.1", r"loss.sgsl_weight: .* >= 0.0"),
        ("normsoftmax", "loss.temperature=0", "loss.temperature"),
        ("soft_triple", "loss.centers_per_class=0", r"loss.centers_per_class: invalid value 0 .* >= 1"),
        ("triplet", "loss.margin=-0.2", "loss.margin"),
    ],
)
def test_out_of_range_loss_values_rejected(loss, item, message):
    with pytest.raises(ConfigError, match=message):
        resolve(loss=loss, items=[item])


def test_zero_sgsl_weight_allowed():
    # Weight 0 is the plain-softmax ablation of SGSL.
    assert resolve(items=["loss.sgsl_weight=0"]).loss.kwargs()["sgsl_weight"] == 0.0


def test_loss_bounds_name_real_hyperparameters_and_hold_defaults():
    from harness.config import loss_hyperparameters
    from losses import LOSSES

    for name, cls in LOSSES.items():
        defaults = loss_hyperparameters(name)
        own = {key: bound for key, bound in getattr(cls, "hyperparameter_bounds", {}).items() if key in defaults}
        inherited = set(getattr(cls, "hyperparameter_bounds", {})) - set(own)
        assert inherited <= {"temperature"}, name  # l2softmax fixes the temperature it inherits
        for key, (operator, limit) in own.items():
            assert operator in (">", ">="), (name, key)
            assert defaults[key] > limit if operator == ">" else defaults[key] >= limit, (name, key)


def test_protocol_file_path_and_folder(tmp_path):
    text = "[protocol]\nname = 'mine'\nversion = '2'\n[data]\ndataset = 'digits'\n[train]\nepochs = 2\n"
    (tmp_path / "digits.toml").write_text(text)
    from_file = load_protocol(str(tmp_path / "digits.toml"), "digits")
    from_folder = load_protocol(str(tmp_path), "digits")
    assert from_file.name == from_folder.name == "mine"
    assert resolve_config(from_file, "digits", "sgsl", {}).train.epochs == 2


def test_malformed_protocol_names_file_and_line(tmp_path):
    path = tmp_path / "digits.toml"
    path.write_text("[protocol]\nname = 'x'\nversion = '1'\n[train]\nepochs = = 3\n")
    with pytest.raises(ConfigError, match=r"digits.toml is not valid TOML.*line 5"):
        load_protocol(str(path), "digits")


def test_protocol_unknown_key_names_line(tmp_path):
    path = tmp_path / "digits.toml"
    path.write_text("[protocol]\nname = 'x'\nversion = '1'\n[train]\nepochs = 3\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"line 6: unknown key 'train.learning_rate'"):
        load_protocol(str(path), "digits")


def test_protocol_for_other_dataset_rejected(tmp_path):
    path = tmp_path / "cub.toml"
    path.write_text("[protocol]\nname = 'x'\nversion = '1'\n[data]\ndataset = 'cub'\n")
    with pytest.raises(ConfigError, match="is for dataset 'cub', not 'digits'"):
        load_protocol(str(path), "digits")


def test_missing_protocol_rejected():
    with pytest.raises(ConfigError, match="protocol 'nonexistent' not found.*default"):
        load_protocol("nonexistent", "digits")


def test_protocol_without_header_rejected(tmp_path):
    path = tmp_path / "digits.toml"
    path.write_text("[train]\nepochs = 3\n")
    with pytest.raises(ConfigError, match=r"needs a \[protocol\] table"):
        load_protocol(str(path), "digits")


def test_settings_doc_lists_every_setting():
    import dataclasses
    import json
    from pathlib import Path

    from harness.config import CLI_ONLY_KEYS, SECTION_TYPES

    text = (Path(__file__).resolve().parent.parent / "docs" / "settings.md").read_text()
    for section, section_type in SECTION_TYPES.items():
        for f in dataclasses.fields(section_type):
            if (section, f.name) in CLI_ONLY_KEYS or f.name == "hyperparameters":
                continue
            default = list(f.default) if isinstance(f.default, tuple) else f.default
            row = f"| `{section}.{f.name}` | `{json.dumps(default)}` | {f.metadata['help']} |"
            assert row in text, f"docs/settings.md lacks or misstates {section}.{f.name}"
