# mvic-node: one camera's encoder (capture -> encode -> spool -> send). CPU only, no CUDA libraries.
#   docker build -f deploy/node.Dockerfile -t mvic-node .        (context: the repository root)
#   docker run --rm -v spool-c1:/var/lib/mvic mvic-node --camera C1 --server fusion:50051
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
# Same pins as scripts/setup.sh (tests/deploy checks they agree). compressai 1.2.8 imports torchvision at import time
# and torchvision must match torch exactly, so the pair goes in first, as a pair.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# PyPI's Linux torch wheel is the CUDA build (several GB of nvidia-* libraries a camera node never uses); PyTorch's
# CPU index serves the same versions (tagged +cpu) without them. It is used for torch/torchvision only; everything
# else comes from PyPI. A compiler is here in case compressai has no wheel for this Python; it stays in this stage.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
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
# The pins again: pip keeps the +cpu builds (they satisfy them) instead of pulling PyPI's CUDA torch.
RUN pip install . "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && python -c "import compressai, mvic.node.cli" \
    && python -c "from mvic.shared.codec.registry import registered_weights, sha256_of; \
bad = [w.file for w in registered_weights().values() if not w.path.is_file() or sha256_of(w.path) != w.sha256]; \
assert not bad, f'weights listed in records.json but missing or different in the image: {bad}'"

FROM ${PYTHON_IMAGE}
COPY --from=build /opt/mvic /opt/mvic
ENV PATH=/opt/mvic/bin:$PATH PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --home-dir /var/lib/mvic --create-home mvic
USER mvic
# The spool (packets kept until the server acks them) must outlive the container: mount a volume here and pass
# --spool /var/lib/mvic/spool (the default, mvic-spool relative to this folder, is inside the volume too).
WORKDIR /var/lib/mvic
VOLUME ["/var/lib/mvic"]
# No HEALTHCHECK: the metrics endpoint (the only thing to probe) is off unless --metrics-port is given, and a hung
# source is already caught by the capture watchdog and reopened. docker-compose.yml probes /metrics where it is on.
ENTRYPOINT ["mvic-node"]
CMD ["--help"]
