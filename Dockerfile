# artclf image: the PyTorch the tests ran (constraints.txt), a C compiler for torch.compile, artclf,
# non-root. Build and push:
#   docker build -t registry.example.com/artclf:0.1.0 . && docker push registry.example.com/artclf:0.1.0
# torch's PyPI wheel brings its CUDA libraries as pip packages (nvidia-*, pinned in constraints.txt:
# nvidia-cuda-runtime 13.0, i.e. CUDA 13); the GPU driver comes from the host (NVIDIA container
# toolkit / device plugin) and must be R580 or newer: CUDA 13.x needs driver >= 580 on Linux
# (NVIDIA's CUDA Compatibility guide, "Minor Version Compatibility", table 1).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch.compile (inductor) builds Triton's kernel launchers and its CPU kernels with the system C
# compiler at run time; the python image already carries Python.h.
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/artclf
COPY constraints.txt pyproject.toml README.md ./
COPY artclf ./artclf
# [serve]: the same image answers `artclf serve --host 0.0.0.0 --model …` (port 8000);
# [export]: and runs `artclf export --format onnx` (onnx; onnxruntime checks the parity).
# -c constraints.txt: every version as in the virtualenv the tests ran in (`make constraints`).
RUN pip install -c constraints.txt '.[serve,export]' && rm -rf build artclf.egg-info

# The launchers: accelerate configs and the Kubernetes entry, /opt/artclf/k8s/entrypoint.sh, the
# training pods' command (`launch/...` is relative to WORKDIR).
COPY launch ./launch
COPY k8s/entrypoint.sh ./k8s/entrypoint.sh

# uid/gid 1000 match runAsUser/runAsGroup in k8s/; HOME is an emptyDir there (read-only root fs),
# and so is /tmp, where torch.compile keeps its cache (TORCHINDUCTOR_CACHE_DIR).
RUN groupadd --gid 1000 artclf && useradd --uid 1000 --gid 1000 --create-home artclf
USER 1000:1000
ENV HOME=/home/artclf

EXPOSE 8000
ENTRYPOINT ["artclf"]
CMD ["--help"]
