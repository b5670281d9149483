"""scripts/gpu_check fails loudly where there is no GPU.

It cannot pass here (no GPU is lent to this machine); what can be checked is that it never
passes, or skips its way to a green status, without one: exit status 2 and a line saying
why, whether nvidia-smi is missing or lists a GPU that torch cannot use.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check"


def run(tmp_path, *args, path: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_without_nvidia_smi_it_fails_with_no_gpu(tmp_path):
    result = run(tmp_path, path=str(tmp_path))  # nothing on PATH
    assert result.returncode == 2
    assert "FAIL: no GPU: nvidia-smi is not installed" in result.stderr


def test_a_gpu_torch_cannot_use_fails_too(tmp_path):
    """nvidia-smi lists a GPU, but the interpreter's torch has no CUDA (or no torch)."""
    fake = tmp_path / "nvidia-smi"
    fake.write_text('#!/bin/sh\necho "GPU 0: NVIDIA H200 (UUID: GPU-0)"\n')
    fake.chmod(0o755)
    result = run(
        tmp_path, "--python", sys.executable, path=f"{tmp_path}{os.pathsep}{os.environ['PATH']}"
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "FAIL: no GPU" in result.stderr or "cannot import torch" in result.stderr
    assert "PASS" not in result.stdout
