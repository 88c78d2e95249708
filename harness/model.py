"""Embedding model: a timm backbone, global pooling and an optional linear layer."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from harness.config import ModelConfig
from harness.errors import ConfigError


class EmbeddingModel(nn.Module):
    """Backbone feature map, then global pooling, then an optional bias-free linear embedding."""

    def __init__(self, backbone: nn.Module, pooling: str, embedding_dim: int, layer_norm: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        feature_dim = backbone.num_features
        self.norm = nn.LayerNorm(feature_dim, elementwise_affine=False) if layer_norm else nn.Identity()
        self.embedding = nn.Linear(feature_dim, embedding_dim, bias=False) if embedding_dim else nn.Identity()
        self.embedding_dim = embedding_dim or feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feature_map = self.backbone.forward_features(images)
        if self.pooling == "avg":
            pooled = feature_map.mean(dim=(2, 3))
        elif self.pooling == "max":
            pooled = feature_map.amax(dim=(2, 3))
        else:
            pooled = feature_map.mean(dim=(2, 3)) + feature_map.amax(dim=(2, 3))
        return self.embedding(self.norm(pooled))

    def head_parameters(self) -> list[nn.Parameter]:
        """Return the parameters that are new on top of the backbone."""
        return list(self.embedding.parameters())


def apply_rbr(backbone: nn.Module, variant: str = "bn_relu") -> None:
    """Remove the last BatchNorm and ReLU of a timm ResNet, in place.

    The last residual block is found by role, not by class: its final
    convolution ``convN`` is followed by the normalization ``bnN`` and, after
    the residual addition, by the activation ``actN`` (timm's Bottleneck has
    N = 3, BasicBlock N = 2). The ``bn_relu`` variant replaces both with
    identities; ``relu`` replaces only the activation. The shortcut's own
    BatchNorm stays.
    """
    stages = [getattr(backbone, name, None) for name in ("layer4", "layer3", "layer2", "layer1")]
    last_stage = next((stage for stage in stages if stage is not None), None)
    if last_stage is None or not isinstance(last_stage, nn.Sequential) or len(last_stage) == 0:
        raise ConfigError(
            f"model.rbr needs a timm ResNet with residual stages layer1..layer4; "
            f"{type(backbone).__name__} has none. Set model.rbr=false or pick a ResNet backbone."
        )
    block = last_stage[-1]
    conv_numbers = sorted(
        int(name[4:]) for name, _ in block.named_children() if name.startswith("conv") and name[4:].isdigit()
    )
    if not conv_numbers:
        raise ConfigError(f"model.rbr: the last block ({type(block).__name__}) has no conv1..convN layers.")
    last = conv_numbers[-1]
    for name in ([f"bn{last}", f"act{last}"] if variant == "bn_relu" else [f"act{last}"]):
        if not isinstance(getattr(block, name, None), nn.Module):
            raise ConfigError(f"model.rbr: the last block ({type(block).__name__}) has no layer '{name}' to remove.")
        setattr(block, name, nn.Identity())


def load_backbone_weights(backbone: nn.Module, path: str) -> None:
    """Load backbone weights from a local file, reading tensors only (no arbitrary unpickling).

    Classifier weights in the file are ignored; any other missing or
    unexpected key is an error that names the keys.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"model.pretrained: weights file {file} not found. Pass an existing local file.")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for foreign or corrupt files
            raise ConfigError(f"model.pretrained: cannot read {file} as a weights-only checkpoint: {error}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    classifier_prefixes = ("fc.", "head.fc.", "classifier.")
    state = {key: value for key, value in state.items() if not key.startswith(classifier_prefixes)}
    expected = backbone.state_dict()
    missing = sorted(key for key in expected if key not in state)
    unexpected = sorted(key for key in state if key not in expected)
    if missing or unexpected:
        raise ConfigError(
            f"model.pretrained: {file} does not match the backbone; missing keys: {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}; unexpected keys: {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}."
        )
    shape_errors = [key for key in expected if expected[key].shape != state[key].shape]
    if shape_errors:
        raise ConfigError(f"model.pretrained: {file} has tensors of the wrong shape for keys {shape_errors[:8]}.")
    backbone.load_state_dict(state)


def build_model(config: ModelConfig) -> EmbeddingModel:
    """Create the embedding model described by ``config``."""
    if not timm.is_model(config.backbone):
        similar = timm.list_models(f"*{config.backbone}*")[:8]
        hint = (
            f" Similar timm names: {', '.join(similar)}."
            if similar
            else " List names with: python -c \"import timm; print(timm.list_models('resnet*'))\"."
        )
        raise ConfigError(f"model.backbone: '{config.backbone}' is not a timm model name.{hint}")
    kwargs = {"pretrained": False, "num_classes": 0, "global_pool": ""}
    if config.output_stride != 32:
        kwargs["output_stride"] = config.output_stride
    try:
        backbone = timm.create_model(config.backbone, **kwargs)
    except (TypeError, AssertionError, ValueError) as error:
        reason = f": {error}" if str(error) else ""
        raise ConfigError(
            f"model: timm cannot build '{config.backbone}' with output_stride={config.output_stride}{reason}. "
            "timm ResNets accept 8, 16 or 32."
        ) from None

    if config.pretrained:
        load_backbone_weights(backbone, config.pretrained)
    if config.rbr:
        apply_rbr(backbone, config.rbr_variant)
    model = EmbeddingModel(backbone, config.pooling, config.embedding_dim, config.layer_norm)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def file_sha256(path: str) -> str:
    """Return the sha256 of a file as hex, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def l2_normalize(embeddings: torch.Tensor) -> torch.Tensor:
    """Scale each row to unit L2 norm."""
    return F.normalize(embeddings, dim=1)
