# mvic-server: the fusion server (receive -> group -> joint decode on the GPU -> sinks, live page, metrics).
#   docker build -f deploy/server.Dockerfile -t mvic-server .    (context: the repository root)
#   docker run --gpus all -p 50051:50051 -p 8080:8080 -v mvic-out:/var/lib/mvic \
#       mvic-server --gpu 0 --http 0.0.0.0:8080 --metrics-port 9101          (the installed weights of ldmic-fast-lite)
#   Own weights (the nodes must load the same file): -v $PWD/weights:/weights:ro ... --weights /weights/W.safetensors
#
# Base: python:3.11-slim plus PyTorch's CUDA wheels, not nvidia/cuda:*-runtime. The torch wheel brings its own CUDA
# runtime, cuBLAS and cuDNN (the nvidia-* pip packages), so a CUDA base image would ship a second copy of the same
# libraries (about 3 GB more) and still need a Python 3.11 installed by hand. Only the host's NVIDIA driver is
# needed, and the NVIDIA Container Toolkit maps it in (docker run --gpus / compose device reservations).
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# Same pins as scripts/setup.sh (tests/deploy checks they agree): compressai 1.2.8 imports torchvision at import
# time and torchvision must match torch exactly, so the pair goes in first, as a pair.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# PyPI's Linux x86-64 torch is a CUDA build. For another CUDA release use PyTorch's index for it, e.g.
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (the driver must support that release).
ARG TORCH_INDEX_URL=https://pypi.org/simple
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/mvic
ENV PATH=/opt/mvic/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
# All of shared/, so shared/codec/weights/*.safetensors (the shipped weights, package data in pyproject.toml) are
# installed with the package: without --weights the program loads the installed weights of --model, and node and
# server images built from one tree carry the same files. The last check fails the build if one is missing.
COPY shared shared
COPY node node
COPY fusion_server fusion_server
RUN pip install . "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && python -c "import compressai, mvic.fusion_server.cli" \
    && python -c "from mvic.shared.codec.registry import registered_weights, sha256_of; \
bad = [w.file for w in registered_weights().values() if not w.path.is_file() or sha256_of(w.path) != w.sha256]; \
assert not bad, f'weights listed in records.json but missing or different in the image: {bad}'"
COPY deploy/grpc_health_probe.py /opt/mvic/bin/mvic-grpc-health
RUN chmod 0755 /opt/mvic/bin/mvic-grpc-health

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/mvic /opt/mvic
ENV PATH=/opt/mvic/bin:$PATH PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN useradd --system --uid 10001 --home-dir /var/lib/mvic --create-home mvic
USER mvic
# Reconstructions (PNGs, videos) and the ack journal must outlive the container: mount a volume here and pass
# --out /var/lib/mvic/out (the default, mvic-out relative to this folder, is inside the volume too).
WORKDIR /var/lib/mvic
VOLUME ["/var/lib/mvic"]
# gRPC (nodes), live page (--http), Prometheus /metrics (--metrics-port).
EXPOSE 50051 8080 9101
# Standard gRPC health (grpc.health.v1) of the Fusion service: NOT_SERVING until the model is loaded, so the
# start period covers loading the weights onto the GPU.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["mvic-grpc-health", "localhost:50051"]
ENTRYPOINT ["mvic-server"]
CMD ["--gpu", "0", "--listen", "0.0.0.0:50051", "--http", "0.0.0.0:8080", "--metrics-port", "9101"]
