"""A pipeline config that cannot work is refused when it is loaded, in one line per
problem, each naming the key to fix: never a traceback, never "<root>", and never a
config that loads and then misbehaves (a topic with two roles, a key given twice)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from support import config_refusal, pipeline_dict
from streamwise.core.errors import ConfigError
from streamwise.core.settings import Settings, redis_url_problem
from streamwise.models.catalog import build_estimator
from streamwise.pipeline_config import load_pipeline_config, parse_pipeline_config

ROOT = Path(__file__).resolve().parents[1]
LR = ["preprocessing.StandardScaler", "linear_model.LogisticRegression"]


def torch_with(**params: Any) -> dict[str, Any]:
    return {"models": [{"name": "t", "steps": [{"streamwise.TorchMiniBatchClassifier": params}]}]}

BASE: dict[str, Any] = pipeline_dict({"a": "float", "c": "category"})


# BASE with only numeric features: a config whose models serve every event.
NUMERIC: dict[str, Any] = {**BASE, "schema": {**BASE["schema"], "features": {"a": "float", "n": "int"}}}


def refusal(changes: dict[str, Any]) -> str:
    return config_refusal(BASE, changes)


def test_the_base_config_loads():
    assert parse_pipeline_config(copy.deepcopy(BASE)).models[0].name == "lr"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        # A River constructor that raises something other than TypeError on its parameters.
        ({"models": [{"name": "bag", "steps": [{"ensemble.BaggingClassifier": {"model": ["naive_bayes.GaussianNB"]}}]}]},
         "p.yaml: models[0].steps: ensemble.BaggingClassifier: AttributeError"),
        # A River object named where it must be built: the fix is said.
        ({"models": [{"name": "bag", "steps": [{"ensemble.BaggingClassifier": {"model": "naive_bayes.GaussianNB"}}]}]},
         "p.yaml: models[0].steps: ensemble.BaggingClassifier: model: expects a River base.Classifier, written "
         "{module.Class: {parameters}}, got the string 'naive_bayes.GaussianNB' (write {naive_bayes.GaussianNB: {}})"),
        # A metric the model cannot be scored by.
        ({"metric": "MAE"}, "p.yaml: models[0].steps: metric MAE cannot score model 'lr'"),
        ({"champion.metric": "RMSE"}, "p.yaml: models[0].steps: champion.metric RMSE cannot score model 'lr'"),
        ({"metric": "Acuracy"}, "p.yaml: metric: unknown River metric 'Acuracy'"),
        # Metrics that are not one number, or need a parameter a name cannot give: they
        # passed --check, then faulted on every event.
        ({"metric": "ClassificationReport"},
         "p.yaml: metric: River metric 'ClassificationReport' is not one number a model can be scored by"),
        ({"evaluation.metrics": ["Accuracy", "ConfusionMatrix"]},
         "p.yaml: evaluation.metrics: River metric 'ConfusionMatrix' is not one number"),
        ({"champion.metric": "FBeta"}, "p.yaml: champion.metric: River metric 'FBeta' needs parameters"),
        ({"evaluation.metrics": ["MultiFBeta"]}, "p.yaml: evaluation.metrics: River metric 'MultiFBeta' needs parameters"),
        # The torch learner's parameters, checked when it is built.
        (torch_with(hidden_layers=[8, 0]),
         "p.yaml: models[0].steps: streamwise.TorchMiniBatchClassifier: hidden_layers: every layer needs at least one"),
        (torch_with(lr=-1),
         "lr must be a positive number, got -1"),
        # A string was read digit by digit ("32": layers of 3 and 2 units); a feature no
        # event carries was an input always missing.
        (torch_with(hidden_layers="32"), "hidden_layers must be a list of unit counts, e.g. [32, 16]; got '32'"),
        (torch_with(features=["a", "nope"]),
         "p.yaml: models[0].steps: TorchMiniBatchClassifier: features: unknown field 'nope'; known here: a, c, id"),
        (torch_with(warm_start="/no/such.pt"),
         "warm_start: no file at /no/such.pt"),
        # No machine has a hundredth GPU: refused with or without one.
        (torch_with(device="cuda:99"),
         "device 'cuda:99'"),
        (torch_with(device="cuda:x"),
         "device must be auto, cpu, cuda or cuda:<index>"),
        # Schema bounds and lists that no value could pass, or that say a thing twice.
        ({"schema.features.a": {"type": "float", "min": float("nan")}},
         "p.yaml: schema.features.a: min: must be a finite number"),
        ({"schema.features.a": {"type": "int", "max": float("inf")}},
         "p.yaml: schema.features.a: max: must be a finite number"),
        ({"schema.features.a": {"type": "float", "min": 5, "max": 1}},
         "p.yaml: schema.features.a: min 5.0 is above max 1.0"),
        ({"schema.features.c": {"type": "category", "categories": ["x", "y", "x"]}},
         "p.yaml: schema.features.c: categories: 'x' is listed twice"),
        ({"schema.features.c": {"type": "category", "categories": []}}, "schema.features.c: categories: empty"),
        ({"schema.classes": [True, False, True]}, "p.yaml: schema: classes: True is listed twice"),
        # One field in two roles: every event would be refused at validate.
        ({"schema.label": "id"}, "p.yaml: schema: label field 'id' is also the id field; each field has one role"),
        ({"schema.event_time": "label"}, "p.yaml: schema: event_time field 'label' is also the label field"),
        # Whole-config checks name their key.
        ({"models": [{"name": "lr", "steps": LR}, {"name": "lr", "steps": LR}]},
         "p.yaml: models: model names must be unique, repeated: lr"),
        ({"models.0.init_from": {"pipeline": "p", "model": "lr"}},
         "p.yaml: models[0].init_from.pipeline: 'lr' init_from names this pipeline"),
        ({"task": "forecast"}, "p.yaml: forecast: task: forecast and a forecast: block go together"),
    ],
)
def test_a_config_that_cannot_work_is_one_line_naming_its_key(changes, expected):
    assert expected in refusal(changes)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"output.topic": "events"},
         "p.yaml: output.topic: topic 'events' is also input.topic; each topic has one role"),
        ({"input.labels_topic": "events"}, "p.yaml: input.labels_topic: topic 'events' is also input.topic"),
        ({"output.dead_letter_topic": "predictions"},
         "p.yaml: output.dead_letter_topic: topic 'predictions' is also output.topic"),
        ({"output.alerts_topic": "events.dlq"},
         "p.yaml: output.alerts_topic: topic 'events.dlq' is also output.dead_letter_topic"),
        ({"input.labels_topic": "predictions"}, "p.yaml: output.topic: topic 'predictions' is also input.labels_topic"),
        ({"output.topic": "p.learn"}, "p.yaml: name: the learn topic of scope: global is also output.topic"),
    ],
)
def test_one_topic_in_two_roles_is_refused(changes, expected):
    assert expected in refusal(changes)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"input.topic": "card events"}, "p.yaml: input.topic: has characters Kafka refuses in a topic name (' ')"),
        ({"output.topic": "scores/v2"}, "p.yaml: output.topic: has characters Kafka refuses in a topic name ('/')"),
        ({"input.labels_topic": ".."}, "p.yaml: input.labels_topic: is not a name Kafka allows"),
        ({"output.dead_letter_topic": "é"}, "p.yaml: output.dead_letter_topic: has characters Kafka refuses"),
        ({"output.alerts_topic": "a" * 250}, "p.yaml: output.alerts_topic: is 250 characters long; Kafka allows at most 249"),
        # a default name is reported at the key it is made from
        ({"input.topic": "e" * 247}, "p.yaml: input.topic: the dead letter topic it makes, "),
        ({"name": "n" * 243}, "p.yaml: name: the alerts topic it makes, "),
        ({"name": "n" * 244, "output.alerts_topic": "alerts"},
         "p.yaml: name: the learn topic of scope: global it makes, "),
    ],
)
def test_a_topic_name_kafka_refuses_is_refused_at_its_key(changes, expected):
    assert expected in refusal(changes)


def test_the_longest_topic_names_kafka_takes_are_taken():
    data = copy.deepcopy(BASE)
    data["input"]["topic"] = "e" * 245  # its dead-letter topic: 249 characters
    data["name"] = "n" * 242  # its alerts topic: 249 characters
    assert parse_pipeline_config(data).dead_letter_topic == "e" * 245 + ".dlq"


def test_the_learn_topic_name_is_free_with_scope_partition():
    data = copy.deepcopy(BASE)
    data["scope"] = "partition"
    data["output"]["topic"] = "p.learn"
    assert parse_pipeline_config(data).output.topic == "p.learn"


def test_every_problem_is_reported_at_once():
    own = {"pipeline": "p", "model": "lr"}
    message = refusal({"metric": "MAE", "output.topic": "events", "models.0.init_from": own})
    assert len(message.splitlines()) == 3, message


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text \(byte 9\)"):
        load_pipeline_config(path)


def test_a_key_given_twice_is_refused_with_its_line(tmp_path: Path):
    path = tmp_path / "twice.yaml"
    path.write_text("name: p\ninput: {topic: events}\noutput: {topic: predictions}\nmetric: Accuracy\nmetric: F1\n")
    expected = r"twice\.yaml: not valid YAML: key 'metric' is given twice at line 5, column 1$"
    with pytest.raises(ConfigError, match=expected):
        load_pipeline_config(path)


@pytest.mark.parametrize(("text", "expected"), [
    # Past Python's 4,300 digits an int cannot be read: a traceback before.
    ("name: " + "9" * 4301 + "\n", r"huge\.yaml: not valid YAML: an integer of 4301 digits is past any limit a "
                                   r"setting has at line 1, column 7$"),
    # Nesting past the parser's recursion: a RecursionError traceback before.
    ("[" * 100_000 + "]" * 100_000, r"huge\.yaml: not a pipeline config: its YAML is nested too deeply to read$"),
])
def test_yaml_no_reader_can_hold_is_one_line(tmp_path: Path, text: str, expected: str):
    path = tmp_path / "huge.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_pipeline_config(path)


def test_a_rule_with_a_number_of_too_many_digits_is_refused_at_its_key():
    assert "rules[0].when: rule 'big': column 5" in refusal(
        {"rules": [{"name": "big", "when": "a < " + "9" * 5000, "decision": "review"}]})


def test_a_yaml_merge_may_override_a_merged_key(tmp_path: Path):
    import yaml

    path = tmp_path / "merge.yaml"
    data = copy.deepcopy(BASE)
    data["input"] = {"<<": {"topic": "base", "group_id": "g"}, "topic": "events"}
    text = yaml.safe_dump(data).replace("'<<':", "<<:")
    path.write_text(text)
    config = load_pipeline_config(path)
    assert (config.input.topic, config.input.group_id) == ("events", "g")


def test_a_number_with_an_exponent_is_a_number(tmp_path: Path):
    """PyYAML (YAML 1.1) reads 1e-7 as a string; River would take it as the tree's delta
    and fail at the first event."""
    path = tmp_path / "exp.yaml"
    path.write_text(
        "name: p\ninput: {topic: events}\noutput: {topic: predictions}\n"
        "schema: {id: id, label: label, label_type: bool, features: {a: {type: float, max: 1E3}}}\n"
        "models:\n  - name: tree\n    steps:\n      - tree.HoeffdingTreeClassifier: {delta: 1e-7, tau: 5e-2}\n"
    )
    config = load_pipeline_config(path)
    tree = build_estimator(config.models[0].steps)
    assert (tree.delta, tree.tau, config.event_schema.features["a"].max) == (1e-7, 0.05, 1000.0)


def test_plain_scalars_are_typed_as_in_yaml_1_2_so_norway_stays_a_country(tmp_path: Path):
    """YAML 1.1 reads NO as False, yes/on as True, 12:30 as 750, 010 as 8 and a date as a
    date: a category list of country codes declared False, and every event from Norway
    was refused."""
    from streamwise.processor import PipelineProcessor
    from streamwise.connectors.records import ConsumedRecord

    path = tmp_path / "norway.yaml"
    path.write_text(
        "name: p\ninput: {topic: events}\noutput: {topic: predictions}\n"
        "schema:\n  id: id\n  label: label\n  features:\n"
        "    country: {type: category, categories: [SE, NO, DK]}\n"
        "    answer: {type: category, categories: [yes, no, on, off, '12:30', 12:45, 2026-01-01]}\n"
        "    n: {type: int, max: 010}\n"
        "models:\n  - name: lr\n    steps: [linear_model.LogisticRegression]\n"
    )
    config = load_pipeline_config(path)
    features = config.event_schema.features
    assert features["country"].categories == ["SE", "NO", "DK"]
    assert features["answer"].categories == ["yes", "no", "on", "off", "12:30", "12:45", "2026-01-01"]
    assert features["n"].max == 10
    value = b'{"id": 1, "country": "NO", "answer": "no", "n": 3, "label": true}'
    out = PipelineProcessor(config).process([ConsumedRecord("events", 0, 0, None, value, 1)])
    assert [r.topic for r in out] == ["predictions"]


@pytest.mark.parametrize(
    ("param", "value", "expected"),
    [
        ("l2", "abc", "l2: expects a number, got the string 'abc'"),
        ("l2", "0.1", "l2: expects a number, got the string '0.1' (a number in quotes)"),
        ("l2", True, "l2: expects a number, got True"),
        ("optimizer", "SGD", "optimizer: expects a River optim.base.Optimizer, written {module.Class: {parameters}}"),
    ],
)
def test_a_river_parameter_of_the_wrong_type_is_refused_at_load(param, value, expected):
    steps = [{"linear_model.LogisticRegression": {param: value}}]
    message = refusal({"models": [{"name": "lr", "steps": steps}]})
    assert f"p.yaml: models[0].steps: linear_model.LogisticRegression: {expected}" in message


def test_a_river_option_it_does_not_know_is_refused_at_load():
    """A Hoeffding tree prints a notice and uses its default for a split_criterion it does
    not know: the typo would silently change the model."""
    steps = [{"tree.HoeffdingTreeClassifier": {"split_criterion": "ginni"}}]
    assert ("p.yaml: models[0].steps: tree.HoeffdingTreeClassifier: split_criterion: 'ginni' is not one River knows "
            "(it would use 'info_gain')") in refusal({"models": [{"name": "tree", "steps": steps}]})


def test_river_parameters_of_the_right_type_are_taken():
    steps = [{"tree.HoeffdingTreeClassifier": {"grace_period": 50.0, "delta": 1, "max_depth": None,
                                               "split_criterion": "gini", "binary_split": True}}]
    data = copy.deepcopy(BASE)
    data["models"] = [{"name": "tree", "steps": steps}]
    tree = build_estimator(parse_pipeline_config(data).models[0].steps)
    assert (tree.grace_period, tree.split_criterion, tree.binary_split) == (50, "gini", True)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://127.0.0.1:6379/0", None),
        ("rediss://user:pw@cache.example.com:6380", None),
        ("unix:///run/redis.sock?db=2", None),
        ("notaurl", "not a Redis URL: no scheme"),
        ("http://127.0.0.1:6379", "not a Redis URL: http://"),
        ("redis://", "redis:// needs a host"),
        ("redis://host:port/0", "not a Redis URL (Port could not be cast"),
        ("redis://host:6379/zero", "the database after the host must be a number, got 'zero'"),
        ("unix://", "unix:// needs the socket's path"),
    ],
)
def test_a_redis_url_is_checked_without_showing_it(url, expected):
    problem = redis_url_problem(url)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(expected)
        assert "pw@" not in problem


def test_a_bad_redis_url_in_the_environment_is_one_line(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STREAMWISE_REDIS__URL", "redis://:s3cret@/0")
    with pytest.raises(ConfigError) as caught:
        Settings()
    assert "redis.url" in str(caught.value) and "needs a host" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_with_sentinel_the_redis_url_needs_no_host():
    from streamwise.core.settings import RedisSettings

    sentinel = {"sentinels": ["127.0.0.1:26379"], "sentinel_master": "streamwise"}
    assert RedisSettings(url="rediss:///0", **sentinel).sentinels == ["127.0.0.1:26379"]
    with pytest.raises(ValueError, match="redis:// needs a host"):
        RedisSettings(url="redis:///0")


def test_the_snapshots_command_refuses_a_bad_redis_url_in_one_line():
    from streamwise.cli import app
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["snapshots", "list", "--pipeline", "p", "--redis-url", "localhost:6379"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--redis-url: not a Redis URL" in lines[0], result.output


def test_a_pipeline_that_cannot_be_built_stops_the_runner_before_any_service():
    """A config made in code skips the loader's checks (model_copy does not validate):
    the runner builds the pipeline once before it touches Kafka or Redis, and names the
    model that fails."""
    from streamwise.runner import Runner, check_pipeline_builds

    good = copy.deepcopy(BASE)
    good["models"].append({"name": "bayes", "steps": ["naive_bayes.GaussianNB"]})
    config = parse_pipeline_config(good)
    check_pipeline_builds(config)  # the valid config builds
    broken = config.model_copy(update={"metric": "MAE"})
    with pytest.raises(ConfigError, match=r"^pipeline p: models\[0\] \(lr\): cannot be built: ValueError: metric MAE"):
        check_pipeline_builds(broken)
    # Nothing listens on port 9: were a service touched first, this would be a
    # ServiceUnavailableError about Kafka or Redis instead.
    settings = Settings.model_validate(
        {"kafka": {"bootstrap_servers": "127.0.0.1:9"}, "redis": {"url": "redis://127.0.0.1:9/0"}}
    )
    with pytest.raises(ConfigError, match="cannot be built"):
        Runner(broken, settings).run(until_idle_s=0.1)


@pytest.mark.parametrize(
    ("servers", "expected"),
    [("", "empty"), (" , ", "empty"), ("b1:9092,,b2:9092", "an empty entry"), (":9092", "no host"),
     ("b1:port", "'b1:port': the port must be a number"), ("b1:70000", "from 1 to 65535")],
)
def test_bootstrap_servers_that_cannot_be_reached_are_refused(monkeypatch: pytest.MonkeyPatch, servers, expected):
    monkeypatch.setenv("STREAMWISE_KAFKA__BOOTSTRAP_SERVERS", servers)
    with pytest.raises(ConfigError, match=rf"kafka\.bootstrap_servers.*{expected}"):
        Settings()


def test_a_bad_config_with_several_workers_is_one_line(tmp_path: Path):
    """Checked by the parent before it starts the workers, not once by each."""
    from streamwise.cli import app
    from typer.testing import CliRunner

    path = tmp_path / "bad.yaml"
    data = copy.deepcopy(BASE)
    data["metric"] = "MAE"
    import yaml

    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["run", "--config", str(path), "--workers", "2"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "models[0].steps: metric MAE cannot score model 'lr'" in lines[0]
    path.write_text(yaml.safe_dump(BASE))
    result = CliRunner().invoke(app, ["run", "--config", str(path), "--bootstrap-servers", "b1:x"])
    assert result.exit_code == 2 and "--bootstrap-servers: 'b1:x': the port must be a number" in result.output


@pytest.mark.parametrize(
    ("features", "expected"),
    [
        # A ratio named after a field of the event would replace it for every model.
        ([{"kind": "ratio", "numerator": "a", "denominator": "a", "name": "a"}],
         "p.yaml: features[0]: writes 'a', already a field of the event or of an earlier step"),
        # A feature named after the label would be dropped with the label from every event.
        ([{"kind": "ratio", "numerator": "a", "denominator": "a", "name": "label"}],
         "p.yaml: features[0]: writes 'label', already a field of the event or of an earlier step"),
        # The same one-hot twice writes each of its columns twice.
        ([{"kind": "one_hot", "fields": ["c"]}, {"kind": "one_hot", "fields": ["c"]}],
         "p.yaml: features[1]: writes 'c=__other__'"),
    ],
)
def test_a_feature_name_written_twice_is_refused(features, expected):
    assert expected in refusal({"features": features})


def test_a_clip_quantile_of_0_or_1_and_an_empty_feature_name_are_refused_at_their_key():
    # river's running quantile takes 0 < q < 1; 0 and 1 failed later, blamed on the first model.
    message = refusal({"cleaners": [{"kind": "clip", "lower": 0, "upper": 1}]})
    assert "cleaners[0].lower: Input should be greater than 0" in message
    assert "cleaners[0].upper: Input should be less than 1" in message
    assert "a field with an empty name" in refusal({"schema.features": {"": "float", "a": "float"}})


def test_run_check_builds_the_pipeline_and_touches_no_service(tmp_path: Path, monkeypatch):
    """`streamwise run --check`: 0 and one line for a config that would start, 2 and the
    problem naming its key for one that would not; with no Kafka or Redis anywhere."""
    import yaml
    from streamwise.cli import app
    from typer.testing import CliRunner

    monkeypatch.setenv("STREAMWISE_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("STREAMWISE_REDIS__URL", "redis://127.0.0.1:2/0")
    monkeypatch.setenv("STREAMWISE_KAFKA__CLIENT", "confluent")
    monkeypatch.setenv("STREAMWISE_SNAPSHOT__SIGNING_KEY", "k" * 64)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(NUMERIC))
    result = CliRunner().invoke(app, ["run", "-c", str(good), "--check"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{good}: ok: pipeline p, events -> predictions, models lr, Kafka client confluent"
    # Settings that `run` refuses before it connects are refused by the check too.
    for name, value, said in [
        ("STREAMWISE_SNAPSHOT__SIGNING_KEY", "short", "snapshot.signing_key: 5 bytes"),
        ("STREAMWISE_KAFKA__EXTRA", '{"fetch.min.bytez": 1}', 'No such configuration property: "fetch.min.bytez"'),
        ("STREAMWISE_KAFKA__EXTRA", '{"fetch.min.bytes": "abc"}', 'Invalid value for configuration property "fetch.min.bytes"'),
        ("STREAMWISE_KAFKA__EXTRA", '{"fetch.min.bytes": 64}', None),
        ("STREAMWISE_KAFKA__CLIENT", "kafka-python", "kafka.extra.fetch.min.bytes: not a kafka-python setting"),
        ("STREAMWISE_KAFKA__EXTRA", '{"nonsense_key": 1}', "kafka.extra.nonsense_key: not a kafka-python setting"),
        ("STREAMWISE_KAFKA__EXTRA", '{"fetch_min_bytes": "abc"}', "kafka.extra.fetch_min_bytes: must be an integer"),
        ("STREAMWISE_KAFKA__EXTRA", '{"fetch_min_bytes": 64}', None),
    ]:
        monkeypatch.setenv(name, value)
        result = CliRunner().invoke(app, ["run", "-c", str(good), "--check"])
        assert result.exit_code == (0 if said is None else 2), result.output
        assert said is None or said in result.output
        if name.endswith("SIGNING_KEY"):
            monkeypatch.setenv(name, "k" * 64)
    bad = tmp_path / "bad.yaml"
    data = copy.deepcopy(NUMERIC)
    data["models"] = [{"name": "lr", "steps": [{"linear_model.LogisticRegression": {"l2": "0.1"}}]}]
    bad.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["run", "-c", str(bad), "--check"])
    assert result.exit_code == 2
    assert "models[0].steps: linear_model.LogisticRegression: l2: expects a number" in result.output


def test_run_check_says_no_to_a_model_that_raises_on_valid_events(tmp_path: Path, monkeypatch):
    """ARF takes max_features: sqr when built and raises at its first event: --check
    runs the pipeline on events made up from the schema and names the model."""
    import yaml
    from streamwise.cli import app
    from streamwise.runner import dry_run_problems
    from typer.testing import CliRunner

    data = copy.deepcopy(NUMERIC)
    data["models"].append({"name": "forest", "steps": [{"forest.ARFClassifier": {"max_features": "sqr"}}]})
    path = tmp_path / "forest.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("STREAMWISE_SNAPSHOT__SIGNING_KEY", "k" * 64)
    result = CliRunner().invoke(app, ["run", "-c", str(path), "--check"])
    assert result.exit_code == 2
    assert "models[1] (forest): raises predicting on events made up from the schema: AttributeError: Invalid max_features" in result.output
    assert dry_run_problems(parse_pipeline_config(NUMERIC)) == []
    # BASE scales its category feature "c" with StandardScaler: every event would fail
    assert dry_run_problems(parse_pipeline_config(BASE)) == [
        "pipeline p: models[0] (lr): raises learning on events made up from the schema: "
        "TypeError: unsupported operand type(s) for -: 'str' and 'float'"
    ]


def test_events_made_up_from_each_example_pass_its_schema_and_models():
    from streamwise.processor import PipelineProcessor
    from streamwise.runner import dry_run_problems, made_up_records

    for path in sorted((ROOT / "examples").glob("*.yaml")):
        config = load_pipeline_config(path)
        if config.forecast is not None:
            continue
        out = PipelineProcessor(config).process(made_up_records(config, 16))
        assert [o.topic for o in out] == [config.output.topic] * 16, path.name
        assert dry_run_problems(config) == [], path.name
