# clip-service: CPU image with the weights baked in.
#   docker build -t clip-service .
#   docker run --rm -p 8080:8080 clip-service
# scripts/check-container.sh builds and runs this file for real (with Podman) and
# checks the result; run it after every change here or to requirements.txt.
FROM python:3.11-slim AS base

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # BLAS/OpenMP pools start at one thread; each worker sets its own count
    # (CLIP_TORCH_THREADS) after the fork.
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    PORT=8080

WORKDIR /app

COPY requirements.txt .

# torch first, from its own index: PyPI's default wheel bundles CUDA and is
# several GB larger. `-c requirements.txt` takes the versions pinned there, so
# the two never drift apart. Point TORCH_INDEX_URL at a mirror where PyTorch's
# index is out of reach (scripts/check-container.sh uses this machine's index).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX_URL" -c requirements.txt torch torchvision

# Everything else from PyPI; torch and torchvision are already satisfied.
RUN pip install -r requirements.txt

COPY clip_service ./clip_service
COPY wsgi.py gunicorn.conf.py ./
# PYTHONDONTWRITEBYTECODE keeps the running service from writing .pyc files;
# compile ours once here so no start pays for it (site-packages are compiled by pip).
RUN python -m compileall -q clip_service

# --- the weights, in a stage of their own: only the converted file reaches the image ---
FROM base AS weights
# CLIP_PRETRAINED is either
#  - a pretrained tag (the default), downloaded here through open_clip; or
#  - the path of a checkpoint file under weights/ in the build context, e.g.
#    --build-arg CLIP_PRETRAINED=weights/vit-b-32.pt, for builds with no route
#    to the model hub (add CLIP_TAG=laion400m_e32 when it holds a tag's weights,
#    so the file keeps the tag's QuickGELU and preprocessing).
# weights/ holds only its README unless you put a checkpoint there.
# Any served family works (docs/model.md#families), e.g. --build-arg
# CLIP_MODEL=ViT-B-16-SigLIP2 --build-arg CLIP_PRETRAINED=webli. SigLIP's and
# SigLIP2's tokenizers live on the model hub too: they are written to
# /opt/models/tokenizer beside the weights (CLIP_TOKENIZER below); a build with
# no route to the hub names a folder of them in the context, e.g.
# --build-arg CLIP_TOKENIZER=weights/tokenizer.
ARG CLIP_MODEL=ViT-B-32
ARG CLIP_PRETRAINED=laion400m_e32
ARG CLIP_TAG=""
ARG CLIP_TOKENIZER=""
COPY weights ./weights
# Stored as the form the service loads fastest: safetensors, memory-mapped at
# start-up, with QuickGELU and the preprocessing in its header. The command
# checks the file gives open_clip's vectors bit for bit, or fails the build.
RUN python -m clip_service.model.convert --model "$CLIP_MODEL" ${CLIP_TAG:+--tag "$CLIP_TAG"} \
        ${CLIP_TOKENIZER:+--tokenizer "$CLIP_TOKENIZER"} --tokenizer-dir /opt/models/tokenizer \
        --cache-dir /tmp/clip-download "$CLIP_PRETRAINED" /opt/models/weights.safetensors

FROM base
ARG CLIP_MODEL=ViT-B-32
COPY --from=weights /opt/models /opt/models
# CLIP_TOKENIZER's folder exists only for a model with a Hugging Face tokenizer; others ignore it.
ENV CLIP_MODEL=${CLIP_MODEL} CLIP_PRETRAINED=/opt/models/weights.safetensors CLIP_TOKENIZER=/opt/models/tokenizer

# From here on nothing may reach a model hub: a missing file fails the start.
ENV HF_HUB_OFFLINE=1

# A fixed non-root uid (no home, no login shell): the files above stay owned
# by root and read-only to the service.
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin app
USER 10001

EXPOSE 8080
# exec: Gunicorn replaces the shell as PID 1, so it receives the SIGTERM of
# `docker stop` and Cloud Run. Its settings are in gunicorn.conf.py.
CMD exec gunicorn wsgi:app
