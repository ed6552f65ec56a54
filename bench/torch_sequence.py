"""The per-key sequence learner: examples/s per batch size and sequence length (CPU, and
CUDA when torch sees a GPU), and its prequential accuracy against an MLP on the single
event and River's LogisticRegression with windowed aggregates, measured in one run.

Speed: synthetic events of 5 numeric features spread over 1,000 keys. Each row times
what the processor does with a block of events: one forward pass (predict_proba_many:
dicts to rows, rows into their keys' histories, windows padded into one batch) and the
optimizer steps of learn_many; and the network alone, stepping on a ready tensor.

Accuracy: examples/patient_deterioration.yaml run by the pipeline processor in memory
(the service's code without Kafka) on streamwise.PatientVitals in three settings: the
label only in the order of the readings (trend), the same with deteriorating segments
moved away from the baseline so windowed aggregates recover part of it (shift 0.5), and
a stream without temporal signal (reading).

    python bench/torch_sequence.py [--rows 8000] [--sizes 32,256,1024] [--lengths 4,16,64]
                                   [--threads 1] [--accuracy-events 4000] [--no-accuracy]
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from streamwise.models.torch_sequence import TorchSequenceClassifier

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "patient_deterioration.yaml"


def _events(n: int, n_keys: int = 1000, seed: int = 0) -> tuple[list[dict], list[bool], list[str]]:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, 5))
    X = [{f"f{j}": float(v) for j, v in enumerate(row)} for row in m]
    keys = [f"k{k}" for k in rng.integers(0, n_keys, size=n)]
    return X, list(map(bool, m[:, 0] > 0)), keys


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(device: str, batch: int, length: int, X: list[dict], y: list[bool], keys: list[str]) -> tuple[float, ...]:
    model = TorchSequenceClassifier(features=list(X[0]), hash_width=0, sequence_length=length, hidden_size=32,
                                    hidden_layers=[32], batch_size=batch, device=device, seed=0)
    model.learn_many(X[:batch], y[:batch], keys=keys[:batch])  # warm up kernels and allocations
    n = (len(X) // batch) * batch
    ids = list(range(n))
    _sync(device)
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        model.predict_proba_many(X[i : i + batch], keys=keys[i : i + batch], ids=ids[i : i + batch])
    _sync(device)
    t1 = time.perf_counter()
    for i in range(0, n, batch):
        model.learn_many(X[i : i + batch], y[i : i + batch], keys=keys[i : i + batch], ids=ids[i : i + batch])
    _sync(device)
    t2 = time.perf_counter()
    xt = torch.randn(batch, length, len(X[0]), device=model._device)
    yt = torch.rand(batch, device=model._device).round()
    assert model._net is not None and model._opt is not None
    _sync(device)
    t3 = time.perf_counter()
    for _ in range(n // batch):
        model._opt.zero_grad(set_to_none=True)
        model._loss(model._net(xt), yt).backward()
        model._opt.step()
    _sync(device)
    t4 = time.perf_counter()
    return n / (t1 - t0), n / (t2 - t1), n / (t4 - t3)


def accuracy(n_events: int) -> None:
    from streamwise.connectors.records import ConsumedRecord

    from streamwise.pipeline_config import load_pipeline_config
    from streamwise.processor import PipelineProcessor
    from streamwise.replay import iter_events

    print(f"\nPatientVitals, {n_events} events, prequential, in-memory processor (poll batches of 500)")
    print(f"{'setting':<10}{'model':<8}{'ROC AUC':>9}{'accuracy':>10}{'s':>7}")
    for setting, params in (("trend", {}), ("shift 0.5", {"shift": 0.5}), ("reading", {"signal": "reading"})):
        config = load_pipeline_config(EXAMPLE)
        config.evaluation.metrics = ["Accuracy"]
        processor = PipelineProcessor(config)
        source = list(iter_events("streamwise.PatientVitals", {"n_events": n_events, **params}, key_field="patient_id"))
        # Each record stamped when its reading was taken, as a replay publishes it: the
        # pipeline refuses an event far from its record's time (schema.max_future).
        stamps = [int(datetime.fromisoformat(json.loads(v)["ts"]).timestamp() * 1000) for _, v in source]
        records = [ConsumedRecord("vitals", 0, i, k, v, stamps[i]) for i, (k, v) in enumerate(source)]
        started = time.perf_counter()
        for i in range(0, len(records), 500):
            processor.process(records[i : i + 500])
        seconds = time.perf_counter() - started
        for m in processor.models:
            acc = processor.learners.evaluations[m.name]
            print(f"{setting:<10}{m.name:<8}{m.metric.get():>9.3f}{acc.report()['cumulative']['Accuracy']:>10.3f}"
                  f"{seconds:>7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--sizes", default="32,256,1024")
    parser.add_argument("--lengths", default="4,16,64")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--accuracy-events", type=int, default=4000)
    parser.add_argument("--no-accuracy", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    X, y, keys = _events(args.rows)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, GPU: {gpu}, rows {args.rows}, "
          f"1000 keys, GRU hidden 32")
    print(f"{'device':<7}{'batch':>7}{'length':>8}{'predict ex/s':>15}{'learn ex/s':>14}{'net-only step ex/s':>21}")
    for device in devices:
        for size in (int(s) for s in args.sizes.split(",")):
            for length in (int(s) for s in args.lengths.split(",")):
                if size > args.rows:
                    continue
                p, learn, net = measure(device, size, length, X, y, keys)
                print(f"{device:<7}{size:>7}{length:>8}{p:>15,.0f}{learn:>14,.0f}{net:>21,.0f}")
    if not torch.cuda.is_available():
        print("no CUDA GPU here: GPU figures still to be measured")
    if not args.no_accuracy:
        accuracy(args.accuracy_events)


if __name__ == "__main__":
    main()
