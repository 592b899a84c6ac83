"""Field types for Protean-style declarations: `from tidings.fields import String`."""

from tidings.domain.fields import *  # noqa: F403
from tidings.domain.fields import __all__ as __all__
