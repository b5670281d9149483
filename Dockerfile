# Two images from one file:
#   docker build -t step-audio-gateway .                        the embedded CPU engines (target cpu)
#   docker build --target gpu -t step-audio-gateway:gpu .       + Step-Audio tokenizer and TTS-3B on CUDA
# docker-compose.yml builds both (profiles cpu and gpu).
FROM python:3.11-slim AS base
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake ninja-build \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
ENV GATEWAY__SERVER__HOST=0.0.0.0 GATEWAY__SERVER__LOG_FORMAT=json HF_HUB_OFFLINE=1
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s CMD python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready').status != 200)"
CMD [".venv/bin/step-audio-gateway", "serve"]

# The GPU image: the gateway's extras with CUDA torch, onnxruntime-gpu and transformers 4.48
# (requirements/gpu.txt) resolved in one pip run. dev.py's install is not used: it pins the
# CPU image's versions (requirements/constraints.txt), which transformers 4.48 cannot use.
FROM base AS gpu
ARG GATEWAY_EXTRAS=embedded,embedded-gpl,chat,webrtc,step-audio
ENV GATEWAY_EXTRAS=${GATEWAY_EXTRAS}
RUN python3 -m venv .venv \
    && .venv/bin/pip install --no-cache-dir --upgrade "pip>=24" \
    # llama.cpp built for dev.py's fixed CPU baseline, not for the build machine's CPU.
    && CMAKE_ARGS="$(python3 -c 'import dev; print(dev.LLAMA_CPP_CMAKE_ARGS)')" FORCE_CMAKE=1 \
       .venv/bin/pip install --no-cache-dir -e ".[${GATEWAY_EXTRAS}]" -r requirements/gpu.txt \
    && .venv/bin/pip install --no-cache-dir --no-deps -r requirements/no-deps.txt \
       -r requirements/step-audio-tokenizer-no-deps.txt -r requirements/step-audio-tts-no-deps.txt \
    # faster-whisper and piper pulled the CPU onnxruntime into the same module folder.
    && .venv/bin/pip uninstall -y onnxruntime \
    && .venv/bin/pip install --no-cache-dir --no-deps --force-reinstall \
       "$(grep -o '^onnxruntime-gpu==[^ ]*' requirements/gpu.txt)" \
    && .venv/bin/python -c "import onnxruntime as o, sys; p = o.get_available_providers(); print(p); sys.exit('CUDAExecutionProvider' not in p)" \
    && .venv/bin/python -c "import transformers, sentencepiece, torch; print(transformers.__version__, torch.__version__, torch.version.cuda)" \
    # scripts/gpu_check runs the replica tests on the GPUs from this image.
    && .venv/bin/pip install --no-cache-dir -r requirements/gpu-check.txt

# The default image: the embedded CPU engines (dev.py install).
FROM base AS cpu
ARG GATEWAY_EXTRAS=embedded,embedded-gpl,chat,webrtc
ENV GATEWAY_EXTRAS=${GATEWAY_EXTRAS}
# Creates .venv with the engines (and builds llama-cpp-python once).
RUN python3 dev.py install
