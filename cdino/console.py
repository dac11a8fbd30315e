"""What cdino prints while it works: progress bars on or off.

Progress bars are shown unless the caller turned them off or ``CDINO_NO_PROGRESS=1``
is set (CI and log files prefer plain output).
"""

from __future__ import annotations

import os


def progress_enabled(requested: bool = True) -> bool:
    return bool(requested) and os.environ.get("CDINO_NO_PROGRESS", "") not in ("1", "true", "yes")
