"""Train the shipped ``mnist-features`` extractor and write its weights, card and MNIST-train reference statistics.

    python scripts/train_mnist_features.py [--epochs 4] [--out skipsearch/assets]

CPU only, deterministic (fixed seed); a few minutes on 2 cores. Prints test accuracy and wall time.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from skipsearch.data import load_mnist
from skipsearch.models.checkpoints import file_sha256
from skipsearch.proxy.extractors import MnistFeatureNet, get_extractor
from skipsearch.proxy.stats import features_of_images, save_npz

SEED = 20240601
BATCH = 128
LR = 3e-3
SHIFT = 2  # random translation augmentation, pixels


def random_shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to SHIFT pixels (zero fill), MNIST's classic mild augmentation."""
    n, _, h, w = images.shape
    padded = F.pad(images, (SHIFT, SHIFT, SHIFT, SHIFT))
    oy = torch.randint(0, 2 * SHIFT + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * SHIFT + 1, (n,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols].unsqueeze(1)


def accuracy(net: MnistFeatureNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    net.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(images), 2000):
            logits = net(net.normalise(images[start:start + 2000]))
            correct += int((logits.argmax(1) == labels[start:start + 2000]).sum())
    return correct / len(images)


def train(epochs: int) -> tuple[MnistFeatureNet, float, float]:
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    net = MnistFeatureNet()
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    steps = epochs * ((len(x_train) + BATCH - 1) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.2)
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=generator)
        total = 0.0
        for i in range(0, len(order), BATCH):
            idx = order[i:i + BATCH]
            images = random_shift(x_train[idx], generator)
            loss = F.cross_entropy(net(net.normalise(images)), y_train[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x_train):.4f}, "
              f"test accuracy {accuracy(net, x_test, y_test):.4f}, {time.perf_counter() - start:.0f}s", flush=True)
    wall = time.perf_counter() - start
    return net, accuracy(net, x_test, y_test), wall


def calibrate(net: MnistFeatureNet) -> None:
    """Standardise every feature coordinate to zero mean, unit std on MNIST train (floors guard constant units)."""
    x_train, _ = load_mnist("train")
    net.eval()
    with torch.inference_mode():
        raw = torch.cat([net.raw_features(x_train[i:i + 5000]) for i in range(0, len(x_train), 5000)]).double()
    mean, std = raw.mean(0), raw.std(0)
    # A unit that is (nearly) constant on MNIST would otherwise turn any deviation into an unbounded distance.
    floor = 0.05 * std.median()
    net.feature_shift.copy_(mean.float())
    net.feature_scale.copy_((1 / std.clamp_min(floor)).float())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "skipsearch" / "assets")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    net, acc, wall = train(args.epochs)
    print(f"test accuracy {acc:.4f} (10000 images), training wall time {wall:.1f}s", flush=True)
    calibrate(net)

    args.out.mkdir(parents=True, exist_ok=True)
    weights = args.out / "mnist_features.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights),
              metadata={"format": "pt", "extractor": "mnist-features"})
    weights.chmod(0o644)  # safetensors writes 0600; package data must be world-readable
    card = {
        "name": "mnist-features",
        "architecture": ("conv3x3(1->16)+BN+ReLU @28 -> maxpool2 -> conv3x3(16->32)+BN+ReLU @14 -> maxpool2 -> "
                         "conv3x3(32->64)+BN+ReLU @7 -> fc(3136->128) -> ReLU -> dropout0.3 -> fc(128->10)"),
        "features": {
            "dim": MnistFeatureNet.DIM,
            "layout": ["fc1 pre-activation [0:128]", "conv1 per-channel spatial mean [128:144]",
                       "conv1 per-channel spatial std [144:160]", "conv2 per-channel spatial mean [160:192]",
                       "conv2 per-channel spatial std [192:224]",
                       "pixel stats [224:232]: mean, std, mid-gray fraction (0.1<x<0.9), bright fraction (x>=0.9), "
                       "total variation, mean |Laplacian|, border mean, border ink fraction (4-px frame)"],
            "standardisation": "per coordinate, MNIST train mean/std (std floored at 0.05 x median std)",
            "input": "uint8 [N,1,28,28]; network sees x/127.5-1",
        },
        "data": "MNIST train (60000) for training and standardisation, MNIST test (10000) for accuracy",
        "training": {"epochs": args.epochs, "batch_size": BATCH, "optimizer": "AdamW wd 1e-4, OneCycle max lr 3e-3",
                     "loss": "cross entropy, label smoothing 0.05", "augmentation": f"random shift +-{SHIFT} px",
                     "seed": SEED, "device": "cpu", "threads": args.threads},
        "test_accuracy": round(acc, 5),
        "train_wall_time_s": round(wall, 1),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "sha256": file_sha256(weights),
    }
    (args.out / "mnist_features.json").write_text(json.dumps(card, indent=2) + "\n")

    # Reference statistics through the real extractor path (sha verified against the card just written).
    extractor = get_extractor("mnist-features", weights_path=weights)
    meta = {"dataset": "mnist", "split": "train", "extractor": extractor.name,
            "weights_sha256": extractor.weights_sha256}
    stats = features_of_images(extractor, load_mnist("train")[0]).stats(meta)
    save_npz(args.out / "mnist_train_refstats.npz", stats)
    print(f"wrote {weights} (sha256 {card['sha256'][:16]}...), card, refstats (n={stats.n}, dim={stats.dim})")


if __name__ == "__main__":
    main()
