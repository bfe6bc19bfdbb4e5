"""ModelDeployment: a base model served by vLLM with a set of LoRA adapters, behind one endpoint."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .common import (
    ADAPTER_URI,
    CONDITIONS_FIELD,
    DNS_LABEL,
    BaseModelSource,
    Condition,
    KubeModel,
    KubeObject,
    ObjectStorage,
    Scheduling,
    SecretKeyRef,
    cel,
    check_adapter_uri,
    decimal,
    with_rules,
)
from .conditions import DeploymentAdapterState, PodAdapterState
from .scaling import Autoscaling, ServingResources
from .promotion import AdapterVersion, FineTuneJobRef, Gate, PromotionStatus, ServingPolicy, check_entry, check_names

MAX_ADAPTER_MESSAGE = 4096  # status.adapters[].message; longer ones are cut, ending in "..."
MAX_PODS_LISTED = 128  # spec.replicas (<= 64) plus the rollout's surge pod, with room to spare


def check_unique_names(adapter_names: Iterable[str]) -> None:
    """Adapter names are OpenAI model names: one per deployment (spec.adapters and the sidecar's desired set)."""
    names = list(adapter_names)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"adapters: duplicate name(s) {', '.join(dupes)}")


class AdapterSource(KubeModel):
    """One LoRA adapter to serve, by FineTuneJob or by URI, or as versions (docs/promotion.md)."""

    model_config = with_rules(cel("[has(self.fineTuneJobRef), has(self.uri), has(self.versions)].filter(x, x).size() == 1",
                                  "set exactly one of fineTuneJobRef, uri or versions"),
                              cel("has(self.versions) == has(self.serving)", "versions and serving go together"))

    name: str = Field(
        description="Model name clients send in the OpenAI `model` field. A DNS label (lowercase, digits, '-').",
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL,
    )
    fine_tune_job_ref: FineTuneJobRef | None = Field(
        default=None, description="Serve the adapter this FineTuneJob publishes; waits until it succeeds."
    )
    uri: str | None = Field(
        default=None,
        description="Folder holding a published adapter with its manifest.json: s3://bucket/prefix, pvc://claim/path, "
        "hf://org/name@<40-hex commit sha>[/folder] (a Hugging Face Hub repository pinned to one commit; a branch or "
        "tag is refused, it can move between reading manifest.json and the files), or file:///path.",
        max_length=1024,
        pattern=ADAPTER_URI,
    )

    @field_validator("uri", mode="before")
    @classmethod
    def _adapter_uri(cls, value: str | None) -> str | None:
        return check_adapter_uri(value) if isinstance(value, str) else value

    gate: Gate | None = Field(default=None, description="What an adapter must pass before it is routable (docs/promotion.md).")
    versions: list[AdapterVersion] | None = Field(default=None, max_length=16, description="Published adapters the name can point at.")
    serving: ServingPolicy | None = Field(default=None, description="Which of versions answers the name, and a canary.")

    @model_validator(mode="after")
    def _one_source(self) -> AdapterSource:
        if self.fine_tune_job_ref is not None and self.uri is not None:
            raise ValueError(f"adapter {self.name!r}: set exactly one of fineTuneJobRef or uri")
        check_entry(self.name, self.fine_tune_job_ref is not None or self.uri is not None, self.versions, self.serving)
        return self


# vLLM 0.32's registered tool-call parsers (vllm.tool_parsers.ToolParserManager; `--tool-call-parser`). A test
# keeps this list equal to the installed vLLM's registry.
TOOL_CALL_PARSERS = (
    "apertus", "cohere_command3", "cohere_command4", "deepseek_v3", "deepseek_v31", "deepseek_v32", "deepseek_v4",
    "deepseek_v41", "dots", "ernie45", "functiongemma", "gemma4", "gigachat3", "glm45", "glm47", "granite",
    "granite-20b-fc", "granite4", "hermes", "hf", "hunyuan_a13b", "hy_v3", "hy_v4", "inkling", "internlm", "jamba",
    "k2_horizon", "kimi_k2", "kimi_k3", "lfm2", "ling3", "llama3_json", "llama4_json", "llama4_pythonic", "longcat",
    "mimo", "minicpm5", "minimax_m2", "minimax_m3", "mistral", "muse_glimmer", "olmo3", "openai", "phi4_mini_json",
    "plamo3", "poolside_v1", "pythonic", "qwen3_coder", "qwen3_json", "qwen3_xml", "seed_oss", "step3", "step3p5",
    "xlam",
)
# vLLM flags that have a field here: extraArgs must not set them a second time.
FLAG_FIELDS = {"--enable-auto-tool-choice": "enableAutoToolChoice", "--tool-call-parser": "toolCallParser",
               "--chat-template": "chatTemplate"}
MAX_CHAT_TEMPLATE = 65536


class VLLMOptions(KubeModel):
    """vLLM engine options (see vLLM's engine arguments)."""

    model_config = with_rules(
        cel("!has(self.maxCpuLoras) || self.maxCpuLoras >= self.maxLoras", "vllm.maxCpuLoras must be >= vllm.maxLoras"),
        cel("!has(self.enableAutoToolChoice) || !self.enableAutoToolChoice || has(self.toolCallParser)",
            "vllm.enableAutoToolChoice needs vllm.toolCallParser (how to read calls out of the model's output)"),
    )

    max_loras: int = Field(default=4, description="Adapters usable in one batch on the GPU (--max-loras).", ge=1, le=256)
    max_lora_rank: int = Field(default=16, description="Largest adapter rank accepted (--max-lora-rank).", ge=1, le=512)
    max_cpu_loras: int | None = Field(
        default=None,
        description="Adapters cached in CPU memory (--max-cpu-loras). More adapters than this are reloaded from local disk on demand.",
        ge=1,
        le=4096,
    )
    max_model_len: int | None = Field(default=None, description="Context length (--max-model-len). Empty: the model's.", ge=16, le=1_048_576)
    tensor_parallel_size: int = Field(default=1, description="GPUs one replica shards the model over.", ge=1, le=16)
    gpu_memory_utilization: str = decimal("Fraction of GPU memory vLLM may use, e.g. \"0.9\".", default="0.9")
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(default="auto", description="Weight and activation dtype.")
    enable_auto_tool_choice: bool | None = Field(
        default=None,
        description="Tool calling (--enable-auto-tool-choice): requests with OpenAI `tools` (tool_choice auto) get the "
        "model's calls back as `tool_calls`, read out of its output by toolCallParser. Needs toolCallParser. Empty: off.",
    )
    tool_call_parser: Literal[TOOL_CALL_PARSERS] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="vLLM's parser for the model's tool-call format (--tool-call-parser), e.g. hermes (Qwen2.5, Hermes), "
        "llama3_json (Llama 3.1+), mistral, qwen3_xml. Must match the format the model (and its adapters) were trained "
        "to write.",
    )
    chat_template: str | None = Field(
        default=None,
        description="A Jinja chat template that replaces the model's own (--chat-template), e.g. one that renders tools "
        "for a model whose template does not. Empty: the model's tokenizer template.",
        min_length=1,
        max_length=MAX_CHAT_TEMPLATE,
    )
    extra_args: list[str] | None = Field(
        default=None,
        description="Further vLLM command-line arguments, appended as given (not the flags that have a field here: "
        "--enable-auto-tool-choice, --tool-call-parser, --chat-template).",
        max_length=32,
        json_schema_extra={"items": {"type": "string", "maxLength": 256}},
    )

    @field_validator("gpu_memory_utilization")
    @classmethod
    def _fraction(cls, value: str) -> str:
        if not (0 < Decimal(value) <= 1):
            raise ValueError(f"must be in (0, 1], got {value}")
        return value

    @field_validator("extra_args")
    @classmethod
    def _no_field_flags(cls, value: list[str] | None) -> list[str] | None:
        for arg in value or []:
            flag = arg.split("=", 1)[0]
            if flag in FLAG_FIELDS:
                raise ValueError(f"{flag} has its own field: set vllm.{FLAG_FIELDS[flag]} instead of extraArgs")
        return value

    @model_validator(mode="after")
    def _cpu_loras(self) -> VLLMOptions:
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError("vllm.maxCpuLoras must be >= vllm.maxLoras")
        if self.enable_auto_tool_choice and self.tool_call_parser is None:
            raise ValueError("vllm.enableAutoToolChoice needs vllm.toolCallParser (how to read calls out of the "
                             "model's output: hermes, llama3_json, mistral, ...; see docs/serving.md)")
        return self


class ServiceOptions(KubeModel):
    """How the OpenAI-compatible endpoint is exposed."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = Field(default="ClusterIP", description="Service type.")
    port: int = Field(default=8000, description="Service port.", ge=1, le=65535)


class ModelDeploymentSpec(KubeModel):
    """Desired serving deployment. Changing adapters or the service never restarts pods; changing anything else rolls them."""

    model_config = with_rules(cel("!has(self.vllm) || !has(self.resources) || self.resources.gpus == 0 "
                                  "|| self.vllm.tensorParallelSize <= self.resources.gpus",
                                  "vllm.tensorParallelSize must not exceed resources.gpus"))

    base_model: BaseModelSource = Field(description="The model vLLM serves; adapters must be trained on it.")
    adapters: list[AdapterSource] = Field(
        default_factory=list,
        description="LoRA adapters to serve; each is also an OpenAI model name.",
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    replicas: int = Field(default=1, description="Serving replicas (pods, or LeaderWorkerSet groups); not applied with autoscaling.", ge=0, le=64)
    autoscaling: Autoscaling | None = Field(default=None, description="Replicas follow vLLM's load (docs/scaling.md).")
    resources: ServingResources = Field(default_factory=ServingResources, description="Compute per replica.")
    vllm: VLLMOptions = Field(default_factory=VLLMOptions, description="vLLM engine options.")
    api_key_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the API key clients must send as a Bearer token."
    )
    service: ServiceOptions = Field(default_factory=ServiceOptions, description="Endpoint exposure.")
    storage: ObjectStorage = Field(default_factory=ObjectStorage, description="Object storage connection for adapters and s3:// models.")
    scheduling: Scheduling = Field(default_factory=Scheduling, description="Priority and placement.")
    image: str | None = Field(default=None, description="Serving image override. Empty: the platform default.", max_length=512, pattern=r"^[^\s]+$")
    hub_token_secret_ref: SecretKeyRef | None = Field(default=None, description="Secret key holding a Hugging Face token.")

    @model_validator(mode="after")
    def _cross_field(self) -> ModelDeploymentSpec:
        check_unique_names(a.name for a in self.adapters)
        check_names(self.adapters)
        if self.resources.gpus and self.vllm.tensor_parallel_size > self.resources.gpus:
            raise ValueError("vllm.tensorParallelSize must not exceed resources.gpus")
        return self


# ----------------------------------------------------------------------------------------- status


class AdapterStatus(KubeModel):
    """Observed state of one adapter."""

    name: str = Field(description="Adapter (model) name.", max_length=63)
    source: str = Field(description="fineTuneJob/<name> or the URI.", max_length=1100)
    uri: str | None = Field(default=None, description="Resolved adapter folder.", max_length=2048)
    sha256: str | None = Field(default=None, description="sha256 of its manifest.json.", max_length=64)
    state: DeploymentAdapterState = Field(description="WaitingForFineTuneJob, Loading, Ready, Failed or Rejected.")
    replicas_loaded: str | None = Field(
        default=None, max_length=16, pattern=r"^[0-9]+/[0-9]+$",
        description="Replicas that serve it out of the deployment's replicas (its live pods, or spec.replicas while "
                    "fewer exist), e.g. 1/2. The adapter is Ready only when every replica serves it.")
    pods: dict[str, PodAdapterState] | None = Field(
        default=None, description="Each live pod's state of this adapter (pod name -> Loading, Ready, Failed, Rejected, or "
                                  "Unknown when its adapter-sync sidecar does not answer): which pod lags.",
        json_schema_extra={"maxProperties": MAX_PODS_LISTED})
    message: str | None = Field(default=None, description="Why it is not Ready (naming the pods that lag).",
                                max_length=MAX_ADAPTER_MESSAGE)
    promotion: PromotionStatus | None = Field(default=None, description="Gate verdicts, versions, canary (docs/promotion.md).")


class ModelDeploymentStatus(KubeModel):
    """Observed state, derived from the Deployment, its pods' adapter reports and FineTuneJobs."""

    observed_generation: int | None = Field(default=None, description="The .metadata.generation last acted on.", ge=0)
    conditions: list[Condition] = CONDITIONS_FIELD
    replicas: int | None = Field(default=None, description="Serving pods (scale subresource).", ge=0)
    ready_replicas: int | None = Field(default=None, description="Ready serving pods.", ge=0)
    selector: str | None = Field(default=None, description="Label selector of the pods (scale subresource).", max_length=1024)
    endpoint: str | None = Field(default=None, description="OpenAI-compatible base URL inside the cluster.", max_length=1024)
    adapters_ready: str | None = Field(default=None, description="Ready adapters out of desired, e.g. 2/3.", max_length=16)
    adapters: list[AdapterStatus] | None = Field(
        default=None, description="Per-adapter state.", max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class ModelDeployment(KubeObject):
    """vLLM serving of a base model plus LoRA adapters, with an OpenAI-compatible endpoint."""

    kind: Literal["ModelDeployment"] = Field(default="ModelDeployment", description="Kind.")
    spec: ModelDeploymentSpec = Field(description="Desired serving deployment.")
    status: ModelDeploymentStatus | None = Field(default=None, description="Observed state.")
