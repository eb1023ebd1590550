"""Train two small models on scikit-learn's bundled digits data and export them to ONNX.

Run from the repository root:

    .venv/bin/python models/train.py

Writes, next to this script:
    digits_mlp.onnx, digits_cnn.onnx   the trained models (opset 17, dynamic batch axis)
    digits_samples.npz                 16 held-out test digits (images, flat, labels)
    metrics.json                       held-out accuracies measured on the ONNX models

Everything is seeded and deterministic: re-running gives the same weights and accuracies.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
SEED = 0
EPOCHS = 60
BATCH = 64
LR = 1e-3
MAX_IR_VERSION = 10


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


class DigitsMLP(nn.Module):
    """(N, 64) in [0, 1] -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + identity  # explicit skip connection -> ONNX Add node
        return self.relu2(out)


class DigitsCNN(nn.Module):
    """(N, 1, 8, 8) in [0, 1] -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.block = ResidualBlock(16)
        self.pool1 = nn.MaxPool2d(2)
        self.conv3 = nn.Sequential(
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.pool2 = nn.AvgPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.block(x)
        x = self.pool1(x)
        x = self.conv3(x)
        x = self.pool2(x)
        x = self.flatten(x)
        return self.fc(x)


def load_data():
    digits = load_digits()
    X = (digits.data / 16.0).astype(np.float32)  # (1797, 64), pixels in [0, 1]
    y = digits.target.astype(np.int64)
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


def train(model: nn.Module, X: np.ndarray, y: np.ndarray, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(Xt), generator=gen)
        for i in range(0, len(Xt), BATCH):
            idx = perm[i : i + BATCH]
            opt.zero_grad()
            loss = loss_fn(model(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    return model


def export(model: nn.Module, example: torch.Tensor, path: Path, keep_batchnorm: bool = False) -> None:
    """Export in eval mode; keep_batchnorm writes BatchNormalization nodes instead of folding them into the Conv."""
    model.eval()
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        # PRESERVE keeps BatchNormalization as a graph node (running statistics, inference semantics);
        # the default (EVAL) would fold it into the Conv before it. onnxlrp folds it itself.
        training=torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL,
    )
    m = onnx.load(str(path))  # pulls in any external data, so the re-save below is self-contained
    if m.ir_version > MAX_IR_VERSION:
        m.ir_version = MAX_IR_VERSION
    onnx.checker.check_model(m)
    onnx.save(m, str(path), save_as_external_data=False)
    stray = path.with_name(path.name + ".data")
    if stray.exists():
        stray.unlink()


def verify(model: nn.Module, path: Path, X: np.ndarray, y: np.ndarray) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_logits = sess.run(["logits"], {"input": X})[0]
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(X)).numpy()
    max_diff = float(np.abs(onnx_logits - torch_logits).max())
    if not np.allclose(onnx_logits, torch_logits, atol=1e-4, rtol=1e-4):
        raise AssertionError(f"{path.name}: ONNX and torch disagree (max |diff| = {max_diff:.3g})")
    acc = float((onnx_logits.argmax(1) == y).mean())
    print(f"{path.name}: max |onnx - torch| = {max_diff:.2e}, held-out accuracy = {acc:.4f} ({len(y)} digits)")
    return acc


def pick_samples(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of 16 test digits: the first of each class 0..9 in class order, then the next 6 unused."""
    first = [int(np.flatnonzero(y == c)[0]) for c in range(10)]
    rest = [i for i in range(len(y)) if i not in first][:6]
    return np.array(first + rest, dtype=np.int64)


def main() -> None:
    torch.set_num_threads(2)
    seed_everything()
    X_train, X_test, y_train, y_test = load_data()
    img_train = X_train.reshape(-1, 1, 8, 8)
    img_test = X_test.reshape(-1, 1, 8, 8)

    metrics = {}

    torch.manual_seed(SEED)
    mlp = train(DigitsMLP(), X_train, y_train, SEED)
    mlp_path = HERE / "digits_mlp.onnx"
    export(mlp, torch.from_numpy(X_test[:2]), mlp_path)
    metrics["digits_mlp"] = {"test_accuracy": verify(mlp, mlp_path, X_test, y_test), "n_test": int(len(y_test))}

    torch.manual_seed(SEED)
    cnn = train(DigitsCNN(), img_train, y_train, SEED)
    cnn_path = HERE / "digits_cnn.onnx"
    export(cnn, torch.from_numpy(img_test[:2]), cnn_path, keep_batchnorm=True)
    metrics["digits_cnn"] = {"test_accuracy": verify(cnn, cnn_path, img_test, y_test), "n_test": int(len(y_test))}

    for name, m in metrics.items():
        if m["test_accuracy"] < 0.95:
            raise AssertionError(f"{name}: accuracy {m['test_accuracy']:.4f} < 0.95")

    idx = pick_samples(X_test, y_test)
    np.savez(
        HERE / "digits_samples.npz",
        images=img_test[idx].astype(np.float32),
        flat=X_test[idx].astype(np.float32),
        labels=y_test[idx].astype(np.int64),
    )
    (HERE / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
