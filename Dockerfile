# The challenge container. Build it with `sh container/build.sh [--local-base] [TAG]`, which
# fills container/wheelhouse/ for the base image's Python first; the organisers run
# `docker container run ... -v $PWD/inputs/:/workspace/inputs/ -v $PWD/outputs/:/workspace/outputs/
# team:latest /bin/bash -c "sh predict.sh"` (README, "The container").
#
# BASE_IMAGE brings Python (and, for the GPU path, torch with CUDA). The default is the
# official PyTorch runtime image of the torch release the tests run on, built for CUDA 12.6:
# any driver from 525 runs it (CUDA 12 minor-version compatibility), where a CUDA 13 build
# needs 580 or newer. On a base without torch the image runs onnxruntime on the CPU.
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda12.6-cudnn9-runtime

# Stage 1: the runtime packages, from the wheelhouse only (no index, no network), into
# their own folder so the final image holds neither the wheels nor pip's leftovers. pip
# itself runs from its wheel, so the base needs no pip.
FROM ${BASE_IMAGE} AS packages
LABEL org.opencontainers.image.title=flare-nnsam
COPY container/wheelhouse/ /wheelhouse/
RUN python3 "$(ls /wheelhouse/pip-*.whl)/pip" install --no-index --find-links /wheelhouse \
        --no-cache-dir --disable-pip-version-check --no-warn-script-location \
        --target /opt/flare-nnsam/site-packages -r /wheelhouse/requirements.txt \
    && python3 -m compileall -q -f -j 0 --invalidation-mode unchecked-hash \
        /opt/flare-nnsam/site-packages \
    && chmod -R a+rX /opt/flare-nnsam

# Stage 2: the image the organisers run.
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title=flare-nnsam
ENV PYTHONPATH=/opt/flare-nnsam/site-packages \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=packages /opt/flare-nnsam/site-packages /opt/flare-nnsam/site-packages
WORKDIR /workspace
COPY predict.sh ./
COPY inference ./inference
COPY weights ./weights
# Bytecode is compiled here, once: with PYTHONDONTWRITEBYTECODE (and a read-only or
# foreign-owned file system) every start would compile the sources again. The image stays
# root's, so the default user writes an output folder that a plain `mkdir` made; everything
# is readable by any --user the harness picks (only files that need it are changed: a chmod
# copies a file into a new layer, and the packages were made readable in stage 1).
RUN python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash inference \
    && mkdir -p /workspace/inputs /workspace/outputs \
    && find /workspace \( ! -perm -a+r -o -type d ! -perm -a+x \) -exec chmod a+rX {} +
CMD ["sh", "predict.sh"]
