"""Hyperparameter search and self-training through the service (issue 18).

Search. For each stream (River's Phishing, a seeded Agrawal, a seeded Hyperplane) and
each family (a LogisticRegression over 6 learning rates × 2 l2 = 12 settings, a
Hoeffding tree over grace period × split criterion × leaf prediction = 8), one
pipeline runs through the service with, as separate models: River's defaults, every
candidate alone (the best of them is the best single candidate *in hindsight*), and the
search under each policy (keep_all, successive_halving, bandit). Every figure is that
model's prequential metric as the service scored it. Then the default model and each
search run alone, one after the other on the same topic, for their events/s (the cost).

Self-training. On each stream about 5% of the events keep their label (the rest are
published without one, seeded). One pipeline per stream runs the plain model, the same
model with self-training and its guard, and with self-training and no guard (a guard
that never has enough labels), and reports the prequential metric on the labelled
events, the pseudo-labels learned and what the guard did.

    .venv/bin/python bench/search.py [--events 15000] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

from common import Clock, bootstrap, create_topic, machine, settings, table, unique, write_section
from support import consume_to_end, produce, values

from streamwise.pipeline_config import parse_pipeline_config
from streamwise.replay import iter_events
from streamwise.runner import Runner

PHISHING_FEATURES = {
    name: {"type": "float", "min": 0, "max": 1}
    for name in ("empty_server_form_handler", "popup_window", "https", "request_from_other_domain",
                 "anchor_from_other_domain", "is_popular", "long_url")
} | {"age_of_domain": {"type": "int", "min": 0, "max": 1}, "ip_in_url": {"type": "int", "min": 0, "max": 1}}
AGRAWAL_FEATURES = {
    "salary": "float", "commission": "float", "age": "int", "elevel": "int", "car": "int", "zipcode": "int",
    "hvalue": "float", "hyears": "int", "loan": "float",
}
HYPERPLANE_FEATURES = {str(i): "float" for i in range(10)}


def streams(n: int) -> list[tuple[str, str, dict[str, Any], int | None, dict[str, Any], str]]:
    """(name, source, params, limit, features, label type)."""
    return [
        ("Phishing", "Phishing", {}, None, PHISHING_FEATURES, "bool"),
        ("Agrawal (seed 42)", "synth.Agrawal", {"seed": 42}, n, AGRAWAL_FEATURES, "int"),
        ("Hyperplane (seed 42, 10 features)", "synth.Hyperplane", {"seed": 42, "n_features": 10}, n,
         HYPERPLANE_FEATURES, "int"),
    ]


LR = ["preprocessing.StandardScaler", "linear_model.LogisticRegression"]
LR_SPACE = {
    "LogisticRegression__optimizer__lr": [0.005, 0.01, 0.05, 0.1, 0.5, 1.0],
    "LogisticRegression__l2": [0.0, 0.001],
}
TREE = ["tree.HoeffdingTreeClassifier"]
TREE_SPACE = {"grace_period": [50, 200], "split_criterion": ["gini", "info_gain"], "leaf_prediction": ["mc", "nba"]}
FAMILIES = {"LogisticRegression (12)": (LR, LR_SPACE), "HoeffdingTree (8)": (TREE, TREE_SPACE)}
POLICIES = ("keep_all", "successive_halving", "bandit")


def _candidate_steps(steps: list[Any], assignment: dict[str, Any]) -> list[Any]:
    """The steps with one candidate's parameters written in, as a user would configure it."""
    if steps is TREE:
        return [{"tree.HoeffdingTreeClassifier": dict(assignment)}]
    lr, l2 = assignment["LogisticRegression__optimizer__lr"], assignment["LogisticRegression__l2"]
    return ["preprocessing.StandardScaler",
            {"linear_model.LogisticRegression": {"optimizer": {"optim.SGD": {"lr": lr}}, "l2": l2}}]


def _search(steps: list[Any], space: dict[str, Any], policy: str, n_events: int) -> dict[str, Any]:
    k = len(list(itertools.product(*space.values())))
    search: dict[str, Any] = {"space": space, "policy": policy}
    if policy == "successive_halving":
        search["budget"] = k * n_events // 2  # rungs at 1/8, 1/4, 1/2 (and 3/4) of the stream
    if policy == "bandit":
        search["bandit"] = {"EpsilonGreedy": {"epsilon": 0.1, "seed": 42}}
        search["burn_in"] = 100
    return {"name": f"search_{policy}", "steps": steps, "search": search}


def _config(name: str, topic: str, features: dict[str, Any], label_type: str, models: list[dict[str, Any]]) -> Any:
    return parse_pipeline_config({
        "name": name,
        "input": {"topic": topic},
        "output": {"topic": f"{name}.predictions", "fields": ["id", "prediction", "models", "search", "pseudo_labels"]},
        "schema": {"id": "id", "label": "label", "label_type": label_type, "features": features},
        "task": "classification",
        "metric": "Accuracy",
        "models": models,
    })


def _run(cfg: Any, servers: str) -> tuple[Any, Clock]:
    clock = Clock()
    summary = Runner(cfg, settings(servers, "kafka-python"), sensors=[clock]).run(until_idle_s=2.0)
    return summary, clock


def _cost(servers: str, stream: str, family: str, specs: list[dict[str, Any]], source: str, params: dict[str, Any],
          limit: int | None, features: dict[str, Any], label_type: str) -> list[Any]:
    """Each model alone on the same events, one after the other, two rounds; the best rate
    of each (the two cores are shared, so the best round is the least disturbed one)."""
    events = list(iter_events(source, params, limit=limit))
    if len(events) < 10_000:  # too short to time: replayed with new ids
        base = [json.loads(v) for _k, v in events]
        events = [(str(i).encode(), json.dumps({**e, "id": i}).encode())
                  for i, e in enumerate(e for _ in range(8) for e in base)]
    topic = unique("cost") + ".events"
    create_topic(servers, topic)
    produce(servers, topic, events)
    rates: dict[str, float] = {}
    for _round in range(2):
        for spec in specs:
            _s, clock = _run(_config(unique("cost"), topic, features, label_type, [spec]), servers)
            rates[spec["name"]] = max(rates.get(spec["name"], 0.0), clock.rate)
    default = rates["default"]
    searched = [rates[f"search_{p}"] for p in POLICIES]
    return [stream, family, f"{default:,.0f}"] + [f"{r:,.0f} ({r / default:.2f}×)" for r in searched]


def search_tables(servers: str, n: int) -> str:
    out = []
    rows: list[list[Any]] = []
    cost: list[list[Any]] = []
    for stream, source, params, limit, features, label_type in streams(n):
        events = list(iter_events(source, params, limit=limit))
        topic = unique("search") + ".events"
        create_topic(servers, topic)
        produce(servers, topic, events)
        for family, (steps, space) in FAMILIES.items():
            grid = [dict(zip(space, combo, strict=True)) for combo in itertools.product(*space.values())]
            models = [{"name": "default", "steps": steps}]
            models += [{"name": f"c{i}", "steps": _candidate_steps(steps, a)} for i, a in enumerate(grid)]
            models += [_search(steps, space, p, len(events)) for p in POLICIES]
            summary, _ = _run(_config(unique("search"), topic, features, label_type, models), servers)
            metric = {name: m["value"] for name, m in summary.metrics.items()}
            best_i = max(range(len(grid)), key=lambda i: metric[f"c{i}"])
            best, default = metric[f"c{best_i}"], metric["default"]
            label = ", ".join(f"{k.rpartition('__')[2]}={v}" for k, v in grid[best_i].items())
            for policy in POLICIES:
                s = metric[f"search_{policy}"]
                ok = "yes" if s >= best - 0.01 and s >= default else "no"
                rows.append([stream, family, policy, f"{s:.4f}", f"{best:.4f} ({label})", f"{default:.4f}",
                             f"{(s - best) * 100:+.2f}", f"{(s - default) * 100:+.2f}", ok])
            cost.append(_cost(servers, stream, family, models[:1] + models[-len(POLICIES):], source, params, limit,
                              features, label_type))
    out.append(table(
        f"Search through the service: prequential accuracy of the searched model vs the best single candidate in"
        f" hindsight and River's defaults (Phishing 1,250 events; the others {n:,})",
        ["stream", "family", "policy", "searched", "best candidate (hindsight)", "River defaults",
         "vs best (points)", "vs defaults (points)", "within 1 point of best and ≥ defaults"], rows))
    out.append("")
    out.append(table(
        "Cost: events/s through the service, the default model alone vs each search alone (× the default's rate;"
        " best of two rounds; Phishing replayed 8 times, 10,000 events)",
        ["stream", "family", "default model", *POLICIES], cost))
    return "\n".join(out)


def self_training_tables(servers: str, n: int) -> str:
    rows: list[list[Any]] = []
    st = {"threshold": 0.8, "weight": 0.5, "max_share": 0.8, "guard_window": 200, "guard_min_labels": 50}
    for stream, source, params, limit, features, label_type in streams(n):
        steps = LR if stream != "Agrawal (seed 42)" else TREE
        events = list(iter_events(source, params, limit=limit, label_share=0.05))
        labelled = sum(1 for _k, v in events if "label" in json.loads(v))
        topic = unique("st") + ".events"
        create_topic(servers, topic)
        produce(servers, topic, events)
        cfg = _config(unique("st"), topic, features, label_type, [
            {"name": "plain", "steps": steps},
            {"name": "self_trained", "steps": steps, "self_training": st},
            {"name": "unguarded", "steps": steps, "self_training": {**st, "guard_min_labels": 10**9}},
        ])
        summary, _ = _run(cfg, servers)
        records = values(consume_to_end(servers, cfg.output.topic))
        alerts = values(consume_to_end(servers, cfg.alerts_topic))
        off = [a for a in alerts if a["type"] == "self_training" and a["model"] == "self_trained"]
        pseudo = {m: sum(1 for r in records if m in (r.get("pseudo_labels") or []))
                  for m in ("self_trained", "unguarded")}
        plain = summary.metrics["plain"]["value"]
        guarded, unguarded = summary.metrics["self_trained"]["value"], summary.metrics["unguarded"]["value"]
        guard = (f"switched off at real label {off[0]['labels']} ({off[0]['self_trained']:.2f} vs shadow "
                 f"{off[0]['shadow']:.2f} over the last 200, a real gap)" if off else "stayed on")
        family = "LogisticRegression" if steps is LR else "HoeffdingTree"
        rows.append([stream, family, f"{labelled:,} of {len(events):,}", f"{plain:.4f}", f"{unguarded:.4f}",
                     f"{(unguarded - plain) * 100:+.2f}", pseudo["unguarded"], f"{guarded:.4f}",
                     f"{(guarded - plain) * 100:+.2f}", pseudo["self_trained"], guard])
    return table(
        "Self-training with about 5% of events labelled: prequential accuracy on the labelled events (threshold"
        " 0.8, weight 0.5, pseudo-labels at most 80% of what is learned)",
        ["stream", "model", "labelled events", "no self-training", "self-training, no guard", "points",
         "pseudo-labels", "self-training + guard", "points", "pseudo-labels", "guard"], rows)


SECTION = "## Hyperparameter search and self-training (bench/search.py)"
NOTES = """\
How to read these tables. Each accuracy is a model's prequential (test-then-train) accuracy
as the service scored it, all models of a row group in one pipeline on one topic. "Best
candidate (hindsight)" is the best of the candidates run as plain models beside the search:
a search cannot know it in advance. keep_all costs every candidate on every label; halving
costs all of them until its rungs drop the losers (its budget here: half of candidates ×
events), then one; the bandit costs one candidate per label after its burn-in, but each
candidate learns only the labels it is pulled on, which is why it can fall behind on
streams where more data is what makes a model good. The cost table times each model alone
(events/s from the first poll to the last commit; the two cores are shared, so compare
the ratios). Self-training: the metric is scored on the labelled events only (pseudo-labels
never reach it); "no guard" is the same self-training whose guard never has enough labels,
to show what the guard prevents or costs."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=15000, help="Agrawal and Hyperplane events")
    parser.add_argument("--write", type=Path, help="add or replace this section of a Markdown file")
    args = parser.parse_args()
    servers = bootstrap()
    parts = [machine(), "", search_tables(servers, args.events), "", self_training_tables(servers, args.events), "",
             NOTES]
    text = "\n".join(parts)
    print(text)
    if args.write:
        write_section(SECTION, text, args.write)


if __name__ == "__main__":
    main()
