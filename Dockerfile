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
RUN pip install . && useradd --system --uid 10001 streamwise
USER streamwise
CMD ["streamwise", "--help"]
