"""`kubetune gateway`: OpenAI's API (Files, Fine-tuning jobs, Models, chat/completions) for teams without
kubectl, over the same FineTuneJob/ModelDeployment objects the operator reconciles.

    app.py       create_app(settings): the FastAPI app, shared state (Gateway), router registry (ROUTERS)
    settings.py  GatewaySettings (the YAML config), load_settings
    tenancy.py   API keys (Secrets, hashed) -> Tenant(namespace, limits); the `tenant` dependency (TenantDep)
    errors.py    OpenAIError and OpenAI's error shape for every error
    files.py     /v1/files
    jobs.py      /v1/fine_tuning/jobs
    rbac.py      the Kubernetes rights the gateway's ServiceAccount needs (the chart renders them)

FastAPI (on Starlette): request/response models are pydantic v2 like kubetune.api, dependencies carry the
tenant, multipart uploads stream (python-multipart); served by uvicorn.
"""
