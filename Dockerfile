# syntax=docker/dockerfile:1
# One image, both entry points: `pseudoserve serve` (default command) and `pseudoserve trainer`.
#
#   CPU image:  docker build -t pseudoserve:0.1.0 .
#   GPU image:  docker build --target runtime-gpu -t pseudoserve:0.1.0-gpu .
#               (CUDA runtime + cuDNN base, onnxruntime-gpu instead of onnxruntime; run with --gpus all)
#
#   docker run -p 8001:8001 -p 8002:8002 -v "$PWD/models:/models" pseudoserve:0.1.0
#   docker run pseudoserve:0.1.0 trainer --help
#
# The builder stage turns the project and every dependency into wheels; the runtime stages install
# those wheels without a compiler, pip cache or source tree. torch comes from PyTorch's CPU index
# (the PyPI torch wheel for Linux pulls several GB of CUDA libraries the trainer does not need).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04

# --------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pseudoserve ./pseudoserve
COPY service ./service
COPY trainer ./trainer
COPY protos ./protos
# Two wheel sets: /wheels/cpu (onnxruntime) and /wheels/gpu (onnxruntime-gpu). torch is fetched
# first from the CPU index so that resolving the project picks that wheel up from --find-links.
RUN pip wheel --wheel-dir /wheels/torch --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
 && pip wheel --wheel-dir /wheels/cpu --find-links /wheels/torch . \
 && pip wheel --wheel-dir /wheels/gpu --find-links /wheels/torch ".[gpu]" \
 && cp /wheels/torch/*.whl /wheels/cpu/ \
 && cp /wheels/torch/*.whl /wheels/gpu/

# --------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS runtime-gpu
ARG PSEUDOSERVE_VERSION=0.1.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    VIRTUAL_ENV=/opt/pseudoserve \
    PATH=/opt/pseudoserve/bin:$PATH \
    PSEUDOSERVE_HOST=0.0.0.0 \
    PSEUDOSERVE_MODEL_REPOSITORY=/models \
    PSEUDOSERVE_TRAINER_HOST=0.0.0.0 \
    PSEUDOSERVE_TRAINER_MODEL_REPOSITORY=/models \
    PSEUDOSERVE_TRAINER_STORE=/data/store.sqlite \
    PSEUDOSERVE_TRAINER_REPORTS_DIR=/data/reports
# Ubuntu 22.04 ships Python 3.11 as python3.11; the package versions follow the CUDA base image's
# Ubuntu release, so they are not pinned here (pinning them would break on every base refresh).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv "${VIRTUAL_ENV}"
# pip installs the base requirement `onnxruntime` as well (its `extra != 'gpu'` marker is evaluated
# for the project without extras too); both wheels own the `onnxruntime` package folder, so drop
# the CPU one and reinstall the GPU one over it.
RUN --mount=type=bind,from=builder,source=/wheels/gpu,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels "pseudoserve[gpu]==${PSEUDOSERVE_VERSION}" \
 && pip uninstall -y onnxruntime \
 && pip install --no-cache-dir --no-index --force-reinstall --no-deps /wheels/onnxruntime_gpu-*.whl \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin pseudoserve \
 && mkdir -p /models /data \
 && chown 10001:10001 /models /data
WORKDIR /data
USER 10001:10001
EXPOSE 8001 8002 8003 8004
STOPSIGNAL SIGTERM
ENTRYPOINT ["pseudoserve"]
CMD ["serve"]

# --------------------------------------------------------------------------------------------
# The last stage is what a plain `docker build .` produces: the CPU image.
FROM ${PYTHON_IMAGE} AS runtime-cpu
ARG PSEUDOSERVE_VERSION=0.1.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    PSEUDOSERVE_HOST=0.0.0.0 \
    PSEUDOSERVE_MODEL_REPOSITORY=/models \
    PSEUDOSERVE_TRAINER_HOST=0.0.0.0 \
    PSEUDOSERVE_TRAINER_MODEL_REPOSITORY=/models \
    PSEUDOSERVE_TRAINER_STORE=/data/store.sqlite \
    PSEUDOSERVE_TRAINER_REPORTS_DIR=/data/reports
RUN --mount=type=bind,from=builder,source=/wheels/cpu,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels "pseudoserve==${PSEUDOSERVE_VERSION}" \
 && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin pseudoserve \
 && mkdir -p /models /data \
 && chown 10001:10001 /models /data
WORKDIR /data
USER 10001:10001
# 8001 gRPC (Open Inference Protocol), 8002 service metrics; trainer: 8004 gRPC, 8003 metrics + reports.
EXPOSE 8001 8002 8003 8004
# The service and the trainer drain on SIGTERM (see shutdown_grace_seconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["pseudoserve"]
CMD ["serve"]
