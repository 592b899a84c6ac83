# One image for the API, the worker and beat of the bookshelf example.
FROM python:3.11-slim
WORKDIR /srv
COPY pyproject.toml README.md celeryconfig.py ./
COPY domain domain
COPY outbox outbox
COPY tasks tasks
COPY app app
COPY examples examples
RUN pip install --no-cache-dir ".[api]"
ENV PYTHONUNBUFFERED=1
