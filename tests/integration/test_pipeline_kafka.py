"""Events in, predictions out, on the real broker that dev/up starts."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import threading
import time

from river import datasets, evaluate, metrics

from streamwise.models.catalog import build_estimator
from streamwise.replay import iter_events
from streamwise.runner import Runner
from support import consume, phishing_pipeline, produce, reference_predictions, values

N_PHISHING = 1250


def _run(cfg, settings, **kw):
    return Runner(cfg, settings).run(until_idle_s=1.0, **kw)


def _assert_phishing_parity(cfg, summary):
    for spec in cfg.models:
        river_score = evaluate.progressive_val_score(
            datasets.Phishing(), build_estimator(spec.steps), metrics.Accuracy()
        ).get()
        assert math.isclose(summary.metrics[spec.name]["value"], river_score, rel_tol=0, abs_tol=1e-12)


def test_phishing_one_prediction_per_event_and_river_parity(settings, bootstrap, unique):
    cfg = phishing_pipeline(unique)
    assert produce(bootstrap, cfg.input.topic, iter_events("Phishing")) == N_PHISHING

    summary = _run(cfg, settings)

    out = values(consume(bootstrap, cfg.output.topic, N_PHISHING))
    assert len(out) == N_PHISHING
    assert sorted(r["id"] for r in out) == list(range(N_PHISHING))
    assert summary.events_in == N_PHISHING and summary.dead_letters == {}

    _assert_phishing_parity(cfg, summary)
    # Every record's per-model prediction is what an in-memory test-then-train loop says.
    ref = reference_predictions(cfg, datasets.Phishing())
    by_id = sorted(out, key=lambda r: r["id"])
    for spec in cfg.models:
        assert [r["models"][spec.name]["prediction"] for r in by_id] == ref["predictions"][spec.name]
    first = by_id[0]
    assert first["champion"] == "logreg" and first["prediction"] == first["models"]["logreg"]["prediction"]
    assert set(first["probabilities"]) == {"false", "true"}
    assert first["source"] == {"topic": cfg.input.topic, "partition": 0, "offset": 0}


def test_input_batches_compressed_with_every_kafka_codec_are_read(settings, bootstrap, unique):
    # Java producers and librdkafka compress with lz4, zstd or snappy as often as gzip;
    # kafka-python reads each only with its codec's library installed. One partition
    # holding batches of all four, in order: still one prediction per event, River parity.
    from kafka import KafkaProducer

    cfg = phishing_pipeline(unique)
    events = list(iter_events("Phishing"))
    codecs = ["gzip", "snappy", "lz4", "zstd"]
    share = math.ceil(len(events) / len(codecs))
    for i, codec in enumerate(codecs):
        producer = KafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, linger_ms=5)
        for key, value in events[i * share:(i + 1) * share]:
            producer.send(cfg.input.topic, key=key, value=value)
        producer.flush()
        producer.close()

    summary = _run(cfg, settings)

    out = values(consume(bootstrap, cfg.output.topic, N_PHISHING))
    assert sorted(r["id"] for r in out) == list(range(N_PHISHING))
    assert summary.events_in == N_PHISHING and summary.dead_letters == {}
    _assert_phishing_parity(cfg, summary)


def test_a_codec_kafka_python_cannot_read_stops_with_the_fix_not_a_retry_loop(services, unique, monkeypatch):
    # Where the codec's library is missing (an install without our dependencies), every
    # poll would fail alike for ever: the service stops with one line saying what to do.
    import kafka.codec
    import pytest

    from streamwise import StreamwiseError
    from streamwise.core.settings import KafkaSettings, Settings

    bootstrap = services["STREAMWISE_KAFKA__BOOTSTRAP_SERVERS"]
    cfg = phishing_pipeline(unique)
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, compression_type="lz4")
    for key, value in iter_events("Phishing"):
        producer.send(cfg.input.topic, key=key, value=value)
    producer.flush()
    producer.close()
    monkeypatch.setattr(kafka.codec, "has_lz4", lambda: False)
    settings = Settings()
    settings.kafka = KafkaSettings(bootstrap_servers=bootstrap, poll_timeout_ms=200, client="kafka-python")

    t0 = time.monotonic()
    with pytest.raises(StreamwiseError, match=r"lz4.*install") as raised:
        _run(cfg, settings)
    assert "Unavailable" not in type(raised.value).__name__
    assert time.monotonic() - t0 < 60


def test_a_dead_letter_larger_than_its_topic_takes_is_cut_to_fit_not_retried_for_ever(settings, bootstrap, unique):
    # The input topic takes 4 MB records; the dead-letter topic has Kafka's default limit
    # (1 MiB + 12 bytes, as on a stock broker), smaller than schema.max_event_bytes plus
    # the headers. A 1.5 MB malformed record's dead letter used to fail every commit.
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    from streamwise.processor import H_OFFSET, H_SIZE

    cfg = phishing_pipeline(unique)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([
        NewTopic(cfg.input.topic, 1, 1, topic_configs={"max.message.bytes": "4000000"}),
        NewTopic(cfg.dead_letter_topic, 1, 1, topic_configs={"max.message.bytes": "1048588"}),
    ])
    admin.close()
    events = list(iter_events("Phishing"))
    big = b'{"id": "big", "pad": "' + b"x" * 1_500_000 + b'"} not json'
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=4_000_000)
    for i, (key, value) in enumerate(events):
        if i == 600:
            producer.send(cfg.input.topic, key=b"big", value=big)
        producer.send(cfg.input.topic, key=key, value=value)
    producer.flush()
    producer.close()

    t0 = time.monotonic()
    summary = _run(cfg, settings)
    assert time.monotonic() - t0 < 60

    out = values(consume(bootstrap, cfg.output.topic, N_PHISHING))
    assert sorted(r["id"] for r in out) == list(range(N_PHISHING))
    assert summary.dead_letters == {"decode": 1}
    (letter,) = consume(bootstrap, cfg.dead_letter_topic, 1)
    headers = dict(letter.headers)
    assert headers[H_SIZE] == str(len(big)).encode() and headers[H_OFFSET] == b"600"
    assert len(letter.value) < 1048588 and big.startswith(letter.value)
    _assert_phishing_parity(cfg, summary)


def _malformed(n_valid: int) -> list[tuple[bytes | None, bytes | None, str]]:
    """50 bad records of the kinds a live stream carries, with the stage each must fail at."""
    good = json.loads(next(iter_events("Phishing"))[1])
    bad: list[tuple[bytes | None, bytes | None, str]] = []
    for i in range(9):
        bad.append((None, b"{not json " + str(i).encode(), "decode"))
    for i in range(8):
        bad.append((None, b'{"id": "\xff\xfe' + bytes([0x80 + i]) + b'"}', "decode"))
    for i, field in enumerate(["popup_window", "https", "long_url", "age_of_domain", "is_popular"] * 2):
        wrong = dict(good, id=f"bad-type-{i}")
        wrong[field] = ["a list", "high", {"x": 1}, "1", True][i % 5]
        bad.append((None, json.dumps(wrong).encode(), "validate"))
    for i in range(8):
        missing = dict(good, id=f"missing-{i}")
        del missing[list(good)[1 + i]]
        bad.append((None, json.dumps(missing).encode(), "validate"))
    for i, const in enumerate(["NaN", "Infinity", "-Infinity", "NaN"] * 2):
        text = json.dumps(dict(good, id=f"nonfinite-{i}")).replace('"https": 0.0', f'"https": {const}')
        assert const in text
        bad.append((None, text.encode(), "decode"))
    bad.append((None, json.dumps(dict(good, id="huge", pad="x" * 2_000_000)).encode(), "decode"))
    for value, stage in [(b"[1, 2, 3]", "validate"), (b'"a string"', "validate"), (b"null", "validate"),
                         (b"", "decode"), (None, "decode"), (b'{"id": null}', "validate")]:
        # A tombstone (null value) needs a key for Kafka to accept it.
        bad.append((b"tombstone" if value is None else None, value, stage))
    assert len(bad) == 50
    return bad


def test_malformed_records_go_to_the_dead_letter_topic_and_change_nothing(settings, bootstrap, unique):
    cfg = phishing_pipeline(unique)
    valid = list(iter_events("Phishing"))
    bad = _malformed(len(valid))
    mixed: list[tuple[bytes | None, bytes | None]] = [(k, v) for k, v in valid]
    rng = random.Random(7)
    for key, value, _stage in bad:
        mixed.insert(rng.randrange(len(mixed) + 1), (key, value))
    produce(bootstrap, cfg.input.topic, mixed)

    summary = _run(cfg, settings)
    assert summary.events_in == N_PHISHING + 50
    assert sum(summary.dead_letters.values()) == 50

    dlq = consume(bootstrap, cfg.dead_letter_topic, 50)
    assert len(dlq) == 50
    source_offsets = set()
    for rec in dlq:
        h = {k: v.decode() for k, v in rec.headers}
        assert set(h) >= {
            "streamwise.error.stage", "streamwise.error.class", "streamwise.error.message",
            "streamwise.source.topic", "streamwise.source.partition", "streamwise.source.offset",
        }
        assert h["streamwise.source.topic"] == cfg.input.topic and h["streamwise.error.message"]
        source_offsets.add(int(h["streamwise.source.offset"]))
    assert len(source_offsets) == 50
    # The original bytes come back untouched, each with the stage that rejected it; a
    # record refused for its size keeps its first max_event_bytes and says its size.
    limit = cfg.event_schema.max_event_bytes
    expected = sorted(((v or b"")[:limit], s) for _k, v, s in bad)
    got = sorted((r.value or b"", dict(r.headers)["streamwise.error.stage"].decode()) for r in dlq)
    assert got == expected
    sizes = [int(dict(r.headers)["streamwise.source.size"]) for r in dlq if "streamwise.source.size" in dict(r.headers)]
    assert sizes == [len(v) for _k, v, _s in bad if v is not None and len(v) > limit]

    out = sorted(values(consume(bootstrap, cfg.output.topic, N_PHISHING)), key=lambda r: r["id"])
    assert [r["id"] for r in out] == list(range(N_PHISHING))
    ref = reference_predictions(cfg, datasets.Phishing())
    assert [r["prediction"] for r in out] == ref["predictions"]["logreg"]
    assert summary.metrics["logreg"]["value"] == ref["metrics"]["logreg"]


def test_kcat_publishes_events_and_reads_predictions(settings, bootstrap, unique, tmp_path):
    cfg = phishing_pipeline(unique)
    events = list(iter_events("Phishing", limit=200))
    lines = b"".join(k + b"\t" + v + b"\n" for k, v in events)
    subprocess.run(
        ["kcat", "-b", bootstrap, "-P", "-t", cfg.input.topic, "-K", "\t"], input=lines, check=True, timeout=60
    )
    _run(cfg, settings)
    read = subprocess.run(
        ["kcat", "-b", bootstrap, "-C", "-t", cfg.output.topic, "-e", "-o", "beginning",
         "-X", "isolation.level=read_committed", "-f", "%k\t%s\n"],
        capture_output=True, check=True, timeout=60,
    )
    rows = [line.split(b"\t", 1) for line in read.stdout.splitlines() if line]
    assert len(rows) == 200
    assert {int(k) for k, _ in rows} == set(range(200))
    assert all(json.loads(v)["id"] == int(k) for k, v in rows)


def test_cli_run_stops_cleanly_on_sigterm_and_commits(bootstrap, unique, tmp_path):
    import yaml

    cfg = phishing_pipeline(unique)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(by_alias=True, exclude_none=True), sort_keys=False))
    produce(bootstrap, cfg.input.topic, iter_events("Phishing", limit=300))
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamwise", "run", "--config", str(path), "--bootstrap-servers", bootstrap],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert len(consume(bootstrap, cfg.output.topic, 300, timeout_s=90)) == 300
        proc.send_signal(15)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "events in: 300" in out
    # Everything was committed: a new run of the same group has nothing left to do.
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=cfg.group_id, enable_auto_commit=False)
    assert c.committed(TopicPartition(cfg.input.topic, 0)) == 300
    c.close()


def test_runner_survives_a_stream_that_keeps_arriving(settings, bootstrap, unique):
    """Events published while the service runs are all predicted, in order."""
    cfg = phishing_pipeline(unique)
    events = list(iter_events("Phishing", limit=600))
    runner = Runner(cfg, settings)
    result = {}
    t = threading.Thread(target=lambda: result.update(s=runner.run(until_idle_s=3.0)))
    t.start()
    for i in range(0, 600, 100):
        produce(bootstrap, cfg.input.topic, events[i : i + 100])
        time.sleep(0.2)
    t.join(120)
    assert not t.is_alive()
    out = values(consume(bootstrap, cfg.output.topic, 600))
    assert [r["id"] for r in sorted(out, key=lambda r: r["source"]["offset"])] == list(range(600))
