"""Tidings: Celery-based orchestration for domain-driven Python.

The public API, in the reference's spelling with `protean` replaced by `tidings`:

    from tidings import Domain, handle, current_domain
    from tidings.fields import Identifier, Integer, String

The folders of the repository are its subpackages: `tidings.domain` (the kernel, no
Celery), `tidings.outbox`, `tidings.tasks`, `tidings.app` (the composition root) and
`tidings.celeryconfig` (Celery's defaults as data).
"""

from tidings.domain import *  # noqa: F403 - the kernel's public names are the package's
from tidings.domain import __all__ as __all__

__version__ = "0.2.0"
