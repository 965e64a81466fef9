"""Imports every built-in component package so that their ``@register`` decorators run.

Heavy optional libraries (x-transformers, gymnasium, minari, timm...) are imported inside the
components that use them, never at module import time.
"""

import qtkit.agents
import qtkit.backbones
import qtkit.backups
import qtkit.critics
import qtkit.encoders
import qtkit.policies
import qtkit.samplers  # noqa: F401
