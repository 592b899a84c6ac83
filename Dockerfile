# One image for the API, the worker and beat of the bookshelf example.
FROM python:3.11-slim
WORKDIR /build
# The repository root is the package directory of `tidings` (pyproject: package-dir).
COPY pyproject.toml README.md __init__.py fields.py exceptions.py celeryconfig.py ./
COPY domain domain
COPY outbox outbox
COPY tasks tasks
COPY app app
COPY port port
COPY utils utils
COPY examples examples
RUN pip install --no-cache-dir ".[api]"
# Run from elsewhere: only the installed `tidings` is on the import path, as for a user.
WORKDIR /srv
ENV PYTHONUNBUFFERED=1
