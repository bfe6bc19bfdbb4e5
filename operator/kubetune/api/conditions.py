"""Condition types and reasons: the only words status may use."""

# Condition status values (metav1.ConditionStatus).
TRUE = "True"
FALSE = "False"
UNKNOWN = "Unknown"

# FineTuneJob condition types.
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
SUSPENDED = "Suspended"
SERVABLE = "Servable"  # only on DoRA jobs: whether vLLM can serve what the job publishes
FINETUNEJOB_CONDITION_TYPES = (RUNNING, SUCCEEDED, FAILED, SUSPENDED, SERVABLE)

# ModelDeployment condition types.
READY = "Ready"
AVAILABLE = "Available"
ADAPTERS_READY = "AdaptersReady"
PROGRESSING = "Progressing"
MODELDEPLOYMENT_CONDITION_TYPES = (READY, AVAILABLE, ADAPTERS_READY, PROGRESSING)


class Reason:
    """CamelCase reasons, as metav1.Condition requires."""

    # Terminal, user-fixable.
    VALIDATION_FAILED = "ValidationFailed"
    USER_ERROR = "UserError"
    OOM_KILLED = "OOMKilled"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    INTERNAL_ERROR = "InternalError"
    # Stuck, possibly transient.
    IMAGE_PULL_FAILED = "ImagePullFailed"
    UNSCHEDULABLE = "Unschedulable"
    # Lifecycle.
    JOB_CREATED = "JobCreated"
    PENDING = "Pending"
    TRAINING = "Training"
    RESTARTING = "Restarting"
    FINISHING = "Finishing"
    COMPLETED = "Completed"
    NOT_COMPLETED = "NotCompleted"
    NO_FAILURE = "NoFailure"
    SUSPENDED = "Suspended"
    NOT_SUSPENDED = "NotSuspended"
    QUEUED = "Queued"  # Kueue holds the Job (suspended) until its queue has quota for it
    # Cancellation (spec.cancel).
    CANCELLING = "Cancelling"  # the trainer checkpoints and stops; then the Job is removed
    CANCELLED = "Cancelled"  # terminal: Failed=True; status, checkpoints and metrics are kept
    CANCEL_IGNORED = "CancelIgnored"  # spec.cancel on a job that had already finished
    # Servable (DoRA jobs).
    DORA_NOT_SERVABLE = "DoRANotServable"
    MERGED_MODEL_SERVABLE = "MergedModelServable"
