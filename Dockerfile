# Sluice server image. The steps are the README's: `make install`, pull the bundled model, serve.
#   CPU (default):  docker build -t sluice .
#   GPU hosts:      docker build -t sluice:cuda --build-arg BASE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04 \
#                     --build-arg EXTRAS=vllm,cuda .
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}
ARG EXTRAS=""

# Compilers: llama-cpp-python builds llama.cpp from source. python3-venv for CUDA (Ubuntu) bases.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake make curl python3 python3-venv python3-dev \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 sluice
USER sluice
WORKDIR /home/sluice/app

COPY --chown=sluice:sluice pyproject.toml Makefile README.md ./
COPY --chown=sluice:sluice serve serve
COPY --chown=sluice:sluice kernels kernels
COPY --chown=sluice:sluice benchmarks benchmarks

RUN make install \
 && if [ -n "$EXTRAS" ]; then .venv/bin/pip install -e ".[${EXTRAS}]"; fi \
 && .venv/bin/sluice models pull smollm2-135m-instruct

ENV HF_HUB_OFFLINE=1 PATH=/home/sluice/app/.venv/bin:$PATH
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8000/health || exit 1
CMD ["sluice", "serve", "--host", "0.0.0.0", "--port", "8000"]
