"""docker-compose.yml is a valid Compose file with the services the README describes.

Uses ``docker compose config`` (Compose v2) when the Docker CLI has the plugin, else the
``docker-compose`` v1 command that .ci/run installs from Debian (the package registries here
carry no Compose v2); both parse and validate the file against the Compose schema.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import yaml

from tests.conftest import ROOT


def _compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    assert legacy, "neither `docker compose` nor `docker-compose` is installed (.ci/run installs it)"
    return [legacy]


def _config(*profiles: str) -> dict:
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = subprocess.run(
        [*_compose_command(), "-f", str(ROOT / "docker-compose.yml"), *args, "config"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
        env={**os.environ, "STEP_AUDIO_MODELS": "/srv/models"},
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_accepts_the_file_and_defines_both_deployments():
    config = _config("gpu")
    services = config["services"]
    assert {"gateway", "vllm", "gateway-gpu"} <= set(services)
    vllm = services["vllm"]
    assert "--served-model-name=step-audio-chat" in vllm["command"]
    assert vllm["environment"]["OPTIMUS_LIB_PATH"] == "/models/Step-Audio-Chat/lib"
    assert vllm["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    gpu_gateway = services["gateway-gpu"]
    assert gpu_gateway["environment"]["GATEWAY_CONFIG"] == "config/step-audio.toml"
    assert gpu_gateway["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert any("/srv/models" in str(volume) for volume in gpu_gateway["volumes"])
    for service in services.values():
        assert service["healthcheck"]["test"]
