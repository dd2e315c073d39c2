"""What each ATen op does, one rule object per op (or family of ops), one file per family.

A rule (:class:`OpRule`) owns every facet of its op: the channel flow (``flow``), the
builder's rewrite (``rewrite``), the FLOPs (``flops``), the generated code (``code``) and
``torch.nn`` layer (``layer``), and the flags the graph passes read (``zero_preserving``,
``structural``, ``join``, ``zero_if``, ``identity_if_same_shape``). There is one registry
(:func:`register`, :func:`lookup`, :func:`rule_for`) and one way to name an op
(:func:`op_key`). Adding an op is one class in one file: see docs/api.md, "Extending".
"""

from ._code import (ADD, ATOM, BAND, BOR, BXOR, CMP, LOWEST, MUL, POWER, SHIFT, UNARY, Call, Expr, LayerCall,
                    LayerSpec, as_tuple, binop, fn, is_identifier, literal, method, run_layer, squash,
                    torch_module_class)
from ._common import mutated_arg
from ._context import (GQA, GQA_MODES, BuildContext, Dims, FlowContext, FlowResult, PinEvent, module_path,
                       node_shape)
from ._flops import op_flops
from ._ids import IdTable
from ._meta import SOURCE_NODE, copy_meta, module_stack, source_node
from ._rule import OpKey, OpRule, functional_of, lookup, op_key, register, registered, rule_for, short_op
from . import attention, concat, conv, creation, index, linear, moe, norm, operators, pointwise, pool, reduce, shape

__all__ = [
    "OpRule", "OpKey", "op_key", "short_op", "functional_of", "register", "lookup", "rule_for", "registered",
    "FlowContext", "FlowResult", "PinEvent", "BuildContext", "Dims", "GQA", "GQA_MODES", "IdTable", "node_shape",
    "module_path", "module_stack", "source_node", "copy_meta", "SOURCE_NODE", "op_flops",
    "Call", "Expr", "LayerCall", "LayerSpec", "fn", "method", "binop", "literal", "squash", "as_tuple",
    "is_identifier", "torch_module_class", "run_layer", "mutated_arg",
    "ATOM", "POWER", "UNARY", "MUL", "ADD", "SHIFT", "BAND", "BXOR", "BOR", "CMP", "LOWEST",
    "attention", "concat", "conv", "creation", "index", "linear", "moe", "norm", "operators", "pointwise", "pool",
    "reduce", "shape",
]
