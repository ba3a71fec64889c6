"""The name users already import: ``from acestep.memory_manager import get_memory_manager``.

Everything lives in :mod:`acestep.memory`; this module only re-exports the public names.
"""

from acestep.memory.keep_alive import KeepAliveError, KeepAlivePolicy, parse_keep_alive
from acestep.memory.limits import Limits, MemoryLimitError
from acestep.memory.manager import MemoryManager, get_memory_manager, set_memory_manager
from acestep.memory.tiers import TIERS, Tier, tier_for_gib

__all__ = [
    "TIERS",
    "KeepAliveError",
    "KeepAlivePolicy",
    "Limits",
    "MemoryLimitError",
    "MemoryManager",
    "Tier",
    "get_memory_manager",
    "parse_keep_alive",
    "set_memory_manager",
    "tier_for_gib",
]
