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


def _fake_gpu_machine(tmp_path, devices: int, tests_pass: bool):
    """nvidia-smi and an interpreter that report GPUs (FAKE: no GPU is lent here). The
    interpreter records how the replica tests were started and passes or fails them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    listing = "\n".join(f'echo "GPU {i}: NVIDIA H200 (UUID: GPU-{i})"' for i in range(devices))
    smi.write_text(f"#!/bin/sh\n{listing}\n")
    info = {
        "torch": "2.7.1+cu126", "cuda": "12.6", "cuda_available": True, "devices": devices,
        "bf16": True, "transformers": "4.48.3", "onnxruntime": "1.22.0",
        "providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "vllm": None,
    }
    import json

    python = bin_dir / "python"
    python.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-c" ]; then echo \'{json.dumps(info)}\'; exit 0; fi\n'
        f'echo "$GATEWAY_TEST_DEVICE $GATEWAY_TEST_TIER $*" >> {tmp_path / "ran"}\n'
        f"exit {0 if tests_pass else 1}\n"
    )
    for path in (smi, python):
        path.chmod(0o755)
    return bin_dir, python


def test_on_a_gpu_it_runs_the_replica_tests_on_cuda_and_passes_only_if_they_pass(tmp_path):
    bin_dir, python = _fake_gpu_machine(tmp_path, devices=1, tests_pass=True)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    result = run(tmp_path, "--python", str(python), path=path)
    assert result.returncode == 0, result.stdout + result.stderr
    ran = (tmp_path / "ran").read_text()
    assert ran.startswith("cuda step-audio -m pytest tests/engines/test_step_audio_tts.py")
    assert "tests/engines/test_step_audio_tokenizer.py" in ran
    assert "NOT RUN: vLLM tensor-parallel over 2 GPUs" in result.stdout
    assert "PASS: 1/1 step(s) passed" in result.stdout

    (tmp_path / "ran").unlink()
    failing = tmp_path / "failing"
    failing.mkdir()
    bin_dir, python = _fake_gpu_machine(failing, devices=2, tests_pass=False)
    result = run(failing, "--python", str(python), path=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    assert result.returncode == 1
    assert "FAIL: replica tests on CUDA" in result.stdout
    assert "vllm is not installed" in result.stdout
