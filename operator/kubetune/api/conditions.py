"""Condition types, reasons and adapter states: the only words status may use.

Reasons are enums, one per kind: a reason that is not a member here cannot appear in a status. The
adapter states are one enum too, shared by the ModelDeployment status and the sidecar's report
(kubetune.api.sidecar); each place that allows only some of them says which (the Literal types below).
"""

from enum import StrEnum
from typing import Literal

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
DATA_VALIDATED = "DataValidated"  # the CPU-only pre-flight: data valid and the job fits its GPUs
REGRESSED = "Regressed"  # only with spec.evaluation.regressionSet, once succeeded: a metric dropped beyond maxRegression
FINETUNEJOB_CONDITION_TYPES = (RUNNING, SUCCEEDED, FAILED, SUSPENDED, SERVABLE, DATA_VALIDATED, REGRESSED)

# ModelDeployment condition types.
READY = "Ready"
AVAILABLE = "Available"
ADAPTERS_READY = "AdaptersReady"
PROGRESSING = "Progressing"
MODELDEPLOYMENT_CONDITION_TYPES = (READY, AVAILABLE, ADAPTERS_READY, PROGRESSING)


class FineTuneJobReason(StrEnum):
    """CamelCase reasons of FineTuneJob conditions, as metav1.Condition requires."""

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
    # Pre-flight (DataValidated; Running while it runs). A failed pre-flight is Failed=True with reason
    # ValidationFailed (the user's to fix) or PreflightFailed (its pod crashed, ran out of memory or time);
    # neither ends the job: a spec change or deleting the pre-flight Job runs it again.
    VALIDATING = "Validating"  # the pre-flight Job runs (or is being created); no GPU is asked for yet
    VALIDATED = "Validated"  # DataValidated=True: the training Job may start
    PREFLIGHT_FAILED = "PreflightFailed"
    PREFLIGHT_DISABLED = "PreflightDisabled"  # DataValidated=Unknown: the platform turned pre-flight off
    # Servable (DoRA jobs).
    DORA_NOT_SERVABLE = "DoRANotServable"
    MERGED_MODEL_SERVABLE = "MergedModelServable"
    # Regressed (spec.evaluation.regressionSet).
    REGRESSION_EXCEEDED = "RegressionExceeded"  # Regressed=True: a metric dropped by more than maxRegression
    NO_REGRESSION = "NoRegression"  # Regressed=False: every drop within maxRegression


class ModelDeploymentReason(StrEnum):
    """CamelCase reasons of ModelDeployment conditions."""

    VALIDATION_FAILED = "ValidationFailed"
    # Ready
    READY = "Ready"  # Ready=True; Ready=False takes the reason of Available, else of AdaptersReady
    # Available
    CREATING = "Creating"
    REPLICAS_READY = "ReplicasReady"
    SCALED_TO_ZERO = "ScaledToZero"
    NO_READY_REPLICAS = "NoReadyReplicas"
    # Progressing
    ROLLING_OUT = "RollingOut"
    ROLLOUT_COMPLETE = "RolloutComplete"
    # AdaptersReady, worst adapter first
    ALL_ADAPTERS_READY = "AllAdaptersReady"
    ADAPTER_REJECTED = "AdapterRejected"
    ADAPTER_FAILED = "AdapterFailed"
    WAITING_FOR_FINETUNEJOB = "WaitingForFineTuneJob"
    ADAPTERS_LOADING = "AdaptersLoading"
    ADAPTER_GATED = "AdapterGated"  # a version failed its gate (docs/promotion.md); the previous one keeps serving


class AdapterState(StrEnum):
    """State of one adapter: in a ModelDeployment's status.adapters[] and in each sidecar's report."""

    WAITING_FOR_FINETUNEJOB = "WaitingForFineTuneJob"  # its FineTuneJob has not published it (yet)
    LOADING = "Loading"  # being fetched, verified and loaded; or waiting for vLLM (restored after its restart)
    READY = "Ready"  # vLLM serves it (in a deployment's status: on every replica)
    FAILED = "Failed"  # a retryable error (storage, integrity, vLLM refused it): retried with backoff
    REJECTED = "Rejected"  # it can never be served as is (kubetune.api.admission): not retried for that manifest
    GATED = "Gated"  # it failed its gate (kubetune.api.promotion): never routable for that manifest and gate
    UNKNOWN = "Unknown"  # one pod's state of it when that pod's sidecar does not answer


# What a sidecar reports for one adapter (kubetune.api.sidecar.AdapterReport.state).
SyncState = Literal[AdapterState.LOADING, AdapterState.READY, AdapterState.FAILED, AdapterState.REJECTED]
# One pod's state of an adapter in the ModelDeployment status: its sidecar's report, or Unknown.
PodAdapterState = Literal[AdapterState.LOADING, AdapterState.READY, AdapterState.FAILED, AdapterState.REJECTED,
                          AdapterState.UNKNOWN]
# An adapter's state in the ModelDeployment status (over all its replicas).
DeploymentAdapterState = Literal[AdapterState.WAITING_FOR_FINETUNEJOB, AdapterState.LOADING, AdapterState.READY,
                                 AdapterState.FAILED, AdapterState.REJECTED, AdapterState.GATED]
# Worst first: the one that names an adapter's (or a deployment's) state when pods or adapters differ.
SEVERITY = (AdapterState.REJECTED, AdapterState.FAILED, AdapterState.GATED, AdapterState.WAITING_FOR_FINETUNEJOB,
            AdapterState.LOADING)
