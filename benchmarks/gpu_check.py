"""GPU check: the sgsl-paper protocol's training step on generated images, against a plain timm loop.

Usage (on a CUDA machine, a few minutes):
    python benchmarks/gpu_check.py [--steps 300] [--batch 75] [--image-size 224]
CPU smoke test of the script itself:
    python benchmarks/gpu_check.py --device cpu --steps 2 --batch 4 --image-size 64 --backbone resnet10t

Both sides train the model that the sgsl-paper protocol builds for CUB:
ResNet-50 with RBR and a 512-d linear embedding, unless --backbone names
another. They use the SGSL loss on the same random images and labels, SGD
with momentum, bf16 autocast on CUDA and channels-last memory. The plain side
is a hand-written loop over a timm model, and the harness side is
``harness.training.train_step`` on ``harness.model.build_model``. The
script prints training images per second for both, their ratio, and the
peak GPU memory of each side. It measures and never fails on a missed target.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.config import load_protocol, parse_overrides, resolve_config  # noqa: E402
from harness.model import apply_rbr, build_model  # noqa: E402
from harness.training import train_step  # noqa: E402
from losses import SGSLLoss  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(step, steps: int, warmup: int, batch: int, device: torch.device) -> tuple[float, float]:
    """Return (images per second, peak memory in GiB) over ``steps`` steps after ``warmup`` steps."""
    for _ in range(warmup):
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    elapsed = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return steps * batch / elapsed, peak


def measure_harness(config, classes, images, labels, amp_dtype, args, device) -> tuple[float, float]:
    """Time ``harness.training.train_step`` on the model that ``build_model`` makes from the protocol."""
    torch.manual_seed(0)
    model = build_model(config.model).to(device).to(memory_format=torch.channels_last)
    loss = SGSLLoss(classes, model.embedding_dim, **config.loss.kwargs()).to(device)
    optimizer = torch.optim.SGD(list(model.parameters()) + list(loss.parameters()), lr=1e-3, momentum=0.9)
    model.train()

    def step() -> None:
        train_step(model, loss, optimizer, images, labels, amp_dtype)

    return measure(step, args.steps, args.warmup, args.batch, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per side (default 300)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (default 20)")
    parser.add_argument("--batch", type=int, default=75, help="batch size (default 75, the protocol's)")
    parser.add_argument("--image-size", type=int, default=224, help="image side in pixels (default 224)")
    parser.add_argument("--backbone", default=None, help="timm model name instead of the protocol's resnet50")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    amp_dtype = torch.bfloat16 if device.type == "cuda" else None
    torch.backends.cudnn.benchmark = True

    overrides = parse_overrides([f"model.backbone={args.backbone}"] if args.backbone else [])
    config = resolve_config(load_protocol("sgsl-paper", "cub"), "cub", "sgsl", overrides)
    classes = 100
    images = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, classes, (args.batch,), device=device)
    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}; torch {torch.__version__}")
    print(f"model: {config.model.backbone}, rbr={config.model.rbr}, embedding {config.model.embedding_dim}; "
          f"batch {args.batch} at {args.image_size} px; {'bf16 autocast' if amp_dtype else 'float32'}")

    # Harness side, in its own function so that its tensors are freed before the plain side runs.
    harness_rate, harness_peak = measure_harness(config, classes, images, labels, amp_dtype, args, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # Plain timm loop on the same architecture: pooled features, linear embedding, the same loss.
    torch.manual_seed(0)
    backbone = timm.create_model(config.model.backbone, pretrained=False, num_classes=0)
    if config.model.rbr:
        apply_rbr(backbone, config.model.rbr_variant)
    backbone = backbone.to(device)
    backbone = backbone.to(memory_format=torch.channels_last)
    head = torch.nn.Linear(backbone.num_features, config.model.embedding_dim, bias=False).to(device)
    plain_loss = SGSLLoss(classes, config.model.embedding_dim, **config.loss.kwargs()).to(device)
    parameters = list(backbone.parameters()) + list(head.parameters()) + list(plain_loss.parameters())
    plain_optimizer = torch.optim.SGD(parameters, lr=1e-3, momentum=0.9)
    backbone.train()

    def plain_step() -> None:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp_dtype is not None):
            embeddings = head(backbone(images))
        value = plain_loss(embeddings.float(), labels)
        plain_optimizer.zero_grad(set_to_none=True)
        value.backward()
        plain_optimizer.step()

    plain_rate, plain_peak = measure(plain_step, args.steps, args.warmup, args.batch, device)

    print(f"{'side':10} {'images/s':>10} {'peak GiB':>10}")
    print(f"{'plain':10} {plain_rate:10.1f} {plain_peak:10.2f}")
    print(f"{'harness':10} {harness_rate:10.1f} {harness_peak:10.2f}")
    print(f"harness / plain throughput: {harness_rate / plain_rate:.3f}")


if __name__ == "__main__":
    main()
