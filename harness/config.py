"""Run configuration: a protocol file plus overrides, resolved into one frozen object.

A protocol is one TOML file per dataset with the sections ``data``,
``model``, ``loss``, ``train`` and ``eval`` (and a ``protocol`` header with
its name and version). ``--set section.key=value`` overrides any value; the
value is parsed as TOML. The resolved :class:`RunConfig` is hashed, and the
hash names the run's folder together with the dataset, loss and seed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from losses import LOSSES, PAPER_LR_MULTIPLIERS

PROTOCOLS_DIR = Path(__file__).parent / "protocols"
SECTIONS = ("data", "model", "loss", "train", "eval")


def _setting(default: Any, help: str, choices: tuple[str, ...] | None = None, minimum: float | None = None):
    """Declare a config field with its help text, allowed values and lower bound."""
    return field(default=default, metadata={"help": help, "choices": choices, "minimum": minimum})


@dataclass(frozen=True)
class DataConfig:
    """Dataset, image pipeline, batching and validation split."""

    dataset: str = _setting("digits", "dataset name; set by --dataset")
    image_size: int = _setting(
        224, "side of the square network input in pixels (the crop size for photo datasets)", minimum=8
    )
    resize: tuple[int, ...] = _setting(
        (256, 256), "first resize of photos: [S] sets the shorter side to S, [H, W] resizes exactly", minimum=1
    )
    train_crop: str = _setting(
        "random_crop",
        "training crop: random_crop of the resized image, or random_resized_crop of the decoded image",
        choices=("random_crop", "random_resized_crop"),
    )
    flip: bool = _setting(True, "random horizontal flip in training")
    cache: bool = _setting(False, "read photos from an on-disk cache of the first resize (built once)")
    num_workers: int = _setting(-1, "DataLoader worker processes; -1 uses the CPU count, at most 8", minimum=-1)
    batch_size: int = _setting(64, "training batch size in images", minimum=2)
    sampler: str = _setting(
        "random",
        "batch sampling: random, or class_balanced (images_per_class images of each class per batch)",
        choices=("random", "class_balanced"),
    )
    images_per_class: int = _setting(8, "images of each class per batch with the class_balanced sampler", minimum=2)
    val_fraction: float = _setting(
        0.0, "fraction of the training classes (the last ones by class id) held out as a validation split", minimum=0
    )

    @property
    def cache_is_deviation(self) -> bool:
        """Tell whether the cache changes the training pixels (a first step that is not an exact resize)."""
        return self.cache and not (self.train_crop == "random_crop" and len(self.resize) == 2)


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and embedding head."""

    backbone: str = _setting("resnet50", "timm model name")
    pretrained: str = _setting("", "path of a local weights file for the backbone; empty for random initialization")
    output_stride: int = _setting(32, "backbone output stride (timm ResNets accept 8, 16 or 32)", minimum=1)
    pooling: str = _setting("avg", "global pooling of the feature map", choices=("avg", "max", "avgmax"))
    embedding_dim: int = _setting(512, "size of the linear embedding layer; 0 uses the pooled features", minimum=0)
    rbr: bool = _setting(False, "remove the last BatchNorm and ReLU of the backbone (RBR)")
    rbr_variant: str = _setting(
        "bn_relu",
        "bn_relu drops the last block's final normalization and activation; relu drops only the activation",
        choices=("bn_relu", "relu"),
    )
    layer_norm: bool = _setting(False, "LayerNorm without affine parameters on the pooled features")
    channels_last: bool = _setting(False, "run the backbone in channels-last memory format")
    compile: bool = _setting(False, "wrap the model in torch.compile")


@dataclass(frozen=True)
class LossConfig:
    """Loss name, the learning-rate multiplier of its parameters, and its hyperparameters."""

    name: str = _setting("sgsl", "loss name; set by --loss")
    lr_multiplier: float = _setting(
        1.0,
        "learning rate of the loss's own parameters (class weights, proxies) relative to train.lr; "
        "-1 uses the multiplier of the loss's paper",
        minimum=-1,
    )
    hyperparameters: tuple[tuple[str, Any], ...] = _setting((), "the loss's constructor arguments")

    def kwargs(self) -> dict[str, Any]:
        """Return the hyperparameters as constructor keyword arguments."""
        return dict(self.hyperparameters)


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer and length of training."""

    epochs: int = _setting(8, "number of training epochs, warm-up epochs included", minimum=1)
    warmup_epochs: int = _setting(
        0, "first epochs that train only the new parameters (head, loss); the backbone is frozen", minimum=0
    )
    optimizer: str = _setting("adamw", "optimizer", choices=("sgd", "adam", "adamw"))
    lr: float = _setting(1e-3, "base learning rate of the backbone", minimum=0)
    head_lr_multiplier: float = _setting(1.0, "learning rate of the embedding head relative to train.lr", minimum=0)
    weight_decay: float = _setting(1e-4, "weight decay", minimum=0)
    momentum: float = _setting(0.9, "SGD momentum", minimum=0)
    adam_eps: float = _setting(1e-8, "epsilon of Adam and AdamW", minimum=0)
    schedule: str = _setting(
        "constant",
        "learning-rate schedule per epoch: constant, step (x lr_decay every step_size epochs), "
        "multistep (x lr_decay after each epoch in milestones) or cosine (to 0 at the last epoch)",
        choices=("constant", "step", "multistep", "cosine"),
    )
    lr_decay: float = _setting(0.1, "factor of the step and multistep schedules", minimum=0)
    step_size: int = _setting(10, "epochs between decays of the step schedule", minimum=1)
    milestones: tuple[int, ...] = _setting((1000,), "epochs after which the multistep schedule decays", minimum=1)
    grad_clip_norm: float = _setting(0.0, "clip the gradient norm to this value; 0 disables", minimum=0)
    grad_clip_value: float = _setting(0.0, "clip each gradient element to +-this value; 0 disables", minimum=0)
    freeze_bn: str = _setting(
        "none",
        "BatchNorm of the backbone: none, stats (running statistics frozen) or stats_affine (also scale and shift)",
        choices=("none", "stats", "stats_affine"),
    )
    precision: str = _setting(
        "auto", "auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16", choices=("auto", "fp32", "bf16")
    )
    device: str = _setting("auto", "auto (CUDA if available, else CPU), cpu or cuda", choices=("auto", "cpu", "cuda"))


@dataclass(frozen=True)
class EvalConfig:
    """Retrieval evaluation."""

    k: tuple[int, ...] = _setting((1, 2, 4, 8), "the K values of Recall@K", minimum=1)
    nmi: bool = _setting(True, "compute NMI of k-means with k = number of test classes")
    kmeans_restarts: int = _setting(
        3, "k-means runs for NMI; the lowest objective is kept (pytorch-metric-learning runs 1)", minimum=1
    )
    batch_size: int = _setting(256, "batch size for computing embeddings", minimum=1)
    every_epochs: int = _setting(
        1, "evaluate validation and test splits every this many epochs for model selection; 0 only at the end", minimum=0
    )
    selection: str = _setting(
        "last",
        "primary model selection, whose embeddings are stored: last, best-val or best-test (optimistic)",
        choices=("last", "best-val", "best-test"),
    )
    selection_metric: str = _setting("recall@1", "metric that best-val and best-test maximize")
    memory_mb: float = _setting(
        1024.0, "approximate memory budget of the chunked neighbour search in MiB; results do not depend on it", minimum=1
    )
    embedding_dtype: str = _setting(
        "float16", "dtype of stored embeddings; metrics are computed from them as stored", choices=("float16", "float32")
    )
    search: str = _setting(
        "auto",
        "where the evaluation's score blocks are computed: auto (a faiss GPU if faiss detects one, else cpu), "
        "cpu (NumPy BLAS) or gpu (faiss on GPU 0); results differ only by float rounding",
        choices=("auto", "cpu", "gpu"),
    )


# Settings that cannot change a run's numbers beyond float rounding and are
# left out of the config hash, so that one run id covers them.
# The cache is left out too unless it changes the training pixels.
HASH_EXCLUDED = {
    ("train", "device"),
    ("eval", "batch_size"),
    ("data", "num_workers"),
    ("model", "channels_last"),
    ("model", "compile"),
    ("eval", "memory_mb"),
    ("eval", "search"),
}

SECTION_TYPES: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
}
# Settings that control how the harness runs or reports, not what a paper or
# recipe trains; changing one keeps a run comparable with the protocol.
HARNESS_SETTINGS = {
    "data.cache",
    "data.num_workers",
    "model.channels_last",
    "model.compile",
    "train.device",
    "eval.batch_size",
    "eval.every_epochs",
    "eval.embedding_dtype",
    "eval.kmeans_restarts",
    "eval.memory_mb",
    "eval.nmi",
    "eval.search",
    "eval.selection_metric",
}
# Keys fixed by command-line options rather than by protocol or --set.
CLI_ONLY_KEYS = {("data", "dataset"): "--dataset", ("loss", "name"): "--loss"}


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one run except its seed."""

    protocol: str
    protocol_version: str
    data: DataConfig
    model: ModelConfig
    loss: LossConfig
    train: TrainConfig
    eval: EvalConfig

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain JSON-compatible data."""
        result = dataclasses.asdict(self)
        result["loss"]["hyperparameters"] = dict(self.loss.hyperparameters)
        for section in SECTIONS:
            for key, value in result[section].items():
                if isinstance(value, tuple):
                    result[section][key] = list(value)
        return result

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        """Rebuild a config from :meth:`to_dict` output, as stored in a run's config.json."""
        sections = {}
        for section, section_type in SECTION_TYPES.items():
            hints = typing.get_type_hints(section_type)
            values = dict(data[section])
            if section == "loss":
                values["hyperparameters"] = tuple(sorted(values["hyperparameters"].items()))
            known = {f.name for f in dataclasses.fields(section_type)}
            kwargs = {key: _coerce(value, hints[key]) for key, value in values.items() if key in known}
            sections[section] = section_type(**kwargs)
        return cls(protocol=data["protocol"], protocol_version=data["protocol_version"], **sections)

    def hash_payload(self) -> dict[str, Any]:
        """Return the part of the config that the hash covers."""
        payload = {section: dict(self.to_dict()[section]) for section in SECTIONS}
        payload["protocol"] = {"name": self.protocol, "version": self.protocol_version}
        if self.model.pretrained:
            # The weights' contents identify them; the same file at another path is the same run.
            payload["model"]["pretrained"] = _weights_digest(self.model.pretrained)
        for section, key in HASH_EXCLUDED:
            payload[section].pop(key, None)
        if not self.data.cache_is_deviation:
            payload["data"].pop("cache", None)
        return payload

    @property
    def config_hash(self) -> str:
        """Return the sha256 of the settings that can change a result, as hex."""
        text = json.dumps(self.hash_payload(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def flat(self) -> dict[str, Any]:
        """Return ``section.key`` to value, with loss hyperparameters flattened in."""
        return flatten_config(self.to_dict())


def flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    """Turn :meth:`RunConfig.to_dict` output into ``section.key`` to value, loss hyperparameters as ``loss.<name>``."""
    flat: dict[str, Any] = {}
    for section, values in config.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if section == "loss" and key == "hyperparameters":
                for name, hyper in value.items():
                    flat[f"loss.{name}"] = hyper
            else:
                flat[f"{section}.{key}"] = value
    return flat


@functools.lru_cache(maxsize=32)
def _digest_of(path: str, size: int, modified_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def _weights_digest(path: str) -> str:
    """Return the sha256 of a weights file, cached by path, size and modification time; a missing file keeps its path."""
    file = Path(path).expanduser()
    if not file.is_file():
        return path
    stat = file.stat()
    return _digest_of(str(file.resolve()), stat.st_size, stat.st_mtime_ns)


def run_id_for(config: RunConfig, seed: int) -> str:
    """Return the folder name of a run: dataset, loss, config hash prefix and seed."""
    return f"{config.data.dataset}-{config.loss.name}-{config.config_hash[:12]}-s{seed}"


def unused_settings(config: RunConfig) -> dict[str, str]:
    """Return ``section.key`` to the reason, for settings that this config's other choices leave unused."""
    train, unused = config.train, {}
    if train.optimizer == "sgd":
        unused["train.adam_eps"] = "train.optimizer is sgd"
    else:
        unused["train.momentum"] = f"train.optimizer is {train.optimizer}"
    if train.schedule in ("constant", "cosine"):
        unused["train.lr_decay"] = f"train.schedule is {train.schedule}"
    if train.schedule != "step":
        unused["train.step_size"] = f"train.schedule is {train.schedule}"
    if train.schedule != "multistep":
        unused["train.milestones"] = f"train.schedule is {train.schedule}"
    if not config.model.rbr:
        unused["model.rbr_variant"] = "model.rbr is false"
    if config.data.sampler != "class_balanced":
        unused["data.images_per_class"] = f"data.sampler is {config.data.sampler}"
    return unused


def loss_hyperparameters(loss_name: str) -> dict[str, Any]:
    """Return a loss's hyperparameter names with their defaults, read from its constructor."""
    signature = inspect.signature(LOSSES[loss_name].__init__)
    skipped = {"self", "num_classes", "embedding_dim"}
    return {name: p.default for name, p in signature.parameters.items() if name not in skipped}


def setting_help() -> dict[str, str]:
    """Return ``section.key`` to help text for every setting that a protocol or --set may change."""
    helps = {}
    for section, section_type in SECTION_TYPES.items():
        for f in dataclasses.fields(section_type):
            if (section, f.name) in CLI_ONLY_KEYS or f.name == "hyperparameters":
                continue
            helps[f"{section}.{f.name}"] = f.metadata["help"]
    return helps


# ---------------------------------------------------------------------------
# Protocols


@dataclass(frozen=True)
class Protocol:
    """One protocol file: its name, version, path and raw sections."""

    name: str
    version: str
    path: Path
    sections: dict[str, dict[str, Any]]
    assumed: dict[str, str] = field(default_factory=dict)
    description: str = ""


def shipped_protocols() -> dict[str, list[str]]:
    """Return each shipped protocol's name with the datasets it has files for."""
    found = {}
    for directory in sorted(PROTOCOLS_DIR.iterdir()):
        if directory.is_dir():
            datasets = sorted(p.stem for p in directory.glob("*.toml"))
            if datasets:
                found[directory.name] = datasets
    return found


# The protocol each dataset runs under unless --protocol names another.
DEFAULT_PROTOCOLS = {"digits": "default", "cub": "sgsl-paper", "cars": "sgsl-paper", "sop": "sgsl-paper", "inshop": "sgsl-paper"}


def locate_protocol(spec: str | None, dataset: str) -> Path:
    """Find the protocol file for a dataset from a shipped name, a file path or a folder path."""
    name = spec or DEFAULT_PROTOCOLS.get(dataset, "default")
    shipped = shipped_protocols()
    if name in shipped:
        path = PROTOCOLS_DIR / name / f"{dataset}.toml"
        if not path.exists():
            raise ConfigError(
                f"protocol '{name}' has no file for dataset '{dataset}'; it covers: {', '.join(shipped[name])}."
            )
        return path

    path = Path(name).expanduser()
    if path.is_dir():
        candidate = path / f"{dataset}.toml"
        if not candidate.exists():
            raise ConfigError(f"protocol folder {path} has no file {candidate.name} for dataset '{dataset}'.")
        return candidate
    if path.is_file():
        return path
    raise ConfigError(
        f"protocol '{name}' not found: it is neither a shipped protocol ({', '.join(shipped)}) "
        f"nor an existing file or folder. Pass --protocol NAME or --protocol PATH/TO/FILE.toml."
    )


def _line_of_key(text: str, key: str) -> int | None:
    """Return the 1-based line that assigns ``key`` in TOML text, if one does."""
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        if pattern.match(line):
            return number
    return None


def load_protocol(spec: str | None, dataset: str) -> Protocol:
    """Load and check the protocol file for a dataset.

    Raises:
        ConfigError: the file is missing, is not valid TOML, names another
            dataset, or contains an unknown section or key or a value of the
            wrong type. The message names the file and, where known, the line.
    """
    path = locate_protocol(spec, dataset)
    text = path.read_text(encoding="utf-8")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        if "end of document" in message:
            message += f", line {len(text.splitlines())}"
        raise ConfigError(f"protocol file {path} is not valid TOML: {message}.") from None

    header = raw.pop("protocol", {})
    assumed = raw.pop("assumed", {})
    if not isinstance(header, dict) or "name" not in header or "version" not in header:
        raise ConfigError(f"protocol file {path} needs a [protocol] table with 'name' and 'version'.")

    for section, values in raw.items():
        if section not in SECTIONS or not isinstance(values, dict):
            line = _line_of_key(text, section) or _find_table_line(text, section)
            where = f" (line {line})" if line else ""
            raise ConfigError(
                f"protocol file {path}{where}: unknown section '{section}'; "
                f"allowed sections: protocol, assumed, {', '.join(SECTIONS)}."
            )

    file_dataset = raw.get("data", {}).get("dataset", dataset)
    if file_dataset != dataset:
        raise ConfigError(
            f"protocol file {path} is for dataset '{file_dataset}', not '{dataset}'. "
            f"Pass the file for '{dataset}' or a protocol folder that contains {dataset}.toml."
        )

    all_loss_keys = {"lr_multiplier"}
    for loss_name in LOSSES:
        all_loss_keys |= set(loss_hyperparameters(loss_name))
    for section, values in raw.items():
        for key, value in values.items():
            if (section, key) == ("data", "dataset"):
                continue
            where = f"protocol file {path}"
            line = _line_of_key(text, key)
            if line:
                where += f" line {line}"
            if section == "loss" and key != "lr_multiplier":
                if key not in all_loss_keys:
                    raise ConfigError(
                        f"{where}: unknown key 'loss.{key}'; loss keys: {', '.join(sorted(all_loss_keys))}."
                    )
                continue
            check_setting(section, key, value, where)

    settable = set(setting_help()) | {f"loss.{key}" for key in all_loss_keys}
    for key, reason in assumed.items():
        if key not in settable or not isinstance(reason, str):
            raise ConfigError(
                f"protocol file {path}: [assumed] entry '{key}' must name a setting (section.key) "
                "and give its reason as a string."
            )
    return Protocol(
        name=str(header["name"]),
        version=str(header["version"]),
        path=path,
        sections=raw,
        assumed=dict(assumed),
        description=str(header.get("description", "")),
    )


def _find_table_line(text: str, section: str) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() == f"[{section}]":
            return number
    return None


# ---------------------------------------------------------------------------
# Overrides and type checks


def parse_overrides(items: list[str]) -> dict[tuple[str, str], Any]:
    """Parse ``section.key=value`` strings, reading each value as TOML.

    A value that is not valid TOML (a bare word such as ``resnet18``) is kept
    as a string, and the type check later rejects it where a string is invalid.
    """
    overrides: dict[tuple[str, str], Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set '{item}' is invalid: expected SECTION.KEY=VALUE, for example train.epochs=3.")
        dotted, text = item.split("=", 1)
        dotted = dotted.strip()
        if dotted.count(".") != 1:
            raise ConfigError(
                f"--set '{item}' is invalid: the key must be SECTION.KEY with a section among {', '.join(SECTIONS)}."
            )
        section, key = dotted.split(".")
        try:
            value = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            value = text
        overrides[(section, key)] = value
    return overrides


def check_overrides(overrides: dict[tuple[str, str], Any], loss_names: list[str]) -> None:
    """Reject an override whose key no selected loss or section has, or whose value has the wrong type."""
    for (section, key), value in overrides.items():
        where = f"--set {section}.{key}"
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section '{section}'; allowed sections: {', '.join(SECTIONS)}.")
        if (section, key) in CLI_ONLY_KEYS:
            raise ConfigError(f"{where}: this value is set by {CLI_ONLY_KEYS[(section, key)]}, not by --set.")
        if section == "loss" and key != "lr_multiplier":
            accepted = {name for name in loss_names if key in loss_hyperparameters(name)}
            if not accepted:
                allowed = {"lr_multiplier"}
                for name in loss_names:
                    allowed |= set(loss_hyperparameters(name))
                raise ConfigError(
                    f"{where}: unknown key for loss {', '.join(loss_names)}; "
                    f"allowed loss keys: {', '.join(sorted(allowed))}."
                )
            for name in accepted:
                default = loss_hyperparameters(name)[key]
                _check_value(where, value, type(default), None, None)
            continue
        check_setting(section, key, value, where)


def check_setting(section: str, key: str, value: Any, where: str) -> None:
    """Check one section value against its field's type, allowed values and lower bound."""
    section_type = SECTION_TYPES[section]
    fields = {f.name: f for f in dataclasses.fields(section_type) if f.name != "hyperparameters"}
    for cli_section, cli_key in CLI_ONLY_KEYS:
        if cli_section == section:
            fields.pop(cli_key, None)
    if key not in fields:
        raise ConfigError(
            f"{where}: unknown key '{section}.{key}'; allowed keys: "
            f"{', '.join(f'{section}.{name}' for name in sorted(fields))}."
        )
    f = fields[key]
    field_type = typing.get_type_hints(section_type)[key]
    _check_value(where, value, field_type, f.metadata.get("choices"), f.metadata.get("minimum"))


def _check_value(where: str, value: Any, field_type: Any, choices, minimum) -> None:
    origin = typing.get_origin(field_type)
    if origin is tuple:
        item_type = typing.get_args(field_type)[0]
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}: expected a non-empty list of {item_type.__name__}, got {value!r}.")
        for item in value:
            _check_value(where, item, item_type, choices, minimum)
        return

    if field_type is bool:
        valid = isinstance(value, bool)
    elif field_type is int:
        valid = isinstance(value, int) and not isinstance(value, bool)
    elif field_type is float:
        valid = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        valid = isinstance(value, field_type)
    if not valid:
        raise ConfigError(f"{where}: expected a value of type {field_type.__name__}, got {value!r}.")
    if field_type is float and not math.isfinite(value):
        raise ConfigError(f"{where}: invalid value {value!r}; expected a finite number.")
    if choices and value not in choices:
        raise ConfigError(f"{where}: invalid value {value!r}; allowed values: {', '.join(choices)}.")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where}: invalid value {value!r}; it must be at least {minimum}.")


def resolve_config(
    protocol: Protocol, dataset: str, loss_name: str, overrides: dict[tuple[str, str], Any]
) -> RunConfig:
    """Combine a protocol, a loss and checked overrides into a frozen :class:`RunConfig`.

    Loss hyperparameters come from the loss's constructor defaults, then from
    the protocol's ``[loss]`` table, then from overrides. A key that this loss
    does not take is skipped, since one protocol serves every loss.
    """
    if loss_name not in LOSSES:
        raise ConfigError(f"unknown loss '{loss_name}'; available losses: {', '.join(LOSSES)}.")

    merged: dict[str, dict[str, Any]] = {section: dict(protocol.sections.get(section, {})) for section in SECTIONS}
    for (section, key), value in overrides.items():
        merged[section][key] = value
    merged["data"]["dataset"] = dataset

    hyperparameters = loss_hyperparameters(loss_name)
    loss_values = merged["loss"]
    for key in hyperparameters:
        if key in loss_values:
            hyperparameters[key] = _coerce(loss_values[key], type(hyperparameters[key]))
    _check_loss_bounds(loss_name, hyperparameters)

    sections: dict[str, Any] = {}
    for section, section_type in SECTION_TYPES.items():
        kwargs = {}
        hints = typing.get_type_hints(section_type)
        for f in dataclasses.fields(section_type):
            if f.name in merged[section]:
                kwargs[f.name] = _coerce(merged[section][f.name], hints[f.name])
        if section == "loss":
            kwargs = {"name": loss_name, "hyperparameters": tuple(sorted(hyperparameters.items()))}
            if "lr_multiplier" in merged["loss"]:
                multiplier = float(merged["loss"]["lr_multiplier"])
                kwargs["lr_multiplier"] = PAPER_LR_MULTIPLIERS[loss_name] if multiplier < 0 else multiplier
        sections[section] = section_type(**kwargs)

    return RunConfig(protocol=protocol.name, protocol_version=protocol.version, **sections)


def _check_loss_bounds(loss_name: str, hyperparameters: dict[str, Any]) -> None:
    """Raise ConfigError for a hyperparameter outside the range that its loss declares."""
    bounds = getattr(LOSSES[loss_name], "hyperparameter_bounds", {})
    for key, (operator, limit) in bounds.items():
        if key not in hyperparameters:
            continue
        value = hyperparameters[key]
        inside = value > limit if operator == ">" else value >= limit
        if not inside or not math.isfinite(value):
            raise ConfigError(
                f"loss.{key}: invalid value {value!r} for loss '{loss_name}'; expected a value {operator} {limit}. "
                f"Its default is {loss_hyperparameters(loss_name)[key]!r}."
            )


def _coerce(value: Any, field_type: Any) -> Any:
    if typing.get_origin(field_type) is tuple:
        return tuple(value)
    if field_type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
