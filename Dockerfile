# The streamwise service image used by docker-compose.yml (River learners; no torch, to
# keep it small: add ".[torch]" below for the PyTorch learner).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streamwise ./streamwise
COPY stream ./stream
COPY models ./models
COPY connectors ./connectors
COPY examples ./examples
# /var/lib/streamwise is created here, owned by the service user, so that a named
# volume mounted on it (docker-compose.yml keeps the generated signing key there) is
# writable by that user.
RUN pip install . && useradd --system --uid 10001 streamwise \
    && mkdir -p /var/lib/streamwise && chown streamwise /var/lib/streamwise
USER streamwise
CMD ["streamwise", "--help"]
