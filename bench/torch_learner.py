"""Examples/s of the torch mini-batch learner alone, per batch size, on the CPU and (when
there is one) a CUDA GPU, measured in the same run.

Each row times, on synthetic rows of 30 numeric features, the two halves of what the
processor does with a poll batch: one forward pass over the batch (predict_proba_many,
which includes turning dicts into a matrix) and the optimizer steps of learn_many.

    python bench/torch_learner.py [--rows 20000] [--sizes 32,128,512,1024,4096] [--threads 1]

Needs only torch and numpy besides streamwise.models.torch_learner.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from streamwise.models.torch_learner import TorchMiniBatchClassifier


def _rows(n: int, d: int, seed: int = 0) -> tuple[list[dict[str, float]], list[bool]]:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, d))
    w = rng.normal(size=d)
    X = [{f"f{j}": float(v) for j, v in enumerate(row)} for row in m]
    return X, list(map(bool, m @ w > 0))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(device: str, batch_size: int, X: list[dict], y: list[bool]) -> tuple[float, float, float]:
    names = list(X[0])
    model = TorchMiniBatchClassifier(
        features=names, hash_width=0, hidden_layers=[64, 32], batch_size=batch_size, device=device, seed=0
    )
    model.learn_many(X[:batch_size], y[:batch_size])  # warm up kernels and allocations
    n = (len(X) // batch_size) * batch_size
    _sync(device)
    t0 = time.perf_counter()
    for i in range(0, n, batch_size):
        model.predict_proba_many(X[i : i + batch_size])
    _sync(device)
    t1 = time.perf_counter()
    for i in range(0, n, batch_size):
        model.learn_many(X[i : i + batch_size], y[i : i + batch_size])
    _sync(device)
    t2 = time.perf_counter()
    # Network alone: the same steps on a ready tensor, without dict -> matrix.
    xt = torch.randn(batch_size, len(names), device=model._device)
    yt = torch.rand(batch_size, device=model._device).round()
    steps = n // batch_size
    _sync(device)
    t3 = time.perf_counter()
    for _ in range(steps):
        model._opt.zero_grad(set_to_none=True)
        loss = model._loss(model._net(xt), yt)
        loss.backward()
        model._opt.step()
    _sync(device)
    t4 = time.perf_counter()
    return n / (t1 - t0), n / (t2 - t1), n / (t4 - t3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--sizes", default="32,128,512,1024,4096")
    parser.add_argument("--features", type=int, default=30)
    # On a busy shared machine intra-op threads fight each other: --threads 1 is steadier.
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    X, y = _rows(args.rows, args.features)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, GPU: {gpu}, rows {args.rows}")
    print(f"{'device':<7}{'batch':>7}{'predict ex/s':>15}{'learn ex/s':>14}{'net-only step ex/s':>21}")
    for device in devices:
        for size in (int(s) for s in args.sizes.split(",")):
            if size > args.rows:
                continue
            p, learn, net = measure(device, size, X, y)
            print(f"{device:<7}{size:>7}{p:>15,.0f}{learn:>14,.0f}{net:>21,.0f}")
    if not torch.cuda.is_available():
        print("no CUDA GPU here: GPU figures still to be measured")


if __name__ == "__main__":
    main()
