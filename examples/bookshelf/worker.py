"""The Celery app of the bookshelf service, for the plain Celery CLI:

celery -A tidings.examples.bookshelf.worker worker -l INFO
celery -A tidings.examples.bookshelf.worker beat -l INFO
celery -A tidings.examples.bookshelf.worker flower
"""

from tidings.app.bootstrap import create_celery_app
from tidings.examples.bookshelf.domain import domain

domain.init()
app = create_celery_app(domain)
