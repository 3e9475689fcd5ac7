"""The progress callback every long library function reports through.

Library functions call ``progress(done, total)`` and know nothing of how it is shown; the CLI passes
rich bars from :mod:`nesfgen.views`, tests and the Python API pass None or a list's append.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int], None]
