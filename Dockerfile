# The challenge container: `docker run --gpus all -v ./inputs:/workspace/inputs
# -v ./outputs:/workspace/outputs team:latest /bin/bash -c "sh predict.sh"`.
# The PyTorch runtime image brings torch, torchvision, CUDA 12.4 and cuDNN 9 without
# compilers; onnxruntime-gpu 1.22 is built for the same CUDA 12 / cuDNN 9.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /workspace

# Runtime dependencies only; torch comes from the base image, never from PyPI here.
RUN pip install --no-cache-dir \
        "numpy>=1.24,<3" \
        "SimpleITK==2.5.*" \
        "connected-components-3d==4.*" \
        "tqdm==4.*" \
        "isal==1.*" \
        "segment-anything==1.0" \
        "onnxruntime-gpu==1.22.0"

COPY pyproject.toml README.md predict.sh ./
COPY inference ./inference
COPY weights ./weights

# Any user the harness picks can read the code and weights and write the outputs.
RUN chmod -R a+rX /workspace \
    && mkdir -p /workspace/inputs /workspace/outputs \
    && chmod 777 /workspace/outputs \
    && useradd --create-home --uid 1000 predictor

USER 1000
CMD ["sh", "predict.sh"]
