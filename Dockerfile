# One image for the migration, the API, the worker, beat and Flower of the bookshelf example.
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
# Every process runs as an unprivileged user (a fixed uid, so `runAsNonRoot` can verify it);
# it owns only its working folder, where the embedded defaults would write `.tidings/`.
RUN groupadd --system --gid 10001 tidings \
    && useradd --system --uid 10001 --gid tidings --home-dir /srv --no-create-home tidings \
    && mkdir -p /srv && chown tidings:tidings /srv
# Run from elsewhere: only the installed `tidings` is on the import path, as for a user.
WORKDIR /srv
ENV PYTHONUNBUFFERED=1
USER 10001:10001
