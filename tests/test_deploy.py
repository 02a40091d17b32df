"""What leaves this folder for an image or Cloud Run, and the Cloud Run manifest, against the service's defaults.

The container itself is built and run by scripts/check-container.sh (minutes and
several GB, so not part of this suite).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pathspec
import pytest
import yaml

from clip_service import create_app
from clip_service.config import Settings, documented_settings

ROOT = Path(__file__).resolve().parent.parent
IGNORE_FILES = (".dockerignore", ".gcloudignore")

# Paths (files; a path under a folder stands for the folder) that must never go
# into the image or the upload: virtualenvs, caches, tests and their fixtures,
# benchmarks and their results, version control, secrets, dev scripts.
EXCLUDED = [
    ".venv/bin/python",
    "venv/lib/python3.11/site-packages/torch/__init__.py",
    ".git",  # a worktree's .git is a file
    ".git/HEAD",
    ".env",
    "__pycache__/wsgi.cpython-311.pyc",
    "clip_service/__pycache__/app.cpython-311.pyc",
    "clip_service/model/__pycache__/embedder.cpython-311.pyc",
    "clip_service/stray.pyc",
    ".pytest_cache/v/cache/nodeids",
    ".hypothesis/examples/0a1b/2c3d",
    "tests/conftest.py",
    "tests/fixtures/chelsea_0.jpg",
    "bench/results/latency.json",
    "bench/.cache/weights.pt",
    "bench/memory.py",
    ".ci/run",
    "scripts/check-container.sh",
]
# What the image needs (and gcloud needs the Dockerfile and .dockerignore to build it).
INCLUDED = [
    "clip_service/__init__.py",
    "clip_service/app.py",
    "clip_service/model/embedder.py",
    "clip_service/web/health.py",
    "wsgi.py",
    "gunicorn.conf.py",
    "requirements.txt",
    "Dockerfile",
    ".dockerignore",
    "weights/README.md",
    "weights/vit-b-32.pt",
]


def ignore_spec(name: str) -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines((ROOT / name).read_text().splitlines())


def patterns(name: str) -> list[str]:
    lines = (line.strip() for line in (ROOT / name).read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


@pytest.mark.parametrize("name", IGNORE_FILES)
@pytest.mark.parametrize("path", EXCLUDED)
def test_ignore_file_excludes(name, path):
    assert ignore_spec(name).match_file(path), f"{name} lets {path} through"


@pytest.mark.parametrize("name", IGNORE_FILES)
@pytest.mark.parametrize("path", INCLUDED)
def test_ignore_file_keeps(name, path):
    assert not ignore_spec(name).match_file(path), f"{name} drops {path}"


def test_dockerignore_and_gcloudignore_agree():
    assert patterns(".dockerignore") == patterns(".gcloudignore")
    docker, gcloud = ignore_spec(".dockerignore"), ignore_spec(".gcloudignore")
    paths = set(EXCLUDED + INCLUDED)
    for folder, dirs, files in os.walk(ROOT):
        rel = Path(folder).relative_to(ROOT)
        # A folder both exclude is left whole (a CI clone has a full .venv here).
        dirs[:] = [d for d in dirs if not (docker.match_file(f"{rel / d}/") and gcloud.match_file(f"{rel / d}/"))]
        paths.update(str(rel / f) for f in files)
    differ = sorted(p for p in paths if docker.match_file(p) != gcloud.match_file(p))
    assert not differ


@pytest.mark.parametrize("name", IGNORE_FILES)
def test_ignore_patterns_read_alike_by_docker_and_gitignore(name):
    # To Docker "x" means the top level only; to gitignore (and gcloud) any depth.
    # With a slash before its end ("/x", "**/x", "a/b") a pattern means one thing.
    # A trailing slash (directories only, to gitignore) is dropped by Docker.
    for pattern in patterns(name):
        body = pattern.removeprefix("!")
        assert "/" in body and not body.endswith("/"), f"{name}: {pattern!r} reads differently to Docker"


def dockerfile() -> list[str]:
    return (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()


def test_everything_the_dockerfile_copies_is_in_the_context():
    sources = [src for line in dockerfile() if line.startswith("COPY ") and "--from=" not in line  # stages
               for src in line.split()[1:-1] if not src.startswith("--")]
    assert sources
    for name in IGNORE_FILES:
        spec = ignore_spec(name)
        for src in sources:
            files = [src] if (ROOT / src).is_file() else [
                str(p.relative_to(ROOT)) for p in (ROOT / src).rglob("*") if p.is_file()
                and "__pycache__" not in p.parts]
            assert files, f"COPY {src}: nothing there"
            assert not [f for f in files if spec.match_file(f)], f"{name} drops part of COPY {src}"


def test_dockerfile_defaults_are_the_services():
    args = dict(re.findall(r"^ARG (\w+)=(\S*)$", "\n".join(dockerfile()), flags=re.M))
    defaults = Settings()
    # A plain `docker build .` downloads the service's default model through its loader...
    assert (args["CLIP_MODEL"], args["CLIP_PRETRAINED"]) == (defaults.model.name, defaults.model.pretrained)
    # ...and installs torch's CPU build.
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    text = "\n".join(dockerfile())
    assert re.search(rf"^EXPOSE {defaults.server.port}$", text, flags=re.M)
    assert re.search(rf"\bPORT={defaults.server.port}\b", text)
    user = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert user and user[-1].isdigit() and int(user[-1]) != 0, "run as a fixed non-root uid"
    assert re.findall(r"^CMD (.*)$", text, flags=re.M)[-1].startswith("exec gunicorn "), "Gunicorn must be PID 1"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "service.yaml").read_text())


@pytest.fixture(scope="module")
def container(manifest) -> dict:
    (only,) = manifest["spec"]["template"]["spec"]["containers"]
    return only


def manifest_settings(container) -> Settings:
    """The settings an instance gets: the defaults, then the manifest's plain env values."""
    env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    env.pop("CLIP_API_KEYS_FILE", None)  # the mounted secret exists only on Cloud Run: its file is unreadable here
    return Settings.from_env(env)


def test_manifest_is_a_knative_service(manifest):
    assert manifest["apiVersion"] == "serving.knative.dev/v1"
    assert manifest["kind"] == "Service"
    assert manifest["metadata"]["name"] == "clip-service"


def test_manifest_concurrency_is_workers_times_threads(manifest, container):
    settings = manifest_settings(container)
    assert manifest["spec"]["template"]["spec"]["containerConcurrency"] == settings.server.workers * settings.server.threads


def test_manifest_port_is_the_services(container):
    (port,) = container["ports"]
    assert port["containerPort"] == Settings().server.port
    # Cloud Run reserves PORT and sets it from containerPort itself.
    assert "PORT" not in {e["name"] for e in container.get("env", [])}


def test_manifest_resources_fit_the_defaults(container):
    limits = container["resources"]["limits"]
    # One vCPU per batch runner, as the README's sizing says.
    assert int(limits["cpu"]) == manifest_settings(container).batching.runners
    assert limits["memory"] == "2Gi"


def test_manifest_cpu_always_allocated_with_startup_boost(manifest):
    annotations = manifest["spec"]["template"]["metadata"]["annotations"]
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"
    assert annotations["run.googleapis.com/startup-cpu-boost"] == "true"


def test_manifest_request_timeout_fits_the_service(manifest, container):
    timeout = manifest["spec"]["template"]["spec"]["timeoutSeconds"]
    settings = manifest_settings(container)
    # Room for a request whose images use their whole fetch budget, and no more
    # than Gunicorn allows a silent worker (it would be killed first).
    assert settings.fetch.request_timeout < timeout <= settings.server.timeout


@pytest.mark.parametrize("probe, path", [("startupProbe", "/health/ready"), ("livenessProbe", "/health/live")])
def test_manifest_probes_hit_the_apps_routes(container, tiny_embedder, probe, path):
    spec = container[probe]
    assert spec["httpGet"]["path"] == path
    # Cloud Run's rules: a probe's timeout within its period; a startup budget of at most 240 s.
    assert spec["timeoutSeconds"] <= spec["periodSeconds"]
    assert spec["periodSeconds"] * spec["failureThreshold"] <= 240
    app = create_app({"TESTING": True}, embedder=tiny_embedder)
    assert path in {rule.rule for rule in app.url_map.iter_rules()}
    # Cloud Run's probes send no credentials.
    assert app.test_client().get(path).status_code == 200


def test_manifest_reads_api_keys_from_a_secret(manifest, container):
    env = {e["name"]: e for e in container["env"]}
    keys_file = Path(env["CLIP_API_KEYS_FILE"]["value"])
    (mount,) = [m for m in container["volumeMounts"] if keys_file.parent == Path(m["mountPath"])]
    volumes = {v["name"]: v for v in manifest["spec"]["template"]["spec"]["volumes"]}
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"]
    assert [item["path"] for item in secret["items"]] == [keys_file.name]


def test_manifest_env_names_are_settings(container):
    known = {name for name, _, _ in documented_settings()}
    assert {e["name"] for e in container.get("env", [])} <= known
