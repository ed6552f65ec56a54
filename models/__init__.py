"""Pure learning logic: the River learner catalog, prequential scoring, and (later) torch, drift and champion selection. No I/O."""
