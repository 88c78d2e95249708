"""Embedding model: RBR on both timm residual block types, and local weights files."""

import pytest
import timm
import torch

from harness.config import ModelConfig
from harness.errors import ConfigError
from harness.model import apply_rbr, build_model


def last_block_output(backbone, images):
    captured = {}
    block = backbone.layer4[-1]
    handle = block.register_forward_hook(lambda module, inputs, output: captured.setdefault("out", output))
    backbone.eval()
    with torch.no_grad():
        backbone.forward_features(images)
    handle.remove()
    return captured["out"]


@pytest.mark.parametrize("name, norm, act", [("resnet10t", "bn2", "act2"), ("resnet26", "bn3", "act3")])
def test_rbr_removes_last_bn_and_relu(name, norm, act):
    torch.manual_seed(0)
    backbone = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
    images = torch.randn(2, 3, 64, 64)
    assert last_block_output(backbone, images).min() >= 0

    apply_rbr(backbone, "bn_relu")
    block = backbone.layer4[-1]
    assert isinstance(getattr(block, norm), torch.nn.Identity)
    assert isinstance(getattr(block, act), torch.nn.Identity)
    assert isinstance(block.downsample, torch.nn.Module) or block.downsample is None
    assert last_block_output(backbone, images).min() < 0


def test_rbr_relu_variant_keeps_bn():
    backbone = timm.create_model("resnet10t", pretrained=False, num_classes=0, global_pool="")
    apply_rbr(backbone, "relu")
    block = backbone.layer4[-1]
    assert isinstance(block.bn2, torch.nn.BatchNorm2d)
    assert isinstance(block.act2, torch.nn.Identity)


def test_rbr_rejects_non_resnet():
    backbone = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=0)
    with pytest.raises(ConfigError, match="model.rbr needs a timm ResNet"):
        apply_rbr(backbone)


def test_embedding_shapes_per_pooling():
    images = torch.randn(2, 3, 32, 32)
    for pooling in ("avg", "max", "avgmax"):
        model = build_model(ModelConfig(backbone="resnet10t", pooling=pooling, embedding_dim=24))
        assert model(images).shape == (2, 24)
    model = build_model(ModelConfig(backbone="resnet10t", embedding_dim=0))
    assert model(images).shape == (2, 512)


def test_unknown_backbone_suggests_names():
    with pytest.raises(ConfigError, match="not a timm model name.*resnet10t"):
        build_model(ModelConfig(backbone="resnet10"))


def test_weights_file_loads(tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    model = build_model(ModelConfig(backbone="resnet10t", pretrained=str(path), embedding_dim=8))
    assert torch.equal(model.backbone.conv1[0].weight, source.conv1[0].weight)


def test_weights_file_missing(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        build_model(ModelConfig(backbone="resnet10t", pretrained=str(tmp_path / "none.pth")))


def test_weights_of_other_architecture_name_keys(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(ConfigError, match="missing keys: .*conv1.0.weight"):
        build_model(ModelConfig(backbone="resnet10t", pretrained=str(path)))


def test_weights_file_with_pickled_object_rejected(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": object()}, path)
    with pytest.raises(ConfigError, match="weights-only"):
        build_model(ModelConfig(backbone="resnet10t", pretrained=str(path)))
