# clip-service: CPU image with the weights baked in.
#   docker build -t clip-service .
#   docker run --rm -p 8080:8080 clip-service
# scripts/check-container.sh builds and runs this file for real (with Podman) and
# checks the result; run it after every change here or to requirements.txt.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # BLAS/OpenMP pools start at one thread; each worker sets its own count
    # (CLIP_TORCH_THREADS) after the fork.
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    PORT=8080 \
    # Weights live inside the image, so every cold start reads them from disk.
    HF_HOME=/opt/models/hf \
    CLIP_CACHE_DIR=/opt/models

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

# The weights. CLIP_PRETRAINED is either
#  - a pretrained tag (the default): the RUN below downloads it through the
#    service's own loader, which applies the tag's QuickGELU setting, into
#    CLIP_CACHE_DIR, the path the service reads at run time; or
#  - the path of a checkpoint file under weights/ in the build context, e.g.
#    --build-arg CLIP_PRETRAINED=weights/vit-b-32.pt, for builds with no route
#    to the model hub. The folder is copied as is, so the same relative path
#    names the file under /app, the working directory at run time.
# weights/ holds only its README unless you put a checkpoint there.
ARG CLIP_MODEL=ViT-B-32
ARG CLIP_PRETRAINED=laion400m_e32
ENV CLIP_MODEL=${CLIP_MODEL} CLIP_PRETRAINED=${CLIP_PRETRAINED}
COPY weights ./weights
# One load through the loader the service uses: it downloads a tag's weights,
# and proves a baked checkpoint fits CLIP_MODEL, before the image exists.
# A step that converts the weights into a faster-loading form goes after it.
RUN python -c "import os; from clip_service.model.embedder import ClipEmbedder; \
ClipEmbedder.load(os.environ['CLIP_MODEL'], os.environ['CLIP_PRETRAINED'], 'cpu', cache_dir=os.environ['CLIP_CACHE_DIR'])"

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
