"""A field type's fast check written as one Python condition (or as statements), so that it can be inlined.

The compiled row reader (pipeline.row_compiler) reads every field of an event in one generated
function. A fast check given as a function costs a Python call per field; given as a `Condition`,
the reader writes the condition into its own body instead: for the invoice pipeline's five string,
integer and UUID fields, 0.35 µs per event less (a seventh of reading a row).

Contract: `Condition.expression` is a Python expression over the name `value` and the names in
`constants` (plus builtins), with no side effect, that is true exactly when `value` is valid as it
is and is written unchanged. `as_check` makes the equivalent fast check (the value, or `MISSING`),
so the function and the inlined form cannot disagree: they are the same text. A check that changes
the value (a decimal's text, a parsed timestamp) is a `Conversion` instead: statements that set
`result`, inlined the same way (`as_fast` makes its function).

The expression is our own source (field_types.py); rule values reach it through `constants` only,
never as text. Renaming works on the expression's name tokens (Python's own tokenizer), so string
literals and attributes (`x.value`) are left as written.
"""

from __future__ import annotations

import builtins
import functools
import io
import re
import symtable
import tokenize
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import CodeType
from typing import Any

Check = Callable[[Any], Any]
_CONSTANT = re.compile(r"[a-z_][a-z0-9_]*")


@dataclass(frozen=True)
class Condition:
    """True exactly when `value` is valid and written as it is (see the module docstring)."""

    expression: str
    constants: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "\n" in self.expression:
            raise ValueError("a condition is one line")
        for name in self.constants:
            if not _CONSTANT.fullmatch(name) or name == "value":
                raise ValueError(f"condition constant {name!r}: a lowercase identifier other than 'value'")

    def inlined(self, value: str, prefix: str) -> tuple[str, dict[str, Any]]:
        """The expression over the variable `value`, with each constant renamed `<prefix><name>`
        so that several conditions share one namespace; and that namespace's entries."""
        names = {"value": value} | {name: f"{prefix}{name}" for name in self.constants}
        namespace = {f"{prefix}{name}": constant for name, constant in self.constants.items()}
        return _renamed(self.expression, names), namespace


@dataclass(frozen=True)
class Conversion:
    """A fast check that may change the value (a decimal's text, a parsed timestamp), written as Python
    statements so that it can be inlined like a Condition.

    Contract: `statements` set the name `result` from the name `value`: the value to write, or
    `missing` when the fast check does not take it (the exact check then decides), with the same
    verdicts as the type's `check` wherever they take the value. They use `constants`, their own
    `temporaries` and builtins only, and have no other effect (no return, no yield: they run inside
    the reader's body). What they raise is the reader's to handle, as anything a check raises.
    `as_fast` makes the function of the same text.
    """

    statements: str
    constants: Mapping[str, Any] = field(default_factory=dict)
    temporaries: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for name in (*self.constants, *self.temporaries):
            if not _CONSTANT.fullmatch(name) or name in {"value", "result", "missing"}:
                raise ValueError(f"conversion name {name!r}: a lowercase identifier other than value, result, missing")
        _check_statements(self.statements, frozenset(self.constants), frozenset(self.temporaries))

    def inlined(self, value: str, result: str, prefix: str, missing: Any) -> tuple[list[str], dict[str, Any]]:
        """The statements (lines, not indented) over the variables `value` and `result`, every other
        name of theirs renamed `<prefix><name>`; and the namespace entries they need (`missing` is
        the sentinel of a value not taken)."""
        names = {"value": value, "result": result, "missing": f"{prefix}missing"}
        names |= {name: f"{prefix}{name}" for name in (*self.constants, *self.temporaries)}
        namespace = {f"{prefix}{name}": constant for name, constant in self.constants.items()}
        return _renamed(self.statements, names).split("\n"), namespace | {f"{prefix}missing": missing}


_BUILTINS = frozenset(dir(builtins))
_BRACKETS = {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}
_FORBIDDEN = frozenset({"return", "yield", "lambda", "def", "class", "global", "nonlocal", "import"})
# Builtins that read or run code against the caller's variables by name, past any renaming.
_FRAME_READERS = frozenset({"eval", "exec", "compile", "locals", "vars", "globals", "dir", "breakpoint", "__import__"})
_FSTRING_START = getattr(tokenize, "FSTRING_START", -1)  # Python 3.12 tokenizes f-strings in parts


# The checks, the tokens and the renamings below are pure functions of their text: cached, because every
# Decoder built for a pipeline redoes them for each field (a pipeline file reloaded, the unit tests'
# thousands of generated pipelines), and tokenizing is most of what building a Decoder costs.
@functools.lru_cache(maxsize=256)
def _check_statements(statements: str, constants: frozenset[str], temporaries: frozenset[str]) -> None:
    """Raise ValueError unless `statements` bind only `result` and their temporaries and read only
    those, `value`, their constants, `missing` and builtins (Python's own symbol table says which):
    any other name would be left as it is and could read or bind a variable of the reader it is
    written into. Also refused: definitions, return, yield, import; comprehensions and generator
    expressions (a scope of their own, whose names the check would have to follow too); the builtins
    that reach a frame's variables by name (eval, locals, vars…); keyword arguments (renaming would
    rename them too); f-strings (their names are not name tokens); strings over lines."""
    tokens = _tokens(statements)
    depth = 0
    for at, token in enumerate(tokens):
        depth += _BRACKETS.get(token.string, 0) if token.type == tokenize.OP else 0
        prefix = token.string[: len(token.string) - len(token.string.lstrip("rRbBuUfF"))]
        if token.type == _FSTRING_START or (
            token.type == tokenize.STRING and ("\n" in token.string or "f" in prefix.lower())
        ):
            raise ValueError("a conversion's strings are plain and on one line")
        if token.type == tokenize.NAME and token.string in _FORBIDDEN:
            raise ValueError("a conversion is plain statements: no return, yield, import or definitions")
        if token.type == tokenize.NAME and depth and at + 1 < len(tokens) and tokens[at + 1].string == "=":
            raise ValueError(f"conversion: keyword argument {token.string!r} (renaming would change it)")
    body = "\n".join(f"    {line}" for line in statements.split("\n"))
    scope = symtable.symtable(f"def conversion(value):\n{body}\n", "<conversion>", "exec").get_children()[0]
    if not isinstance(scope, symtable.Function) or scope.get_children():
        raise ValueError("a conversion is plain statements: no comprehension or generator expression")
    bound = set(scope.get_locals()) - ({"value"} if not scope.lookup("value").is_assigned() else set())
    wrong = (bound - {"result", *temporaries}) | (bound & _BUILTINS)
    wrong |= set(scope.get_globals()) - {"missing", *constants, *(_BUILTINS - _FRAME_READERS)}
    if wrong:
        raise ValueError(f"conversion: {', '.join(sorted(wrong))}: not a constant or a temporary of its own")


@functools.lru_cache(maxsize=256)
def _tokens(text: str) -> tuple[tokenize.TokenInfo, ...]:
    return tuple(tokenize.generate_tokens(io.StringIO(text).readline))


def _renamed(text: str, names: Mapping[str, str]) -> str:
    """`text` with each name token in `names` (not an attribute: `x.value` stays) replaced."""
    return _renamed_as(text, tuple(names.items()))


@functools.lru_cache(maxsize=1024)
def _renamed_as(text: str, renaming: tuple[tuple[str, str], ...]) -> str:
    names = dict(renaming)
    lines = text.split("\n")
    previous = ""
    renamed: list[tuple[int, int, int, str]] = []
    for token in _tokens(text):
        if token.type == tokenize.NAME and token.string in names and previous != ".":
            renamed.append((token.start[0] - 1, token.start[1], token.end[1], names[token.string]))
        previous = token.string
    for row, start, end, name in reversed(renamed):
        lines[row] = lines[row][:start] + name + lines[row][end:]
    return "\n".join(lines)


@dataclass(frozen=True)
class Inlined:
    """A field type's `fast` (a function of its rules), made from its `condition` or `conversion`:
    the same text as the row readers inline."""

    made: Callable[[Any], Condition | Conversion]
    missing: Any

    def __call__(self, rules: Any) -> Check:
        made = self.made(rules)
        return as_check(made, self.missing) if isinstance(made, Condition) else as_fast(made, self.missing)


def as_fast(conversion: Conversion, missing: Any) -> Check:
    """The fast check of `conversion`: its `result` for a value (`missing` where the statements leave
    it unset: the exact check decides)."""
    lines, namespace = conversion.inlined("value", "result", "c_", missing)
    body = ["    result = c_missing", *(f"    {line}" for line in lines), "    return result"]
    source = "\n".join(["def fast(value):", *body])
    exec(compiled(source, "<fast conversion>"), namespace)  # noqa: S102 - our own source
    check: Check = namespace["fast"]
    return check


def as_check(condition: Condition, missing: Any) -> Check:
    """The fast check of `condition`: the value when it holds, else `missing`."""
    text, namespace = condition.inlined("value", "c_")  # prefixed: no constant can shadow `missing`
    source = f"def fast(value):\n    return value if ({text}) else missing"
    namespace["missing"] = missing
    exec(compiled(source, "<fast check>"), namespace)  # noqa: S102 - our own source
    check: Check = namespace["fast"]
    return check


@functools.lru_cache(maxsize=256)
def compiled(source: str, filename: str) -> CodeType:
    """The code object of `source` (our own generated source, never user text): cached, as a code
    object is immutable and every function made from it by `exec` gets its own namespace."""
    return compile(source, filename, "exec")
