# DeepLabv3 training image: CUDA runtime PyTorch base, project installed on top.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TORCH_HOME=/cache/torch
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/seg
COPY pyproject.toml README.md ./
COPY seg ./seg
RUN pip install --no-cache-dir -e .
COPY configs ./configs
COPY scripts ./scripts

# Mount datasets at /data, outputs at /workspace/seg/outputs and the weight cache at /cache.
CMD ["python", "scripts/train.py", "backbone=resnet50", "os=16"]
