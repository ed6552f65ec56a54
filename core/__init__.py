"""The base layer: what every other layer may import, importing nothing of ours.

- :mod:`~streamwise.core.errors`: the exceptions streamwise raises on purpose;
- :mod:`~streamwise.core.settings`: the service settings (Kafka, Redis, snapshots, metrics);
- :mod:`~streamwise.core.sensors`: the no-op hooks processing code calls for metrics;
- :mod:`~streamwise.core.stages`: the fixed vocabularies (dead-letter stages, cleaner actions).

The import rule (``tests/test_layers.py``): ``core`` imports no other streamwise module;
``stream`` and ``models`` import only ``core`` and themselves; ``connectors`` imports
only ``core`` and itself; the app (the rest of ``streamwise``) may import everything;
nothing imports ``bench``.
"""
