"""The Celery app of the domain that TIDINGS_DOMAIN names, for the Celery CLI:

    TIDINGS_DOMAIN=tidings.examples.bookshelf celery -A tidings.app.celery_app worker -Q ...
    TIDINGS_DOMAIN=tidings.examples.bookshelf celery -A tidings.app.celery_app beat

What `tidings server` runs as its children (app/supervisor.py). The domain is found as the
`tidings` CLI finds it (a dotted module, a file or folder, `:name`; without TIDINGS_DOMAIN,
`domain.py` or `subdomain.py` in the working directory). `app` is built on first access
(PEP 562), so importing this module loads nothing.
"""

from __future__ import annotations

import os
from typing import Any

_app: Any = None


def __getattr__(name: str) -> Any:
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        from tidings.app.bootstrap import runtime_for
        from tidings.app.loading import load_domain

        domain = load_domain(os.environ.get("TIDINGS_DOMAIN") or None)
        if not domain.initialized:
            domain.init()
        _app = runtime_for(domain).celery
    return _app
