"""The Celery app of the bookshelf service, for the plain Celery CLI:

    celery -A examples.bookshelf.worker worker -l INFO
    celery -A examples.bookshelf.worker beat -l INFO
    celery -A examples.bookshelf.worker flower
"""

from app.factory import create_celery_app
from examples.bookshelf.domain import domain

domain.init()
app = create_celery_app(domain)
