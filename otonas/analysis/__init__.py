"""Channel-flow analysis: pruning groups, families and pins."""

from ..ops import PinEvent
from ._space import Costs, Family, SearchSpace, analyze

__all__ = ["analyze", "SearchSpace", "Family", "Costs", "PinEvent"]
