"""The one error ``tsuika recommend`` raises."""

from __future__ import annotations

from tsuika.errors import TsuikaError


class RecommendError(TsuikaError, ValueError):
    """A dataset or model that recommend cannot work from; the message names the path and why."""
