"""The integrity registry: named, set-based checks of the invariants, run by `manage.py integrity`.

Each app declares its checks in its own `integrity.py` module with `register(IntegrityCheck(...))`;
`autodiscover()` imports those modules when Django starts.
"""

from evoflow.integrity.registry import (
    CheckOutcome,
    IntegrityCheck,
    all_checks,
    autodiscover,
    get_check,
    register,
    registered,
    unregister,
)

__all__ = [
    "CheckOutcome",
    "IntegrityCheck",
    "all_checks",
    "autodiscover",
    "get_check",
    "register",
    "registered",
    "unregister",
]
