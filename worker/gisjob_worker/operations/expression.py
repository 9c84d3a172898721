"""Safe band math: a whitelisted AST evaluated with NumPy, never Python ``eval``.

Allowed: band names ``b1..bN``, numbers, ``+ - * / // % **``, comparisons, ``and``/``or``/
``not``, ``x if cond else y`` and the functions in :data:`FUNCTIONS`. Anything else — other
names, attribute access, subscripts, keyword arguments, lambdas, strings — is rejected when the
job is validated, with a message naming what was found.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

BAND_NAME = re.compile(r"^b([1-9][0-9]*)$")
MAX_LENGTH = 2000
MAX_NODES = 200

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": np.abs,
    "sqrt": np.sqrt,
    "exp": np.exp,
    "log": np.log,
    "log10": np.log10,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "arctan2": np.arctan2,
    "floor": np.floor,
    "ceil": np.ceil,
    "minimum": np.minimum,
    "maximum": np.maximum,
    "clip": np.clip,
    "where": np.where,
}
_ARITY = {"arctan2": 2, "minimum": 2, "maximum": 2, "clip": 3, "where": 3}

_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: np.add,
    ast.Sub: np.subtract,
    ast.Mult: np.multiply,
    ast.Div: np.true_divide,
    ast.FloorDiv: np.floor_divide,
    ast.Mod: np.mod,
    ast.Pow: np.power,
}
_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}


class UnsafeExpression(ValueError):
    """The expression uses something outside the whitelist."""


def _describe(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"attribute access ('.{node.attr}') is not allowed"
    if isinstance(node, ast.Subscript):
        return "subscripts ([...]) are not allowed"
    if isinstance(node, ast.Lambda):
        return "lambda is not allowed"
    if isinstance(node, ast.Constant):
        return f"constant {node.value!r} is not allowed (only numbers)"
    return f"{type(node).__name__} is not allowed"


@dataclass(frozen=True)
class Expression:
    """A validated band-math expression."""

    text: str
    tree: ast.expr
    bands: tuple[int, ...]
    operations: int

    def evaluate(self, bands: dict[int, np.ndarray]) -> Any:
        with np.errstate(all="ignore"):
            return _eval(self.tree, bands)


def _weak(value: Any) -> Any:
    """NumPy scalars from constant sub-expressions back to Python floats (weakly typed)."""
    return float(value) if isinstance(value, np.integer | np.floating) else value


def _eval(node: ast.expr, bands: dict[int, np.ndarray]) -> Any:
    return _weak(_eval_node(node, bands))


def _eval_node(node: ast.expr, bands: dict[int, np.ndarray]) -> Any:
    if isinstance(node, ast.Constant):
        assert isinstance(node.value, int | float)  # _check allows numbers only
        return float(node.value)
    if isinstance(node, ast.Name):
        m = BAND_NAME.match(node.id)
        assert m is not None
        return bands[int(m.group(1))]
    if isinstance(node, ast.BinOp):
        return _BINOPS[type(node.op)](_eval(node.left, bands), _eval(node.right, bands))
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, bands)
        if isinstance(node.op, ast.USub):
            return np.negative(value)
        if isinstance(node.op, ast.Not):
            return np.logical_not(value)
        return value
    if isinstance(node, ast.BoolOp):
        fn = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        acc = _eval(node.values[0], bands)
        for v in node.values[1:]:
            acc = fn(acc, _eval(v, bands))
        return acc
    if isinstance(node, ast.Compare):
        left = _eval(node.left, bands)
        result: Any = None
        for op, comp in zip(node.ops, node.comparators, strict=True):
            right = _eval(comp, bands)
            step = _CMPOPS[type(op)](left, right)
            result = step if result is None else np.logical_and(result, step)
            left = right
        return result
    if isinstance(node, ast.IfExp):
        return np.where(_eval(node.test, bands), _eval(node.body, bands), _eval(node.orelse, bands))
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        return FUNCTIONS[node.func.id](*(_eval(a, bands) for a in node.args))
    raise AssertionError(f"unvalidated node {type(node).__name__}")  # pragma: no cover


def _check(node: ast.AST, bands: set[int]) -> int:
    """Validate ``node`` recursively; return the number of operations (array temporaries)."""
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise UnsafeExpression(_describe(node))
        try:
            float(node.value)
        except OverflowError:
            raise UnsafeExpression(f"constant {str(node.value)[:20]}... is too large") from None
        return 0
    if isinstance(node, ast.Name):
        m = BAND_NAME.match(node.id)
        if not m:
            raise UnsafeExpression(
                f"name {node.id!r} is not allowed (bands are b1..bN; functions: "
                f"{', '.join(sorted(FUNCTIONS))})"
            )
        bands.add(int(m.group(1)))
        return 0
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINOPS:
            raise UnsafeExpression(f"operator {type(node.op).__name__} is not allowed")
        return 1 + _check(node.left, bands) + _check(node.right, bands)
    if isinstance(node, ast.UnaryOp):
        if not isinstance(node.op, ast.USub | ast.UAdd | ast.Not):
            raise UnsafeExpression(f"operator {type(node.op).__name__} is not allowed")
        return 1 + _check(node.operand, bands)
    if isinstance(node, ast.BoolOp):
        return len(node.values) + sum(_check(v, bands) for v in node.values)
    if isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _CMPOPS:
                raise UnsafeExpression(f"comparison {type(op).__name__} is not allowed")
        parts = [node.left, *node.comparators]
        return 2 * len(node.ops) + sum(_check(p, bands) for p in parts)
    if isinstance(node, ast.IfExp):
        return 1 + sum(_check(p, bands) for p in (node.test, node.body, node.orelse))
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise UnsafeExpression(
                _describe(node.func)
                if isinstance(node.func, ast.Attribute)
                else "only plain function names may be called"
            )
        name = node.func.id
        if name not in FUNCTIONS:
            raise UnsafeExpression(
                f"function {name!r} is not allowed (allowed: {', '.join(sorted(FUNCTIONS))})"
            )
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise UnsafeExpression(f"{name}() takes positional arguments only")
        arity = _ARITY.get(name, 1)
        if len(node.args) != arity:
            raise UnsafeExpression(f"{name}() takes {arity} argument{'s' if arity > 1 else ''}")
        return 1 + sum(_check(a, bands) for a in node.args)
    raise UnsafeExpression(_describe(node))


def parse_expression(text: str) -> Expression:
    """Parse and validate; raises :class:`UnsafeExpression` (a ``ValueError``) on anything else."""
    if not text.strip():
        raise UnsafeExpression("expression is empty")
    if len(text) > MAX_LENGTH:
        raise UnsafeExpression(f"expression is longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise UnsafeExpression(f"syntax error at column {exc.offset}: {exc.msg}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise UnsafeExpression(f"expression has more than {MAX_NODES} parts")
    bands: set[int] = set()
    ops = _check(tree.body, bands)
    if not bands:
        raise UnsafeExpression("expression uses no band (refer to bands as b1..bN)")
    return Expression(text=text, tree=tree.body, bands=tuple(sorted(bands)), operations=ops)
