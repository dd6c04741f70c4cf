# DeepLabv3 training image: an official PyTorch CUDA runtime image (torch and torchvision included), the project
# installed on top without touching them. Another image whose torch lies in the supported range (README, "Supported
# versions") works the same: docker build --build-arg BASE=pytorch/pytorch:<tag> -t seg .
# opencv-python-headless needs no system GL libraries.
ARG BASE=pytorch/pytorch:2.14.1-cuda13.2-cudnn9-runtime
FROM ${BASE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TORCH_HOME=/cache/torch

WORKDIR /workspace/seg
COPY pyproject.toml README.md ./
COPY seg ./seg
# The image's torch and torchvision (CUDA builds matched to its libraries) become pip constraints: pip installs the
# rest around them and fails, rather than replacing them, if anything asked for another version.
RUN python -c "from importlib.metadata import version as v; print(f'torch=={v(\"torch\")}\ntorchvision=={v(\"torchvision\")}')" \
        > /tmp/image-torch.txt \
    && pip install --no-cache-dir -c /tmp/image-torch.txt -e . \
    && rm /tmp/image-torch.txt
COPY configs ./configs
COPY scripts ./scripts

# Mount datasets at /data, outputs at /workspace/seg/outputs and the weight cache at /cache.
CMD ["python", "scripts/train.py", "backbone=resnet50", "os=16"]
