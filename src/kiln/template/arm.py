"""ARM template expressions, evaluated the way Azure Resource Manager does for a deployment.

Microsoft's image template samples are ARM deployment templates: their values are strings such as
`[concat(parameters('rgId'), '/images/', variables('name'))]`. A string that starts with `[` and
ends with `]` is an expression; one that starts with `[[` is a literal whose first `[` is dropped.
kiln evaluates the functions those samples use (`parameters`, `variables`, `concat`, `resourceId`,
`resourceGroup()`, `subscription()`, plus a few string helpers) and nothing else: any other
function is an `ArmError` naming it, never a silently wrong value.

The deployment's scope (subscription, resource group and its location) is a `Deployment`: kiln
has no Azure to ask, so these come from the caller, with neutral defaults.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kiln.ids import NULL_SUBSCRIPTION

DEFAULT_SUBSCRIPTION = NULL_SUBSCRIPTION
DEFAULT_RESOURCE_GROUP = "kiln"
DEFAULT_LOCATION = "westus2"


class ArmError(Exception):
    """An expression that cannot be evaluated; `hint` says what to do about it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class MissingValue(ArmError):
    """A parameter without a value: reported once, where it is declared, not at every use."""


@dataclass(frozen=True)
class Deployment:
    """Where the deployment would go: what `subscription()` and `resourceGroup()` return."""

    subscription_id: str = DEFAULT_SUBSCRIPTION
    resource_group: str = DEFAULT_RESOURCE_GROUP
    location: str = DEFAULT_LOCATION


def is_expression(text: str) -> bool:
    return len(text) >= 2 and text[0] == "[" and text[-1] == "]" and not text.startswith("[[")


def unescape(text: str) -> str:
    """A literal string: `[[...]` stands for `[...]`."""
    return text[1:] if text.startswith("[[") else text


# ---------------------------------------------------------------- parsing

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^']|'')*')
      | (?P<num>-?\d+(?:\.\d+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<punct>[(),.\[\]])
    )""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Lit:
    value: Any


@dataclass(frozen=True)
class _Call:
    name: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class _Member:
    target: Any
    key: Any  # str for `.name`, a node for `[expr]`


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ArmError(f"cannot parse the expression at {text[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            want = f"{value!r}" if value else "more"
            got = f"{tok[1]!r}" if tok else "the end"
            raise ArmError(f"expected {want} but found {got}")
        self.i += 1
        return tok

    def parse(self) -> Any:
        node = self.expr()
        if (extra := self.peek()) is not None:
            raise ArmError(f"unexpected {extra[1]!r} after the expression")
        return node

    def expr(self) -> Any:
        kind, value = self.take()
        if kind == "str":
            node: Any = _Lit(value[1:-1].replace("''", "'"))
        elif kind == "num":
            node = _Lit(float(value) if "." in value else int(value))
        elif kind == "name":
            self.take("(")
            args: list[Any] = []
            if (tok := self.peek()) is not None and tok[1] == ")":
                self.take(")")
            else:
                while True:
                    args.append(self.expr())
                    if self.take()[1] == ")":
                        break
                    if self.tokens[self.i - 1][1] != ",":
                        raise ArmError("expected ',' or ')' between function arguments")
            node = _Call(value, tuple(args))
        else:
            raise ArmError(f"unexpected {value!r}")
        while (tok := self.peek()) is not None and tok[1] in (".", "["):
            self.take()
            if tok[1] == ".":
                kind, name = self.take()
                if kind != "name":
                    raise ArmError(f"expected a property name after '.', found {name!r}")
                node = _Member(node, name)
            else:
                node = _Member(node, self.expr())
                self.take("]")
        return node


def parse(text: str) -> Any:
    """Parse the inside of `[...]` into a small tree (raises ArmError)."""
    return _Parser(text).parse()


# ---------------------------------------------------------------- evaluation


@dataclass
class Scope:
    """What expressions can see: parameter values, variable definitions, the deployment."""

    parameters: Mapping[str, Any]
    variables: Mapping[str, Any]
    deployment: Deployment = field(default_factory=Deployment)
    _var_cache: dict[str, Any] = field(default_factory=dict)
    _evaluating: list[str] = field(default_factory=list)
    missing: frozenset[str] = frozenset()

    def parameter(self, name: str) -> Any:
        key = _find(self.parameters, name)
        if key is None:
            known = ", ".join(sorted(self.parameters)) or "none"
            raise ArmError(f"parameter {name!r} is not declared", hint=f"declared parameters: {known}")
        if key in self.missing:
            raise MissingValue(f"parameter {key!r} has no value", hint=f"pass --parameters {key}=VALUE")
        return self.parameters[key]

    def variable(self, name: str) -> Any:
        key = _find(self.variables, name)
        if key is None:
            known = ", ".join(sorted(self.variables)) or "none"
            raise ArmError(f"variable {name!r} is not declared", hint=f"declared variables: {known}")
        if key in self._var_cache:
            return self._var_cache[key]
        if key in self._evaluating:
            raise ArmError(f"variable {key!r} refers to itself ({' -> '.join([*self._evaluating, key])})")
        self._evaluating.append(key)
        try:
            value = evaluate_value(self.variables[key], self)
        finally:
            self._evaluating.pop()
        self._var_cache[key] = value
        return value


def _find(mapping: Mapping[str, Any], name: Any) -> str | None:
    """ARM names are case-insensitive."""
    if not isinstance(name, str):
        raise ArmError(f"a name must be a string, not {_show(name)}")
    for key in mapping:
        if key.lower() == name.lower():
            return key
    return None


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def _string(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def _fn_concat(scope: Scope, *args: Any) -> Any:
    if args and all(isinstance(a, list) for a in args):
        return [item for a in args for item in a]
    if any(isinstance(a, list | dict) for a in args):
        raise ArmError("concat() takes either all arrays or strings, not a mix")
    return "".join(_string(a) for a in args)


def _fn_resource_id(scope: Scope, *args: Any) -> str:
    if not all(isinstance(a, str) for a in args):
        raise ArmError("resourceId() takes strings")
    type_at = next((i for i, a in enumerate(args) if "/" in a), None)
    if type_at is None or type_at > 2:
        raise ArmError("resourceId() needs a resource type such as 'Microsoft.Compute/images'",
                       hint="resourceId([subscriptionId], [resourceGroupName], resourceType, name, ...)")
    sub = args[0] if type_at == 2 else scope.deployment.subscription_id
    rg = args[type_at - 1] if type_at >= 1 else scope.deployment.resource_group
    namespace, *types = args[type_at].split("/")
    names = args[type_at + 1:]
    if len(names) != len(types) or not namespace:
        raise ArmError(f"resourceId() of {args[type_at]!r} needs {len(types)} name(s), got {len(names)}")
    tail = "/".join(f"{t}/{n}" for t, n in zip(types, names, strict=True))
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{namespace}/{tail}"


def _fn_resource_group(scope: Scope) -> dict[str, Any]:
    d = scope.deployment
    return {
        "id": f"/subscriptions/{d.subscription_id}/resourceGroups/{d.resource_group}",
        "name": d.resource_group,
        "type": "Microsoft.Resources/resourceGroups",
        "location": d.location,
        "properties": {"provisioningState": "Succeeded"},
    }


def _fn_subscription(scope: Scope) -> dict[str, Any]:
    d = scope.deployment
    return {
        "id": f"/subscriptions/{d.subscription_id}",
        "subscriptionId": d.subscription_id,
        "tenantId": DEFAULT_SUBSCRIPTION,
        "displayName": "kiln",
    }


def _fn_format(scope: Scope, template: Any, *args: Any) -> str:
    if not isinstance(template, str):
        raise ArmError("format() takes a format string first")

    def field_(m: re.Match[str]) -> str:
        i = int(m.group(1))
        if i >= len(args):
            raise ArmError(f"format() has no argument {{{i}}}")
        return _string(args[i])

    return re.sub(r"\{(\d+)(?::[^}]*)?\}", field_, template)


def _fn_replace(scope: Scope, text: Any, old: Any, new: Any) -> str:
    if not (isinstance(text, str) and isinstance(old, str) and isinstance(new, str)):
        raise ArmError("replace() takes three strings")
    return text.replace(old, new)


def _str1(fn: Callable[[str], str], name: str) -> Callable[..., str]:
    def call(scope: Scope, value: Any) -> str:
        if not isinstance(value, str):
            raise ArmError(f"{name}() takes a string, not {_show(value)}")
        return fn(value)

    return call


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "parameters": lambda scope, name: scope.parameter(name),
    "variables": lambda scope, name: scope.variable(name),
    "concat": _fn_concat,
    "resourceid": _fn_resource_id,
    "resourcegroup": _fn_resource_group,
    "subscription": _fn_subscription,
    "format": _fn_format,
    "replace": _fn_replace,
    "tolower": _str1(str.lower, "toLower"),
    "toupper": _str1(str.upper, "toUpper"),
    "string": lambda scope, value: _string(value),
    "equals": lambda scope, a, b: a == b,
    "if": lambda scope, cond, a, b: a if cond is True else b,
    "true": lambda scope: True,
    "false": lambda scope: False,
}
SUPPORTED = ("parameters", "variables", "concat", "resourceId", "resourceGroup", "subscription",
             "format", "replace", "toLower", "toUpper", "string", "equals", "if", "true", "false")


def _eval(node: Any, scope: Scope) -> Any:
    if isinstance(node, _Lit):
        return node.value
    if isinstance(node, _Member):
        target = _eval(node.target, scope)
        key = node.key if isinstance(node.key, str) else _eval(node.key, scope)
        if isinstance(target, dict) and isinstance(key, str):
            found = _find(target, key)
            if found is None:
                raise ArmError(f"the object has no property {key!r}",
                               hint=f"it has: {', '.join(sorted(target)) or 'nothing'}")
            return target[found]
        if isinstance(target, list) and isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < len(target):
                raise ArmError(f"index {key} is out of range (the array has {len(target)} items)")
            return target[key]
        raise ArmError(f"cannot take {_show(key)} of {_show(target)}")
    fn = FUNCTIONS.get(node.name.lower())
    if fn is None:
        raise ArmError(f"the ARM function {node.name!r} is not supported by kiln",
                       hint=f"supported: {', '.join(SUPPORTED)}")
    args = [_eval(a, scope) for a in node.args]
    try:
        return fn(scope, *args)
    except TypeError as e:
        raise ArmError(f"{node.name}() was given {len(args)} argument(s)") from e


def evaluate_string(text: str, scope: Scope) -> Any:
    """The value of one string: an expression's result, or the string itself (unescaped)."""
    if not is_expression(text):
        return unescape(text)
    return _eval(parse(text[1:-1]), scope)


def evaluate_value(value: Any, scope: Scope) -> Any:
    """Evaluate every expression inside a JSON value (raises the first ArmError)."""
    if isinstance(value, str):
        return evaluate_string(value, scope)
    if isinstance(value, list):
        return [evaluate_value(v, scope) for v in value]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = evaluate_string(k, scope) if isinstance(k, str) else k
            out[_string(key)] = evaluate_value(v, scope)
        return out
    return value
