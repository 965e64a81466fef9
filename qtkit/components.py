"""Imports every built-in component package so that their ``@register`` decorators run.

Heavy optional libraries (x-transformers, gymnasium, minari, timm...) are imported inside the
components that use them, never at module import time.
"""

import qtkit.agents  # noqa: F401
import qtkit.backbones  # noqa: F401
import qtkit.backups  # noqa: F401
import qtkit.critics  # noqa: F401
import qtkit.policies  # noqa: F401
import qtkit.samplers  # noqa: F401
