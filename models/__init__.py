"""Pure learning logic: the River learner catalog, the learner contract and its checks, the
torch mini-batch learners, one object per model and the scoreboard that scores them, drift
detection, champion selection, the pending-label buffer and the state fingerprint. No I/O:
imports only :mod:`streamwise.core` and itself."""
