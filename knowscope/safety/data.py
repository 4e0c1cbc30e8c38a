"""SafeEdit records: kept importable here; they live in :mod:`knowscope.safeedit` (below every package
that reads them, so ``circuits`` and ``editing`` need not import ``safety``)."""

from knowscope.safeedit import (  # noqa: F401
    BUNDLED_SAFETY,
    CATEGORIES,
    GENERALIZATION_KEYS,
    SafetyFormatError,
    SafetyItem,
    load_bundled_safety,
    load_safety,
    parse_safety,
    save_safety,
)
