"""`from tidings.utils.globals import current_domain` (the reference: `protean.utils.globals`).

`current_domain` is the domain of the innermost `with domain.domain_context():`, the same
proxy as `tidings.current_domain`.
"""

from tidings.domain.context import current_domain

__all__ = ["current_domain"]
