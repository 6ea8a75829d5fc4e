# syntax=docker/dockerfile:1
# One image for every tensor.ai vGPU program: tensorai-device-plugin, tensorai-extender,
# tensorai-webhook, tensorai-worker, tensorai-sim, tensorai-demo. The manifests pick the program with
# `command:`.
#
#   docker build -t ghcr.io/tensorai/vgpu:0.1.0 .
#   docker build --build-arg CUDA_EXTRA= -t ghcr.io/tensorai/vgpu:0.1.0-nocuda .   # no CUDA toolkit wheels
#
# The final stage runs as uid 65532 (non-root). The device plugin's DaemonSet overrides that with
# runAsUser: 0 because kubelet's device-plugin and pod-resources sockets are root-owned (see
# manifests/base/device-plugin/daemonset.yaml); every other program runs as 65532.

# Pinned base: a patch release of CPython on Debian bookworm, the same in both stages so the virtual
# environment copied across finds its interpreter at the same path.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# cu12: the CUDA 12 toolkit wheels (NVVM, libdevice, cudart, nvrtc, nvJitLink) that Numba needs to
# compile the worker's kernels; the driver itself comes from the node through the NVIDIA runtime.
ARG CUDA_EXTRA=cu12
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/tensorai \
    && /opt/tensorai/bin/pip install --no-cache-dir "pip==25.3" "setuptools==80.9.0" "wheel==0.45.1"
# Runtime dependencies pinned to the versions the test suite ran with (pyproject.toml gives the
# minimums). Installed before the source is copied so that a code change reuses this layer.
RUN /opt/tensorai/bin/pip install --no-cache-dir \
        "grpcio==1.85.1" \
        "grpcio-health-checking==1.85.1" \
        "protobuf==7.36.2" \
        "nvidia-ml-py==13.615.71" \
        "numpy==2.4.6" \
        "prometheus-client==0.26.0" \
        "kubernetes==37.0.2" \
        "PyYAML==6.0.3" \
        "cryptography==50.0.2" \
        "numba==0.68.1" \
        "llvmlite==0.50.0" \
        "numba-cuda${CUDA_EXTRA:+[${CUDA_EXTRA}]}==0.30.4" \
        "matplotlib==3.11.2" \
        "rich==15.0.0"
COPY pyproject.toml README.md ./
COPY proto/ proto/
COPY deviceplugin/ deviceplugin/
COPY scheduler/ scheduler/
COPY kernels/ kernels/
COPY demo/ demo/
# --no-deps: everything it needs is pinned above; a missing pin fails `pip check` below.
# --no-build-isolation: build with the pinned setuptools/wheel above, not whatever is newest.
RUN /opt/tensorai/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
    && /opt/tensorai/bin/pip check \
    && /opt/tensorai/bin/python -m compileall -q /opt/tensorai/lib \
    && /opt/tensorai/bin/pip uninstall --yes pip setuptools wheel

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="tensor.ai vGPU" \
      org.opencontainers.image.description="Fractional NVIDIA GPU sharing for Kubernetes: device plugin, scheduler extender, admission webhook, tensor worker" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/tensorai/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    MPLCONFIGDIR=/tmp/matplotlib
RUN groupadd --system --gid 65532 tensorai \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin tensorai
COPY --from=build /opt/tensorai /opt/tensorai
USER 65532:65532
WORKDIR /tmp
# No HEALTHCHECK: each program has its own health endpoint, probed by Kubernetes (see the manifests).
ENTRYPOINT []
CMD ["tensorai-extender", "--help"]
