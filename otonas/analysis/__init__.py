"""Channel-flow analysis: pruning groups, families and pins."""

from ._flow import PinEvent
from ._registry import BUILD_RULES, FLOP_RULES, FLOW_RULES, Registry
from ._space import Costs, Family, SearchSpace, analyze

__all__ = ["analyze", "SearchSpace", "Family", "Costs", "PinEvent", "Registry", "FLOW_RULES", "BUILD_RULES",
           "FLOP_RULES"]
