"""Pure learning logic: the River learner catalog, the torch mini-batch learners, prequential
scoring and evaluation, drift detection, champion selection, the pending-label buffer and the
state fingerprint. No I/O: imports only :mod:`streamwise.core` and itself."""
