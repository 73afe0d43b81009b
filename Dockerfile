# CPU image: stain whole slides with a trained generator (PyTorch or onnxruntime). See docs/DEPLOY.md.
#   docker build -t virtual-ihc:cpu .
#   docker run --rm -v "$PWD/checkpoints:/ckpt:ro" -v /data/slides:/in:ro -v /data/stained:/out virtual-ihc:cpu \
#       --name bci_pyramid --checkpoints_dir /ckpt --input /in --output /out
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# TCMalloc: entry points restart themselves with it preloaded (util/allocator.py: lower peak memory)
RUN apt-get update && apt-get install -y --no-install-recommends libtcmalloc-minimal4 && rm -rf /var/lib/apt/lists/*
COPY requirements.txt .
# the CPU build of the pinned PyTorch first (the default Linux wheel carries CUDA libraries), then the rest
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "$(grep '^torch==' requirements.txt)" "$(grep '^torchvision==' requirements.txt)" \
    && pip install -r requirements.txt

COPY . .
RUN useradd --create-home --uid 1000 stain && chown -R stain /app
USER stain

ENTRYPOINT ["python", "/app/stain_slide.py"]
CMD ["--help"]
