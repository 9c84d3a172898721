"""Safe band math: whitelisted AST evaluated with NumPy; anything else rejected, never run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gisjob_worker.operations import expression as expr_mod
from gisjob_worker.operations.expression import (
    MAX_LENGTH,
    MAX_NODES,
    Expression,
    UnsafeExpression,
    parse_expression,
)

RNG = np.random.default_rng(42)
B1 = RNG.uniform(-50, 150, size=(7, 9)).astype(np.float32)
B2 = RNG.uniform(1, 200, size=(7, 9)).astype(np.float32)
B3 = RNG.uniform(-1, 1, size=(7, 9)).astype(np.float32)
B1[0, 0] = 0.0  # exact zero for divisions and comparisons
BANDS = {1: B1, 2: B2, 3: B3}


def _eval(text: str) -> np.ndarray:
    return np.asarray(parse_expression(text).evaluate(BANDS))


# ----------------------------------------------------------------------------- valid


CASES: list[tuple[str, Callable[[], np.ndarray]]] = [
    ("b1 + b2", lambda: B1 + B2),
    ("b1 - b2 * 2", lambda: B1 - B2 * np.float32(2)),
    ("(b2 - b1) / (b2 + b1)", lambda: (B2 - B1) / (B2 + B1)),
    ("b1 / 4", lambda: B1 / np.float32(4)),
    ("b2 // 3", lambda: np.floor_divide(B2, np.float32(3))),
    ("b2 % 7", lambda: np.mod(B2, np.float32(7))),
    ("b2 ** 2", lambda: B2**2),
    ("b2 ** 0.5", lambda: np.power(B2, np.float32(0.5))),
    ("-b1", lambda: -B1),
    ("+b1", lambda: B1),
    ("abs(b1)", lambda: np.abs(B1)),
    ("sqrt(b2)", lambda: np.sqrt(B2)),
    ("exp(b3)", lambda: np.exp(B3)),
    ("log(b2)", lambda: np.log(B2)),
    ("log10(b2)", lambda: np.log10(B2)),
    ("sin(b3) + cos(b3) * tan(b3)", lambda: np.sin(B3) + np.cos(B3) * np.tan(B3)),
    ("arctan2(b1, b2)", lambda: np.arctan2(B1, B2)),
    ("floor(b1) + ceil(b3)", lambda: np.floor(B1) + np.ceil(B3)),
    ("minimum(b1, b2)", lambda: np.minimum(B1, B2)),
    ("maximum(b1, 10)", lambda: np.maximum(B1, np.float32(10))),
    ("clip(b1, 0, 100)", lambda: np.clip(B1, 0, 100)),
    ("where(b1 > 0, b1, b2)", lambda: np.where(B1 > 0, B1, B2)),
    ("b1 > 0", lambda: B1 > 0),
    ("b1 >= b2", lambda: B1 >= B2),
    ("b1 == 0", lambda: B1 == 0),
    ("b1 != 0", lambda: B1 != 0),
    ("0 < b1 < 100", lambda: (B1 > 0) & (B1 < 100)),
    ("0 <= b1 <= b2 < 150", lambda: (B1 >= 0) & (B1 <= B2) & (B2 < 150)),
    ("b1 > 0 and b2 > 50", lambda: (B1 > 0) & (B2 > 50)),
    ("b1 > 0 or b3 > 0", lambda: (B1 > 0) | (B3 > 0)),
    ("b1 > 0 and b2 > 50 and b3 < 0", lambda: (B1 > 0) & (B2 > 50) & (B3 < 0)),
    ("not b1 > 0", lambda: ~(B1 > 0)),
    ("b1 if b1 > b2 else b2 * 2", lambda: np.where(B1 > B2, B1, B2 * np.float32(2))),
    (
        "(b1 - 10) if b3 > 0 else (sqrt(b2) if b1 < 0 else 0)",
        lambda: np.where(B3 > 0, B1 - np.float32(10), np.where(B1 < 0, np.sqrt(B2), 0)),
    ),
]


@pytest.mark.parametrize(("text", "reference"), CASES, ids=[c[0] for c in CASES])
def test_evaluates_like_numpy(text: str, reference: Callable[[], np.ndarray]) -> None:
    got = _eval(text)
    want = np.asarray(reference())
    assert got.shape == want.shape
    if want.dtype == bool:
        assert got.dtype == bool
        np.testing.assert_array_equal(got, want)
    else:
        assert got.dtype == np.float32, f"{text} left float32: {got.dtype}"
        np.testing.assert_array_equal(got, want)


def test_division_by_zero_is_inf_not_an_error() -> None:
    got = _eval("b2 / b1")
    assert np.isinf(got[0, 0])
    nan = _eval("b1 / b1")
    assert np.isnan(nan[0, 0])


def test_bands_and_operation_count() -> None:
    e = parse_expression("(b4 - b3) / (b4 + b3)")
    assert isinstance(e, Expression)
    assert e.bands == (3, 4)
    assert e.operations == 3
    assert e.text == "(b4 - b3) / (b4 + b3)"
    assert parse_expression("b12 + b2 + b12").bands == (2, 12)
    assert parse_expression("b1").operations == 0
    assert parse_expression("sqrt(b1)").operations == 1
    # a chained comparison costs two temporaries per comparison
    assert parse_expression("0 < b1 < 1").operations == 4


def test_surrounding_whitespace_is_fine() -> None:
    assert parse_expression("  b1 + 1  ").bands == (1,)


def test_node_limit_is_enforced_below_length_limit() -> None:
    text = "+".join(["b1"] * 120)  # 359 chars, ~240 nodes
    assert len(text) < MAX_LENGTH
    with pytest.raises(UnsafeExpression, match=f"more than {MAX_NODES} parts"):
        parse_expression(text)
    ok = "+".join(["b1"] * 50)
    assert parse_expression(ok).operations == 49


# ------------------------------------------------------------------------ rejected


REJECTED: list[tuple[str, str]] = [
    ("__import__('os')", "function '__import__' is not allowed"),
    ("b1.real", r"attribute access \('\.real'\) is not allowed"),
    ("os.system('x')", r"attribute access \('\.system'\) is not allowed"),
    ("b1.__class__.__bases__", "attribute access"),
    ("b1[0]", r"subscripts \(\[\.\.\.\]\) are not allowed"),
    ("lambda: 1", "lambda is not allowed"),
    ("'str'", "constant 'str' is not allowed"),
    ("b1 + 'x'", "constant 'x' is not allowed"),
    ("b1 + True", "constant True is not allowed"),
    ("b1 * None", "constant None is not allowed"),
    ("b1 * 1j", "constant 1j is not allowed"),
    ("b0", "name 'b0' is not allowed"),
    ("b01", "name 'b01' is not allowed"),
    ("x", "name 'x' is not allowed"),
    ("B1", "name 'B1' is not allowed"),
    ("sqrt(b1, b2)", r"sqrt\(\) takes 1 argument$"),
    ("where(b1 > 0, b1)", r"where\(\) takes 3 arguments"),
    ("minimum(b1)", r"minimum\(\) takes 2 arguments"),
    ("clip(b1, a_min=0, a_max=1)", r"clip\(\) takes positional arguments only"),
    ("sqrt(x=b1)", "positional arguments only"),
    ("clip(*[b1, 0, 1])", "positional arguments only"),
    ("[b1]", "List is not allowed"),
    ("(b1, b2)", "Tuple is not allowed"),
    ("{b1}", "Set is not allowed"),
    ("[x for x in b1]", "ListComp is not allowed"),
    ("(y := b1)", "NamedExpr is not allowed"),
    ("f'{b1}'", "JoinedStr is not allowed"),
    ("b1 & b2", "operator BitAnd is not allowed"),
    ("b1 << 2", "operator LShift is not allowed"),
    ("b1 @ b2", "operator MatMult is not allowed"),
    ("~b1", "operator Invert is not allowed"),
    ("b1 in b2", "comparison In is not allowed"),
    ("b1 is b2", "comparison Is is not allowed"),
    ("open('/etc/passwd')", "function 'open' is not allowed"),
    ("eval('1')", "function 'eval' is not allowed"),
    ("(lambda: b1)()", "only plain function names may be called"),
    ("b1; b2", "syntax error"),
    ("b1 +", "syntax error"),
    ("import os", "syntax error"),
    ("1 + 2", "expression uses no band"),
    ("", "expression is empty"),
    ("   \n ", "expression is empty"),
    ("b1 + " * 500 + "b1", f"longer than {MAX_LENGTH} characters"),
    ("-" * 300 + "b1", f"more than {MAX_NODES} parts"),
    ("(" * 250 + "b1" + ")" * 250, "syntax error"),
]


@pytest.mark.parametrize(("text", "message"), REJECTED, ids=[r[0][:40] for r in REJECTED])
def test_rejected(text: str, message: str) -> None:
    with pytest.raises(UnsafeExpression, match=message) as info:
        parse_expression(text)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_unknown_name_message_lists_functions() -> None:
    with pytest.raises(UnsafeExpression) as info:
        parse_expression("x")
    msg = str(info.value)
    assert "bands are b1..bN" in msg
    for fn in ("abs", "sqrt", "where", "clip", "arctan2"):
        assert fn in msg


def test_rejected_expression_is_never_evaluated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rejected text must not run: a call that would create a file leaves no file."""
    target = tmp_path / "pwned"
    attempts = [
        f"open({str(target)!r}, 'w')",
        f"__import__('pathlib').Path({str(target)!r}).touch()",
        f"b1 + open({str(target)!r}, 'w').write('x')",
        f"[open({str(target)!r}, 'w') for _ in [1]]",
        f"b1 if open({str(target)!r}, 'w') else b1",
    ]
    # if eval()/exec() were ever reached, this would record it
    calls: list[str] = []
    import builtins

    real_eval, real_exec = builtins.eval, builtins.exec

    def recording_eval(*args: Any, **kwargs: Any) -> Any:
        calls.append("eval")
        return real_eval(*args, **kwargs)

    def recording_exec(*args: Any, **kwargs: Any) -> None:
        calls.append("exec")
        real_exec(*args, **kwargs)

    monkeypatch.setattr(builtins, "eval", recording_eval)
    monkeypatch.setattr(builtins, "exec", recording_exec)
    for text in attempts:
        with pytest.raises(UnsafeExpression):
            parse_expression(text)
    assert not target.exists()
    assert calls == []


def test_valid_expression_is_not_evaluated_by_eval(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("eval/exec must not be used")

    # (ast.parse itself uses compile() to build the tree, which is fine: nothing runs)
    monkeypatch.setattr(builtins, "eval", boom)
    monkeypatch.setattr(builtins, "exec", boom)
    got = parse_expression("(b2 - b1) / (b2 + b1)").evaluate(BANDS)
    np.testing.assert_array_equal(got, (B2 - B1) / (B2 + B1))


def test_evaluation_only_uses_whitelisted_functions() -> None:
    assert set(expr_mod.FUNCTIONS) == {
        "abs",
        "sqrt",
        "exp",
        "log",
        "log10",
        "sin",
        "cos",
        "tan",
        "arctan2",
        "floor",
        "ceil",
        "minimum",
        "maximum",
        "clip",
        "where",
    }


# ----------------------------------------------------------------- constant handling


@pytest.mark.parametrize(("text", "factor"), [("b2 * 10**20", 1e20), ("b2 + 2**63", None)])
def test_integer_constant_arithmetic_does_not_overflow(text: str, factor: float | None) -> None:
    got = _eval(text)
    want = B2 * np.float32(1e20) if factor else B2 + np.float32(2.0**63)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_huge_integer_literal_is_rejected() -> None:
    """An integer no float can hold (400 digits, past ~1.8e308) is refused when parsed —
    never evaluated — and the message names it."""
    with pytest.raises(UnsafeExpression, match=r"constant 9{20}\.\.\. is too large"):
        parse_expression("b1 + " + "9" * 400)


@pytest.mark.parametrize("text", ["b1 * 2**0.5", "sqrt(2) * b1"])
def test_constant_subexpressions_keep_float32(text: str) -> None:
    assert _eval(text).dtype == np.float32
