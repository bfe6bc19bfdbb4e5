"""The trainer's exit-code contract (read by the Job podFailurePolicy and the status derivation)."""

SUCCESS = 0
# Bad data, bad config, model not found, no access: retrying cannot help.
USER_ERROR = 1
# A bug or an infrastructure fault inside the trainer: retrying may help.
INTERNAL_ERROR = 203
# Stopped by SIGTERM after saving a checkpoint (preemption, eviction, deletion).
PREEMPTED = 143
# Its termination message names the checkpoint saved on the way out, which the next pod resumes from;
# the operator's status reads the step back ("preempted, resuming from checkpoint N").
PREEMPTED_CHECKPOINT = "the checkpoint of step {step} is in {uri}"
PREEMPTED_CHECKPOINT_RE = r"the checkpoint of step (\d+) is in "
