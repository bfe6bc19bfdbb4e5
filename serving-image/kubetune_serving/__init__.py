"""kubetune serving image: the adapter-sync sidecar beside vLLM, and vLLM's launcher.

    protocol     the operator <-> sidecar wire contract (desired set in, /status out) and diffing
    sync         sidecar entry point (CLI); syncer: the reconcile loop; server: /healthz /readyz /status
    sources      desired set from a file or a watched ConfigMap (kubeapi: minimal API connection)
    cache        fetch + verify + admit into a content-addressed local cache (storage, verify)
    vllm_client  /v1/models, /v1/load_lora_adapter, /v1/unload_lora_adapter
    launch       ModelDeployment vLLM options -> vLLM command line, then exec vLLM

See docs/serving.md.
"""
