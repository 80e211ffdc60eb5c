"""The composition expression language: ``0.5*pos + 0.5*neg``, ``base - 0.8*toxic``, ``a + (b - c)``.

A small recursive-descent parser (never ``eval``): numbers, names, ``+ - * /``, unary minus and
parentheses. An expression must be *linear* in the adapters, so it reduces to one coefficient per
adapter name; repeated names are summed first (``a - a`` is the empty module, i.e. the base model).
Names that are not adapters are sweep variables (``lambda``), bound to numbers at evaluation.
The literal ``0`` may stand for the zero module (``a + 0``).

Grammar::

    expr   := term (('+' | '-') term)*
    term   := unary (('*' | '/') unary)*
    unary  := ('+' | '-') unary | atom
    atom   := NUMBER | NAME | '(' expr ')'
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from peftlab.infra.errors import PeftlabError

_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)|([A-Za-z_][A-Za-z0-9_]*)|(.))")


@dataclass(frozen=True)
class Num:
    value: float


@dataclass(frozen=True)
class Name:
    name: str


@dataclass(frozen=True)
class Unary:
    op: str
    operand: "Node"


@dataclass(frozen=True)
class Binary:
    op: str
    left: "Node"
    right: "Node"


Node = Num | Name | Unary | Binary


def _tokens(text: str) -> list[tuple[str, str, int]]:
    """(kind, text, position) with kind in num/name/op; a stray character is a one-line error."""
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        assert m is not None  # the last alternative matches any character
        num, name, op = m.groups()
        start = m.start(m.lastindex or 0)
        if num is not None:
            out.append(("num", num, start))
        elif name is not None:
            out.append(("name", name, start))
        elif op in "+-*/()":
            out.append(("op", op, start))
        else:
            raise PeftlabError(f"expression {text!r}: unexpected character {op!r} at position {start + 1}")
        pos = m.end()
    return out


@dataclass
class _Parser:
    text: str
    toks: list[tuple[str, str, int]] = field(default_factory=list)
    i: int = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def fail(self, what: str) -> PeftlabError:
        tok = self.peek()
        where = f"at position {tok[2] + 1} ({tok[1]!r})" if tok else "at the end"
        return PeftlabError(f"expression {self.text!r}: {what} {where}")

    def take(self, ops: str) -> str | None:
        """Consume the next token if it is one of the (one-character) operators ``ops``; return it."""
        tok = self.peek()
        if tok and tok[0] == "op" and tok[1] in ops:
            self.i += 1
            return tok[1]
        return None

    def eat(self, op: str) -> bool:
        return self.take(op) is not None

    def binary(self, ops: str, operand: Callable[[], Node]) -> Node:
        """``operand (op operand)*`` for the operators in ``ops``, left-associative."""
        node = operand()
        while op := self.take(ops):
            node = Binary(op, node, operand())
        return node

    def expr(self) -> Node:
        return self.binary("+-", self.term)

    def term(self) -> Node:
        return self.binary("*/", self.unary)

    def unary(self) -> Node:
        if op := self.take("+-"):
            return Unary(op, self.unary())
        return self.atom()

    def atom(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise self.fail("expected a number, a name or '('")
        kind, text, _ = tok
        if kind == "num":
            self.i += 1
            return Num(float(text))
        if kind == "name":
            self.i += 1
            return Name(text)
        if self.eat("("):
            node = self.expr()
            if not self.eat(")"):
                raise self.fail("expected ')'")
            return node
        raise self.fail("expected a number, a name or '('")


def parse(text: str) -> Node:
    """Parse an expression; any syntax error is one PeftlabError line naming the position."""
    if not text.strip():
        raise PeftlabError("expression is empty")
    p = _Parser(text, _tokens(text))
    node = p.expr()
    if p.peek() is not None:
        raise p.fail("unexpected")
    return node


def names(node: Node) -> list[str]:
    """Every name in order of first appearance (adapters and variables alike)."""
    if isinstance(node, Name):
        return [node.name]
    if isinstance(node, Unary):
        return names(node.operand)
    if isinstance(node, Binary):
        return list(dict.fromkeys(names(node.left) + names(node.right)))
    return []


#: a linear form: (constant, {adapter name: coefficient}) in order of first appearance
Linear = tuple[float, dict[str, float]]


def _add(a: Linear, b: Linear, sign: float) -> Linear:
    coefs = dict(a[1])
    for k, v in b[1].items():
        coefs[k] = coefs.get(k, 0.0) + sign * v
    return a[0] + sign * b[0], coefs


def _scale(a: Linear, s: float) -> Linear:
    return a[0] * s, {k: v * s for k, v in a[1].items()}


def _linear(node: Node, adapters: set[str], variables: dict[str, float], text: str) -> Linear:
    if isinstance(node, Num):
        return node.value, {}
    if isinstance(node, Name):
        if node.name in adapters:
            return 0.0, {node.name: 1.0}
        if node.name in variables:
            return float(variables[node.name]), {}
        raise PeftlabError(
            f"expression {text!r}: {node.name!r} is neither an adapter (--adapters {node.name}=PATH) nor a sweep variable"
        )
    if isinstance(node, Unary):
        inner = _linear(node.operand, adapters, variables, text)
        return inner if node.op == "+" else _scale(inner, -1.0)
    left = _linear(node.left, adapters, variables, text)
    right = _linear(node.right, adapters, variables, text)
    if node.op in "+-":
        return _add(left, right, 1.0 if node.op == "+" else -1.0)
    if node.op == "*":
        if left[1] and right[1]:
            raise PeftlabError(f"expression {text!r}: cannot multiply two adapters (only numbers scale adapters)")
        return _scale(right, left[0]) if not left[1] else _scale(left, right[0])
    if right[1]:
        raise PeftlabError(f"expression {text!r}: cannot divide by an adapter")
    if right[0] == 0:
        raise PeftlabError(f"expression {text!r}: division by zero")
    return _scale(left, 1.0 / right[0])


def linear_form(text: str, adapters: set[str] | list[str], variables: dict[str, float] | None = None) -> dict[str, float]:
    """Reduce an expression to {adapter: coefficient} (order of first appearance).

    A leftover non-zero constant (``a + 1``) is refused: a number is not a module. ``0`` alone or
    added to modules is the zero module, so ``a + 0`` is ``a``.
    """
    const, coefs = _linear(parse(text), set(adapters), dict(variables or {}), text)
    if const != 0:
        raise PeftlabError(f"expression {text!r}: adds the number {const:g} to modules; only scaled adapters can be summed")
    return coefs


def variables_of(text: str, adapters: set[str] | list[str]) -> list[str]:
    """Names in the expression that are not adapters (sweep variables), in order."""
    return [n for n in names(parse(text)) if n not in set(adapters)]


def _summands(node: Node, sign: float = 1.0) -> list[tuple[float, Node]]:
    """The terms of a sum, signed: ``a - (b + 2*c)`` -> (1, a), (-1, b), (-1, 2*c)."""
    if isinstance(node, Binary) and node.op in "+-":
        return _summands(node.left, sign) + _summands(node.right, sign if node.op == "+" else -sign)
    if isinstance(node, Unary):
        return _summands(node.operand, sign if node.op == "+" else -sign)
    return [(sign, node)]


def weighted_terms(text: str, adapters: set[str] | list[str], variables: dict[str, float] | None = None,
                   what: str = "a merge") -> dict[str, float]:
    """{adapter: weight} of an expression that is a weighted sum naming each adapter once.

    A non-linear merge (TIES, DARE) takes each operand as one task vector with one weight, so
    ``a + a`` (two copies of one vector) and ``2*(a - b)`` (a product applied to a group) have no
    single reading: each is one PeftlabError line naming ``what`` needs the weighted sum.
    Coefficients may be any number expression (``(1 - lambda)*a + lambda*b``).
    """
    linear_form(text, adapters, variables)  # syntax, constants and products are checked there
    pool, bound, out = set(adapters), dict(variables or {}), {}
    for sign, node in _summands(parse(text)):
        found = [n for n in names(node) if n in pool]
        if len(found) > 1:
            raise PeftlabError(f"expression {text!r}: {what} needs a weighted sum of adapters, each term one "
                               f"scaled adapter (e.g. '0.5*a + 0.7*b'); one term scales {' and '.join(found)} together")
        if not found:
            continue  # a number term: linear_form has checked that they add up to zero
        if found[0] in out:
            raise PeftlabError(f"expression {text!r}: {what} takes each adapter once; {found[0]!r} appears twice")
        out[found[0]] = sign * _linear(node, pool, bound, text)[1][found[0]]
    return out
