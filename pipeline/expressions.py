"""Arithmetic over column names (`quantity * unit_price`), parsed once, rendered as safe SQL.

The grammar is names, numbers, + - * /, unary minus and parentheses; anything else is refused.
Names become `sql.Identifier`s and numbers `sql.Literal`s, so no text from a pipeline file reaches
SQL unquoted.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from psycopg import sql

_OPERATORS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
}
MAX_LENGTH = 500


@dataclass(frozen=True)
class Expression:
    """A parsed expression: its source text, the names it reads, and its syntax tree."""

    text: str
    names: tuple[str, ...]
    tree: ast.expr

    def to_sql(
        self, qualifier: str | None = None, *, name: Callable[[str], sql.Composable] | None = None
    ) -> sql.Composable:
        """Render as SQL; names are qualified with `qualifier` (a table alias) when given, or
        rendered by `name` (e.g. with a cast) when that is given."""
        return _render(self.tree, qualifier, name)

    @property
    def is_bare_name(self) -> bool:
        return isinstance(self.tree, ast.Name)


@lru_cache(maxsize=256)
def parse_expression(text: str) -> Expression:
    """Parse `text`; raise ValueError saying what is not allowed."""
    if len(text) > MAX_LENGTH:
        raise ValueError(f"expression longer than {MAX_LENGTH} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(f"expression {text!r} is not valid arithmetic") from None
    names: list[str] = []
    _check(tree, text, names)
    return Expression(text, tuple(dict.fromkeys(names)), tree)


def _check(node: ast.expr, text: str, names: list[str]) -> None:
    if isinstance(node, ast.Name):
        names.append(node.id)
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, int | float):
            raise ValueError(f"expression {text!r}: only numbers may appear as constants")
    elif isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        _check(node.left, text, names)
        _check(node.right, text, names)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        _check(node.operand, text, names)
    else:
        raise ValueError(f"expression {text!r}: only names, numbers, + - * / and parentheses are allowed")


def _render(node: ast.expr, qualifier: str | None, name: Callable[[str], sql.Composable] | None) -> sql.Composable:
    if isinstance(node, ast.Name):
        if name is not None:
            return name(node.id)
        if qualifier is None:
            return sql.Identifier(node.id)
        return sql.Identifier(qualifier, node.id)
    if isinstance(node, ast.Constant):
        return sql.Literal(node.value)
    if isinstance(node, ast.UnaryOp):
        return sql.SQL("(-{})").format(_render(node.operand, qualifier, name))
    if isinstance(node, ast.BinOp):
        operator = sql.SQL(_OPERATORS[type(node.op)])
        left, right = _render(node.left, qualifier, name), _render(node.right, qualifier, name)
        return sql.SQL("({} {} {})").format(left, operator, right)
    raise AssertionError(f"unchecked node {type(node).__name__}")  # parse_expression refused it
