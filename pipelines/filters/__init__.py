"""Pure checks of teacher responses with stable reason codes; see docs/filters.md.

Public API: `check_unit`, `reason_codes`, `UnitCheck` / `AcceptedPair` / `RejectedPair`,
`FilterSettings`, `filter_version`. Union masks live in `pipelines.core.masks`.
"""

from pipelines.filters.check_unit import (
    PAIR_CHECKS,
    AcceptedPair,
    RejectedPair,
    UnitCheck,
    check_unit,
    reason_codes,
)
from pipelines.filters.settings import FILTER_CODE_VERSION, FilterSettings, coerce_settings, filter_version

__all__ = [
    "FILTER_CODE_VERSION",
    "PAIR_CHECKS",
    "AcceptedPair",
    "FilterSettings",
    "RejectedPair",
    "UnitCheck",
    "check_unit",
    "coerce_settings",
    "filter_version",
    "reason_codes",
]
