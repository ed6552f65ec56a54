"""Pure per-event logic: schema and validation, streaming cleaners and feature extractors. No I/O."""
