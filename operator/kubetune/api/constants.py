"""Names shared by the operator, the trainer and the serving sidecar: one name for one thing."""

GROUP = "kubetune.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

FINETUNEJOB_KIND = "FineTuneJob"
FINETUNEJOB_PLURAL = "finetunejobs"
MODELDEPLOYMENT_KIND = "ModelDeployment"
MODELDEPLOYMENT_PLURAL = "modeldeployments"
FINETUNETEMPLATE_KIND = "FineTuneTemplate"  # cluster-scoped: a platform team's preset per base model
FINETUNETEMPLATE_PLURAL = "finetunetemplates"

FINALIZER = "kubetune.io/finalizer"
FIELD_MANAGER = "kubetune-operator"

# Labels put on every child object.
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "kubetune"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_FINETUNEJOB = "kubetune.io/finetunejob"
LABEL_MODELDEPLOYMENT = "kubetune.io/modeldeployment"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"

# Kueue (https://kueue.sigs.k8s.io/docs/tasks/run/jobs/): it creates one Workload per queued Job, labelled
# with the Job's uid, and un-suspends the Job when it admits the Workload. An admitted Job that is merely
# suspended is started again by Kueue; a Workload with spec.active=false is evicted and not re-queued.
KUEUE_API_VERSION = "kueue.x-k8s.io/v1beta1"
KUEUE_WORKLOAD_KIND = "Workload"
LABEL_KUEUE_JOB_UID = "kueue.x-k8s.io/job-uid"
# On a queued training Job: "true" while the user holds it (spec.suspend or spec.cancel). The operator
# only ever releases a hold it recorded here; every other suspension of a queued Job is Kueue's.
ANNOTATION_USER_HOLD = "kubetune.io/user-hold"
# On a FineTuneJob's training and pre-flight Jobs: the identity of the spec they were built from.
ANNOTATION_SPEC_HASH = "kubetune.io/spec-hash"

COMPONENT_TRAINER = "trainer"
# The CPU-only pre-flight Job of a FineTuneJob (validate data, count tokens, estimate memory) and its pod.
COMPONENT_PREFLIGHT = "preflight"
COMPONENT_SERVING = "serving"

# The trainer's config file, mounted from a ConfigMap.
TRAINER_CONFIG_KEY = "config.json"
TRAINER_CONFIG_MOUNT = "/etc/kubetune"
TRAINER_CONFIG_PATH = f"{TRAINER_CONFIG_MOUNT}/{TRAINER_CONFIG_KEY}"
TRAINER_CONTAINER = "trainer"
TRAINER_METRICS_PORT = 9090

# Environment variables the trainer reads (secrets arrive only as secretKeyRef env).
ENV_AWS_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
ENV_AWS_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"
ENV_S3_ENDPOINT = "KUBETUNE_S3_ENDPOINT"
ENV_S3_REGION = "AWS_DEFAULT_REGION"
ENV_HF_TOKEN = "HF_TOKEN"
ENV_JUDGE_API_KEY = "KUBETUNE_JUDGE_API_KEY"  # spec.evaluation.judge.apiKeySecretRef, read by the trainer's judge client
ENV_CONFIG_PATH = "KUBETUNE_CONFIG"
ENV_POD_NAME = "KUBETUNE_POD_NAME"
ENV_WORK_DIR = "KUBETUNE_WORK_DIR"  # the pod's scratch folder (an emptyDir): data, model, checkpoints
# Distributed runs (one process per GPU; resources.nodes > 1: one pod per node of an Indexed Job).
ENV_NNODES = "KUBETUNE_NNODES"
ENV_NODE_RANK = "KUBETUNE_NODE_RANK"
ENV_STOP_GRACE = "KUBETUNE_STOP_GRACE_SECONDS"  # how long the ranks get to checkpoint after SIGTERM
RENDEZVOUS_PORT = 29500

# Keys expected inside the storage credentials Secret.
SECRET_KEY_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"
SECRET_KEY_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"

TERMINATION_LOG = "/dev/termination-log"

# Serving pods: a vLLM container and the adapter-sync sidecar (kubetune_serving) from one image.
SERVING_VLLM_CONTAINER = "vllm"
SERVING_SYNC_CONTAINER = "adapter-sync"
SERVING_VLLM_PORT = 8000
SERVING_SYNC_PORT = 8081
SYNC_HEALTHZ_PATH = "/healthz"  # liveness of the sidecar
SYNC_READYZ_PATH = "/readyz"  # the pod's readiness probe: vLLM up and the desired set restored
SYNC_STATUS_PATH = "/status"  # JSON kubetune.api.sidecar.SidecarStatus, polled by the operator
# Key of the per-ModelDeployment ConfigMap holding the desired set (kubetune.api.sidecar.DesiredSet).
DESIRED_ADAPTERS_KEY = "adapters.json"
# Adapter cache: an emptyDir mounted at this same path in both containers (vLLM reads what sync verified).
ADAPTER_CACHE_DIR = "/var/cache/kubetune/adapters"
ENV_VLLM_API_KEY = "VLLM_API_KEY"  # read by vLLM itself and by the sidecar
ENV_PVC_ROOT = "KUBETUNE_PVC_ROOT"  # where pvc://claim/... is mounted: <root>/<claim>
DEFAULT_PVC_ROOT = "/mnt/pvc"
# configmap://name/key data: the operator mounts ConfigMap `name` (its keys that the spec names) at <root>/<name>.
ENV_CONFIGMAP_ROOT = "KUBETUNE_CONFIGMAP_ROOT"
DEFAULT_CONFIGMAP_ROOT = "/mnt/configmap"
CONFIGMAP_MAX_BYTES = 1024 * 1024  # the API server's limit on a whole ConfigMap
ENV_NAMESPACE = "KUBETUNE_NAMESPACE"  # the pod's namespace (downward API); else the service account's

# Overrides the termination-log path outside a pod (`kubetune local`, tests); in a pod it is TERMINATION_LOG.
ENV_TERMINATION_LOG = "KUBETUNE_TERMINATION_LOG"
# Base URL of the Kubernetes API for the trainer's progress reports outside a pod (`kubetune local`, tests).
ENV_API_URL = "KUBETUNE_API_URL"
