# microbatch consumer image: slim, non-root, dependencies in their own cached layer.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy

RUN pip install --no-cache-dir uv==0.13.9
WORKDIR /app

# 1. Dependencies only: this layer is rebuilt only when the lock file changes.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project

# 2. The code.
COPY README.md ./
COPY consumer ./consumer
COPY pipeline ./pipeline
RUN uv sync --frozen --no-dev \
 && useradd --system --uid 10001 --no-create-home microbatch

USER microbatch
EXPOSE 9108
ENTRYPOINT ["/app/.venv/bin/microbatch"]
CMD ["run"]
