# DeepLabv3 training image: the official PyTorch CUDA runtime image (torch and torchvision included, so pip keeps
# them), the project installed on top. opencv-python-headless needs no system GL libraries.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TORCH_HOME=/cache/torch

WORKDIR /workspace/seg
COPY pyproject.toml README.md ./
COPY seg ./seg
RUN pip install --no-cache-dir -e .
COPY configs ./configs
COPY scripts ./scripts

# Mount datasets at /data, outputs at /workspace/seg/outputs and the weight cache at /cache.
CMD ["python", "scripts/train.py", "backbone=resnet50", "os=16"]
