"""Channel-flow analysis: pruning groups, families and pins."""

from ..ops import PinEvent
from ._plan import LayerChannels, Plan
from ._space import Costs, Family, SearchSpace, analyze, analyze_captured
from ._stages import group_stages, stage_of

__all__ = ["analyze", "analyze_captured", "SearchSpace", "Plan", "LayerChannels", "Family", "Costs", "PinEvent", "group_stages", "stage_of"]
