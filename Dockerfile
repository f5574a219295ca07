# artclf image: CUDA PyTorch + artclf, non-root. Build and push:
#   docker build -t registry.example.com/artclf:0.1.0 . && docker push registry.example.com/artclf:0.1.0
# torch and torchvision come with the base image (inside pyproject's ranges), so pip keeps them.
FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/artclf
COPY pyproject.toml README.md ./
COPY artclf ./artclf
# [serve]: the same image answers `artclf serve --host 0.0.0.0 --model …` (port 8000)
RUN pip install '.[serve]' && rm -rf build artclf.egg-info

# The launchers: accelerate configs and the Kubernetes entry (`launch/...` is relative to WORKDIR).
COPY launch ./launch
COPY k8s/entrypoint.sh ./k8s/entrypoint.sh

# uid/gid 1000 match runAsUser/runAsGroup in k8s/; HOME is an emptyDir there (read-only root fs).
RUN groupadd --gid 1000 artclf && useradd --uid 1000 --gid 1000 --create-home artclf
USER 1000:1000
ENV HOME=/home/artclf

EXPOSE 8000
ENTRYPOINT ["artclf"]
CMD ["--help"]
