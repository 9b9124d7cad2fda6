"""How a setting is named in the environment: ``CHUNKLESS_`` + the field's name in capitals.

Its own module, below settings and layout, so that both can name a field's variable in their
messages (settings imports layout, so layout cannot take this from settings).
"""

from __future__ import annotations

ENV_PREFIX = "CHUNKLESS_"


def env_name(field: str) -> str:
    """The environment variable of a field."""
    return ENV_PREFIX + field.upper()
