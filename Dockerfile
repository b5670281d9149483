# The gateway on its embedded CPU engines. Build: docker build -t step-audio-gateway .
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake ninja-build \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
# Which extras go into .venv: the GPU image adds "step-audio" (torch, onnxruntime, vllm).
ARG GATEWAY_EXTRAS=embedded,embedded-gpl,chat
ENV GATEWAY_EXTRAS=${GATEWAY_EXTRAS}
# Creates .venv with the engines (and builds llama-cpp-python once).
RUN python3 dev.py install
ENV GATEWAY__SERVER__HOST=0.0.0.0 GATEWAY__SERVER__LOG_FORMAT=json HF_HUB_OFFLINE=1
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s CMD python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/ready').status != 200)"
CMD [".venv/bin/step-audio-gateway", "serve"]
