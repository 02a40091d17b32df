# clip-service: CPU image with the weights baked in.
#   docker build -t clip-service .
#   docker run --rm -p 8080:8080 clip-service
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

# CPU-only torch first: the default PyPI wheel bundles CUDA and is several GB.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY clip_service ./clip_service
COPY wsgi.py gunicorn.conf.py ./

# Download the weights at build time through the service's own loader (which
# applies the tag's QuickGELU setting), so the tag and the cache path match.
ARG CLIP_MODEL=ViT-B-32
ARG CLIP_PRETRAINED=laion400m_e32
ENV CLIP_MODEL=${CLIP_MODEL} CLIP_PRETRAINED=${CLIP_PRETRAINED}
RUN python -c "import os; from clip_service.model.embedder import ClipEmbedder; \
ClipEmbedder.load(os.environ['CLIP_MODEL'], os.environ['CLIP_PRETRAINED'], 'cpu', cache_dir=os.environ['CLIP_CACHE_DIR'])"

# From here on nothing may reach a model hub: a missing file fails the start.
ENV HF_HUB_OFFLINE=1

RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin app
USER app

EXPOSE 8080
# exec: Gunicorn replaces the shell as PID 1, so it receives Cloud Run's SIGTERM.
CMD exec gunicorn wsgi:app
