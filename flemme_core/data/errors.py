"""The data layer's error type.

Bad data (a missing file, an image and label that do not match, label values outside
the configured classes, a patch larger than the image) is a user mistake like a bad
config key: it raises a one-line :class:`DataError` *before* training starts, naming
the file(s), what is wrong and the fix. Config mistakes (unknown transform or preset
names, bad option types) raise :class:`flemme_core.errors.ConfigError`.
"""

from __future__ import annotations

from ..errors import FlemmeError


class DataError(FlemmeError):
    """The data on disk (or a preset's arrays) cannot be used as configured."""
