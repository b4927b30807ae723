"""The rule expression language: a safe subset of Python expressions over columns.

    qr == 0 and labels >= 3 and qtype in (TXT, NULL, CNAME)
    unique_names >= 30 and (bytes_up / queries) > 20

Names are feature columns (or, in thresholds, aggregate names); upper-case
names are constants: record types (TXT, NULL, ...) and rcodes (NXDOMAIN, ...).
Operators: and, or, not, comparisons (chains too), in / not in a tuple of
constants, + - * / and unary minus, numbers, parentheses. Compiled once to a
function of a column mapping; evaluated with numpy, so the same expression
works on a batch (arrays) and on one group (scalars). Anything else (calls,
attributes, subscripts, strings) is rejected at load time with its position.
"""
from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from sensor import schema


class ExprError(ValueError):
    def __init__(self, message: str, col: int | None = None) -> None:
        super().__init__(message)
        self.col = col


CONSTANTS: dict[str, int] = {**{name: code for code, name in schema.TYPE_NAMES.items() if name.isupper()},
                             **{name: code for code, name in schema.RCODE_NAMES.items() if name.isupper()}}

_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}

Evaluator = Callable[[Mapping[str, Any]], Any]

SELECT_BELOW = 0.25
"""An 'and' whose earlier terms left fewer than this share of the rows true (an 'or': false)
reads its later terms for those rows alone, where the columns can be selected: gathering
a few rows of each column costs less than a whole-batch operation from about here."""


def compile_expr(text: str, names: Mapping[str, str] | set[str],
                 constants: Mapping[str, float] | None = None) -> tuple[Evaluator, set[str]]:
    """Compile `text`; (function of a column mapping, the column names it reads). `constants`
    adds named values (a model's threshold) to the built-in ones."""
    try:
        # parenthesised so an expression may span lines in the rule file
        tree = ast.parse("(" + text.strip() + "\n)", mode="eval")
    except SyntaxError as e:
        raise ExprError(f"syntax error: {e.msg}", max((e.offset or 1) - 2, 0)) from None
    used: set[str] = set()
    fn = _compile(tree.body, set(names), used, {**CONSTANTS, **(constants or {})})
    return fn, used


def _fail(node: ast.AST, why: str) -> ExprError:
    col = getattr(node, "col_offset", None)
    return ExprError(why, max(col - 1, 0) if col is not None and getattr(node, "lineno", 1) == 1 else col)


def _compile(node: ast.AST, names: set[str], used: set[str], consts: Mapping[str, float]) -> Evaluator:
    if isinstance(node, ast.BoolOp):
        parts = [_compile(v, names, used, consts) for v in node.values]
        is_and = isinstance(node.op, ast.And)
        op = np.logical_and if is_and else np.logical_or

        def boolop(env, parts=parts, op=op, is_and=is_and):
            return _chain(parts, env, op, is_and)
        return boolop
    if isinstance(node, ast.UnaryOp):
        inner = _compile(node.operand, names, used, consts)
        if isinstance(node.op, ast.Not):
            return lambda env: np.logical_not(inner(env))
        if isinstance(node.op, ast.USub):
            return lambda env: -inner(env)
        raise _fail(node, "only 'not' and '-' are allowed as unary operators")
    if isinstance(node, ast.Compare):
        left = _compile(node.left, names, used, consts)
        steps = []
        for op, comp in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)):
                if not isinstance(comp, (ast.Tuple, ast.List, ast.Set)):
                    raise _fail(comp, "'in' needs a parenthesised list of constants")
                values = np.array([_constant(e) for e in comp.elts])
                steps.append(("in", isinstance(op, ast.NotIn), values))
            elif type(op) in _COMPARE:
                steps.append(("cmp", _COMPARE[type(op)], _compile(comp, names, used, consts)))
            else:
                raise _fail(node, "unsupported comparison")

        def compare(env, left=left, steps=steps):
            current = left(env)
            result = None
            for kind, a, b in steps:
                if kind == "in":
                    r = np.isin(current, b, invert=a)
                    if np.ndim(current) == 0:
                        r = bool(r)
                else:
                    nxt = b(env)
                    r = a(current, nxt)
                    current = nxt
                result = r if result is None else np.logical_and(result, r)
            return result
        return compare
    if isinstance(node, ast.BinOp):
        left, right = _compile(node.left, names, used, consts), _compile(node.right, names, used, consts)
        if isinstance(node.op, ast.Div):
            def divide(env, left=left, right=right):
                a, b = np.asarray(left(env), dtype=np.float64), np.asarray(right(env), dtype=np.float64)
                with np.errstate(divide="ignore", invalid="ignore"):
                    out = np.where(b != 0, a / np.where(b != 0, b, 1.0), 0.0)
                return out if out.ndim else float(out)
            return divide
        if type(node.op) not in _BINARY:
            raise _fail(node, "only + - * / are allowed")
        op = _BINARY[type(node.op)]
        return lambda env, left=left, right=right, op=op: op(left(env), right(env))
    if isinstance(node, ast.Name):
        if node.id in consts:
            value = consts[node.id]
            return lambda env, value=value: value
        if node.id in ("True", "False"):
            value = node.id == "True"
            return lambda env, value=value: value
        if node.id not in names:
            raise _fail(node, f"unknown name {node.id!r}")
        used.add(node.id)
        return lambda env, name=node.id: env[name]
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        value = node.value
        return lambda env, value=value: value
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        raise _fail(node, f"no text constants ({node.value!r}): names are matched by a list "
                          "(rules/lists, feature list_<name>) or a pattern (rules/patterns.toml, "
                          "feature pattern_<name>), addresses by a tag (rules/tags.toml, client_in_<tag>)")
    raise _fail(node, f"not allowed here: {ast.dump(node)[:40]}")


def _chain(parts: list[Evaluator], env: Mapping[str, Any], op: Any, is_and: bool) -> Any:
    """The terms of an 'and' (or an 'or') in order, each read only for the rows the ones
    before left undecided: once none is left, the rest are not read, and once few are, the
    rest are read for those rows alone (env.select, where the columns have it), so the
    costlier columns a filter names late (lists, patterns, models) are worked out for its
    few candidates, not for the batch."""
    out = np.asarray(parts[0](env), dtype=bool)
    select = getattr(env, "select", None)
    for k in range(1, len(parts)):
        undecided = out if is_and else ~out
        left = np.count_nonzero(undecided)
        if not left:
            break
        if select is not None and out.ndim and left < SELECT_BELOW * len(out):
            rows = np.flatnonzero(undecided)
            out = out.copy()                # it may be a column of env's
            out[rows] = _chain(parts[k:], select(rows), op, is_and)
            return out
        out = op(out, parts[k](env))
    return out


def _constant(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name) and node.id in CONSTANTS:
        return CONSTANTS[node.id]
    raise _fail(node, "lists after 'in' may hold numbers and constants (TXT, NXDOMAIN, ...) only")
