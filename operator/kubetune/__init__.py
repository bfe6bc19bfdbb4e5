"""kubetune: a Kubernetes operator for LLM fine-tuning and LoRA serving."""

__version__ = "0.1.0"
