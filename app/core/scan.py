"""A static scan of a source tree for event declarations, emit sites and handlers.

It parses files with ``ast`` and never imports them. A call counts when its function is
``declare``, ``emit`` or ``on`` of the registry, reached the ways people write it:
``emit(...)`` after ``from app.utils import emit``, ``events.emit(...)`` after
``from app.core import events``, ``utils.emit(...)``, ``app.utils.emit(...)``, aliases too;
``@on(...)`` and ``@events.on(...)`` decorators (stacked ones each count), and
``on("a.b")(handler)``. ``check`` then compares what was found with what was declared.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from app.core._names import name_problem
from app.core.catalogue import did_you_mean, parameter_problems

__all__ = [
    "REGISTRY_MODULES",
    "REGISTRY_PACKAGE",
    "Declaration",
    "EmitSite",
    "HandlerSite",
    "Problem",
    "Scan",
    "Site",
    "check",
    "scan",
]

REGISTRY_MODULES = frozenset({"app.utils", "app.core.events", "app.core.catalogue"})
"""Modules whose ``declare``, ``emit`` and ``on`` the scan recognises."""

REGISTRY_PACKAGE = "app.core"
"""Not scanned: the registry re-delivers queued events by variable name, events that were
checked where they were first emitted."""

_FUNCTIONS = frozenset({"declare", "emit", "on"})


@dataclass(frozen=True, order=True)
class Site:
    """A place in the source: a path relative to the scan's base, and a line."""

    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass(frozen=True)
class Problem:
    """Something the scan or the check found wrong, where it is."""

    site: Site
    message: str

    def __str__(self) -> str:
        return f"{self.site}: {self.message}"


@dataclass(frozen=True)
class Declaration:
    """A ``declare(...)`` call, read from its literals; types are kept as written."""

    name: str
    source: str
    payload: dict[str, str]
    optional: dict[str, str]
    purpose: str
    replaced_by: str | None
    site: Site

    def contract(self) -> tuple[object, ...]:
        """Everything but the site: two declarations with equal contracts agree."""
        return (self.name, self.source, self.payload, self.optional, self.purpose, self.replaced_by)


@dataclass(frozen=True)
class EmitSite:
    """An ``emit(...)`` call. ``name`` is None when it is not a string literal."""

    name: str | None
    fields: tuple[str, ...]
    spreads_mapping: bool
    site: Site


@dataclass(frozen=True)
class HandlerSite:
    """A registration with ``on``. ``parameters`` maps each named parameter to whether it has a
    default; it is None when the handler's definition was not found in the module."""

    name: str | None
    label: str
    parameters: dict[str, bool] | None
    site: Site


@dataclass
class Scan:
    """Everything a scan found, in file order, and what it could not read."""

    declarations: list[Declaration] = field(default_factory=list)
    emits: list[EmitSite] = field(default_factory=list)
    handlers: list[HandlerSite] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def scan(root: Path, base: Path | None = None) -> Scan:
    """Scan every ``.py`` file under ``root``, in path order.

    Args:
        root: The package directory to scan.
        base: Paths and module names are relative to it; the parent of ``root`` by default.
    """
    base = root.parent if base is None else base
    result = Scan()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(base)
        module = _module_name(relative)
        if module == REGISTRY_PACKAGE or module.startswith(REGISTRY_PACKAGE + "."):
            continue
        site_path = relative.as_posix()
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=site_path)
        except (SyntaxError, UnicodeDecodeError) as exc:
            line = getattr(exc, "lineno", None) or 1
            result.problems.append(Problem(Site(site_path, line), f"cannot parse: {exc}"))
            continue
        _ModuleScanner(module, site_path, result).visit(tree)
    return result


def check(found: Scan) -> list[Problem]:
    """Return every problem of ``found``: what the scan could not read, and each mismatch
    between the declarations and the emit sites and handlers, in file order."""
    problems = list(found.problems)
    declared: dict[str, Declaration] = {}
    for declaration in found.declarations:
        problem = name_problem(declaration.name)
        if problem is not None:
            problems.append(Problem(declaration.site, problem))
            continue
        earlier = declared.setdefault(declaration.name, declaration)
        if earlier is not declaration and earlier.contract() != declaration.contract():
            problems.append(
                Problem(
                    declaration.site,
                    f"{declaration.name!r} is declared differently at {earlier.site}",
                )
            )
    names = list(declared)
    emitted = set()
    for emit_site in found.emits:
        if emit_site.name is not None:
            emitted.add(emit_site.name)
        problems.extend(_emit_problems(emit_site, declared, names))
    for handler in found.handlers:
        problems.extend(_handler_problems(handler, declared, names))
    problems.extend(
        Problem(d.site, f"{d.name!r} is declared but nothing emits it")
        for d in declared.values()
        if d.name not in emitted
    )
    return sorted(problems, key=lambda p: p.site)


def _emit_problems(
    emit_site: EmitSite, declared: dict[str, Declaration], names: list[str]
) -> Iterator[Problem]:
    name = emit_site.name
    site = emit_site.site
    if name is None:
        yield Problem(site, "emit with a name that is not a string literal")
        return
    declaration = _declaration_of(name, "emit of", site, declared, names)
    if isinstance(declaration, Problem):
        yield declaration
        return
    allowed = {**declaration.payload, **declaration.optional}
    missing = [f for f in declaration.payload if f not in emit_site.fields]
    unexpected = [f for f in emit_site.fields if f not in allowed]
    if missing and not emit_site.spreads_mapping:
        yield Problem(site, f"emit of {name!r} is missing required field(s) {', '.join(missing)}")
    if unexpected:
        yield Problem(site, f"emit of {name!r} passes undeclared field(s) {', '.join(unexpected)}")


def _handler_problems(
    handler: HandlerSite, declared: dict[str, Declaration], names: list[str]
) -> Iterator[Problem]:
    name = handler.name
    site = handler.site
    if name is None:
        yield Problem(site, f"handler {handler.label} is registered with a non-literal name")
        return
    declaration = _declaration_of(name, f"handler {handler.label} handles", site, declared, names)
    if isinstance(declaration, Problem):
        yield declaration
        return
    for problem in parameter_problems(
        name, handler.parameters or {}, declaration.payload, declaration.optional
    ):
        yield Problem(site, f"handler {handler.label} {problem}")


def _declaration_of(
    name: str, what: str, site: Site, declared: dict[str, Declaration], names: list[str]
) -> Declaration | Problem:
    problem = name_problem(name)
    if problem is not None:
        return Problem(site, f"{what} {problem}")
    declaration = declared.get(name)
    if declaration is not None:
        return declaration
    hint = did_you_mean(name, names)
    return Problem(site, f"{what} {name!r}, which is not declared{f' ({hint})' if hint else ''}")


def _module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


class _ModuleScanner(ast.NodeVisitor):
    """Finds the registry's calls in one module, tracking how the module imported them."""

    def __init__(self, module: str, path: str, result: Scan) -> None:
        self.module = module
        self.path = path
        self.result = result
        self.functions: dict[str, str] = {}  # local name -> declare / emit / on
        self.modules: set[str] = set()  # dotted names bound to a registry module
        self.scope: list[str] = []
        self.definitions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}

    def visit_Module(self, node: ast.Module) -> None:
        self.definitions = {
            n.name: n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name in REGISTRY_MODULES:
                # ``import app.utils`` binds ``app`` and is used as ``app.utils.emit``.
                self.modules.add(alias.asname or alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or node.module is None:
            return
        for alias in node.names:
            bound = alias.asname or alias.name
            if node.module in REGISTRY_MODULES and alias.name in _FUNCTIONS:
                self.functions[bound] = alias.name
            elif f"{node.module}.{alias.name}" in REGISTRY_MODULES:
                self.modules.add(bound)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._visit_function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._visit_function(node)

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        label = ".".join([self.module, *self.scope, node.name])
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call) and self._registry_function(decorator.func) == "on":
                self._add_handler(decorator, label, _parameters(node))
            else:
                self.visit(decorator)
        self.scope.extend([node.name, "<locals>"])
        for child in [*node.args.defaults, *node.args.kw_defaults, *node.body]:
            if child is not None:
                self.visit(child)
        del self.scope[-2:]

    def visit_Call(self, node: ast.Call) -> None:
        function = self._registry_function(node.func)
        if function == "emit":
            self._add_emit(node)
        elif function == "declare":
            self._add_declaration(node)
        elif isinstance(node.func, ast.Call) and self._registry_function(node.func.func) == "on":
            # on("a.b")(handler): the registration written as a call.
            target = node.args[0] if node.args else None
            label, parameters = self._describe_target(target)
            self._add_handler(node.func, label, parameters)
            for argument in node.args:
                self.visit(argument)
            return
        self.generic_visit(node)

    def _registry_function(self, func: ast.expr) -> str | None:
        if isinstance(func, ast.Name):
            return self.functions.get(func.id)
        if isinstance(func, ast.Attribute) and func.attr in _FUNCTIONS:
            owner = _dotted(func.value)
            if owner is not None and (owner in self.modules or owner in REGISTRY_MODULES):
                return func.attr
        return None

    def _site(self, node: ast.AST) -> Site:
        return Site(self.path, getattr(node, "lineno", 1))

    def _add_emit(self, node: ast.Call) -> None:
        name = _literal_name(node)
        if len(node.args) > 1:
            self.result.problems.append(
                Problem(self._site(node), "emit with a positional payload; pass fields by keyword")
            )
        fields = tuple(k.arg for k in node.keywords if k.arg is not None)
        spreads = any(k.arg is None for k in node.keywords)
        self.result.emits.append(EmitSite(name, fields, spreads, self._site(node)))

    def _add_handler(
        self, on_call: ast.Call, label: str, parameters: dict[str, bool] | None
    ) -> None:
        self.result.handlers.append(
            HandlerSite(_literal_name(on_call), label, parameters, self._site(on_call))
        )

    def _describe_target(self, target: ast.expr | None) -> tuple[str, dict[str, bool] | None]:
        if isinstance(target, ast.Name):
            definition = self.definitions.get(target.id)
            parameters = _parameters(definition) if definition is not None else None
            return f"{self.module}.{target.id}", parameters
        text = ast.unparse(target) if target is not None else "<nothing>"
        return f"{self.module}:{text}", None

    def _add_declaration(self, node: ast.Call) -> None:
        site = self._site(node)
        name = _literal_name(node)
        keywords = {k.arg: k.value for k in node.keywords if k.arg is not None}
        source = _string(keywords.get("source"))
        purpose = _string(keywords.get("purpose"))
        payload = _fields(keywords.get("payload"))
        optional = _fields(keywords.get("optional")) if "optional" in keywords else {}
        replaced = keywords.get("replaced_by")
        replaced_by = _string(replaced) if replaced is not None else None
        unreadable = [
            label
            for label, value, given in [
                ("the name", name, True),
                ("source", source, True),
                ("purpose", purpose, True),
                ("payload", payload, True),
                ("optional", optional, True),
                ("replaced_by", replaced_by, replaced is not None),
            ]
            if given and value is None
        ]
        if len(node.args) != 1 or any(k.arg is None for k in node.keywords):
            unreadable.append("the call's shape (one name, then keywords)")
        if (
            unreadable
            or name is None
            or source is None
            or purpose is None
            or payload is None
            or optional is None
        ):
            self.result.problems.append(
                Problem(
                    site,
                    "declare() must be written with literals so the scan can read it "
                    f"(unreadable: {', '.join(unreadable)})",
                )
            )
            return
        self.result.declarations.append(
            Declaration(name, source, payload, optional, purpose, replaced_by, site)
        )


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, bool]:
    """Each parameter a keyword argument can fill, with whether it has a default."""
    arguments = node.args
    positional = [*arguments.posonlyargs, *arguments.args]
    first_default = len(positional) - len(arguments.defaults)
    named = {
        a.arg: index >= first_default
        for index, a in enumerate(positional)
        if index >= len(arguments.posonlyargs)
    }
    named.update(
        (a.arg, default is not None)
        for a, default in zip(arguments.kwonlyargs, arguments.kw_defaults, strict=True)
    )
    return named


def _literal_name(call: ast.Call) -> str | None:
    return _string(call.args[0]) if call.args else None


def _string(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _fields(node: ast.expr | None) -> dict[str, str] | None:
    if not isinstance(node, ast.Dict):
        return None
    fields = {}
    for key, value in zip(node.keys, node.values, strict=True):
        name = _string(key)
        if name is None:
            return None
        fields[name] = ast.unparse(value)
    return fields


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        owner = _dotted(node.value)
        return None if owner is None else f"{owner}.{node.attr}"
    return None
