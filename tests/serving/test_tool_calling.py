"""ModelDeployment's tool-calling options (spec.vllm.enableAutoToolChoice / toolCallParser / chatTemplate):
validation, and vLLM's command line built from them. The parser names are checked against the installed
vLLM's own registry (.venv-serving). The real-vLLM test is test_tool_calling_vllm.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune.api.modeldeployment import TOOL_CALL_PARSERS, VLLMOptions
from kubetune_serving.launch import build_vllm_argv, write_chat_template
from pydantic import ValidationError

from tests.serving.helpers import SERVING_VENV, serving_venv_missing

TEMPLATE = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"


def test_tool_options_become_vllm_flags(tmp_path: Path) -> None:
    options = VLLMOptions.model_validate({"enableAutoToolChoice": True, "toolCallParser": "hermes",
                                          "chatTemplate": TEMPLATE, "extraArgs": ["--enforce-eager"]})
    path = write_chat_template(options, tmp_path / "t")
    assert Path(path).read_text() == TEMPLATE
    argv = build_vllm_argv("/m", options, served_model_name="m", chat_template_file=path)
    assert argv[argv.index("--enable-auto-tool-choice"):] == [
        "--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--chat-template", path, "--enforce-eager"]


def test_without_tool_options_nothing_changes() -> None:
    options = VLLMOptions()
    assert options.to_dict() == VLLMOptions.model_validate(options.to_dict()).to_dict()
    assert "enableAutoToolChoice" not in options.to_dict()  # existing deployments keep their pod template hash
    argv = build_vllm_argv("/m", options, served_model_name="m")
    assert not {"--enable-auto-tool-choice", "--tool-call-parser", "--chat-template"} & set(argv)
    assert write_chat_template(options, Path("/nonexistent")) is None


def test_a_chat_template_needs_its_file() -> None:
    with pytest.raises(ValueError, match="vllm.chatTemplate is set"):
        build_vllm_argv("/m", VLLMOptions(chatTemplate=TEMPLATE), served_model_name="m")


@pytest.mark.parametrize(("options", "message"), [
    ({"enableAutoToolChoice": True}, "vllm.enableAutoToolChoice needs vllm.toolCallParser"),
    ({"toolCallParser": "qwen25"}, "toolCallParser\n  Input should be 'apertus'"),
    ({"extraArgs": ["--tool-call-parser", "hermes"]}, "--tool-call-parser has its own field: set vllm.toolCallParser"),
    ({"extraArgs": ["--enable-auto-tool-choice"]}, "--enable-auto-tool-choice has its own field"),
    ({"extraArgs": ["--chat-template=/t.jinja"]}, "--chat-template has its own field: set vllm.chatTemplate"),
    ({"chatTemplate": ""}, "chatTemplate\n  String should have at least 1 character"),
    ({"chatTemplate": "x" * 65537}, "chatTemplate\n  String should have at most 65536 characters"),
])
def test_bad_tool_options_are_refused_naming_the_field(options: dict, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        VLLMOptions.model_validate(options)
    assert message in str(info.value)


def test_the_crd_has_the_same_rules() -> None:
    """The CEL rule and the enum reach the CRD (kubectl refuses what admission would)."""
    import yaml

    crd = yaml.safe_load((Path(__file__).parents[2] / "crds/kubetune.io_modeldeployments.yaml").read_text())
    vllm = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["vllm"]
    assert vllm["properties"]["toolCallParser"]["enum"] == list(TOOL_CALL_PARSERS)
    assert vllm["properties"]["chatTemplate"]["maxLength"] == 65536
    assert any("has(self.toolCallParser)" in rule["rule"] for rule in vllm["x-kubernetes-validations"])


@pytest.mark.skipif(serving_venv_missing() is not None, reason=str(serving_venv_missing()))
def test_parser_names_are_the_installed_vllms() -> None:
    """vLLM's tool-parser registry (vllm/tool_parsers/__init__.py: _TOOL_PARSERS_TO_REGISTER, what
    `--tool-call-parser` accepts) is exactly TOOL_CALL_PARSERS. Read from the source: importing vLLM takes ~30 s."""
    import ast

    (source,) = SERVING_VENV.glob("lib/python3*/site-packages/vllm/tool_parsers/__init__.py")
    tree = ast.parse(source.read_text())
    registry = next(node.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                    and any(getattr(t, "id", None) == "_TOOL_PARSERS_TO_REGISTER" for t in node.targets))
    assert sorted(ast.literal_eval(registry)) == sorted(TOOL_CALL_PARSERS)
