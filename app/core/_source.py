"""Reading a source tree without running it: declarations, emit sites, handlers and imports.

It parses files with ``ast``. A call counts when its function is ``declare``, ``emit`` or
``on`` of the registry, reached the ways people write it: ``emit(...)`` after
``from app.utils import emit`` (or a relative import of it), ``events.emit(...)`` after
``from app.core import events``, ``utils.emit(...)``, ``app.utils.emit(...)``, aliases of any
of them (``import ... as``, ``send = emit``); ``@on(...)`` and ``@events.on(...)`` decorators
(stacked ones each count) and ``on("a.b")(handler)``. A call of a method named ``emit_soon``
is a ``BackgroundEmitter``'s and counts as an emit of its event.

It also follows each module's import statements to tell what start-up imports:
``app.bootstrap.load_business_packages()`` imports the package's ``bootstrap`` module and
every package in its ``business`` folder, in name order, and each module runs its own imports
and registrations top to bottom. A registration written at module or class level happens when
its module is imported; one inside a function happens when the function runs (at run time).
The scan reads the package ``app.core`` belongs to unless told otherwise, and never reads
``app.core`` itself.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = [
    "APP_ROOT",
    "BOOTSTRAP_MODULE",
    "BUSINESS_FOLDER",
    "REGISTRY_MODULES",
    "REGISTRY_PACKAGE",
    "Declaration",
    "EmitSite",
    "HandlerSite",
    "ModuleSource",
    "Problem",
    "Scan",
    "Signature",
    "Site",
    "find_declaration",
    "scan",
]

APP_ROOT: Final = Path(__file__).resolve().parent.parent
"""The package the registry belongs to: what the scan reads by default."""

BUSINESS_FOLDER: Final = "business"
"""Start-up imports every package in this folder of the root, in name order."""

BOOTSTRAP_MODULE: Final = "bootstrap"
"""The root's module that imports the business packages; start-up imports it first."""

REGISTRY_MODULES: Final = frozenset({"app.utils", "app.core.events", "app.core.catalogue"})
"""Modules whose ``declare``, ``emit`` and ``on`` the scan recognises."""

REGISTRY_PACKAGE: Final = "app.core"
"""Not scanned: the registry re-delivers queued events by variable name, events that were
checked where they were first emitted."""

EMITTER_CLASS: Final = ("app.core.deferred", "BackgroundEmitter")
"""The class whose ``emit_soon`` may also be called unbound, the emitter first."""

_FUNCTIONS: Final = frozenset({"declare", "emit", "on"})
_EMIT_SOON: Final = "emit_soon"


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
    module: str

    def contract(self) -> tuple[object, ...]:
        """Everything but the site: two declarations with equal contracts agree."""
        return (self.name, self.source, self.payload, self.optional, self.purpose, self.replaced_by)


@dataclass(frozen=True)
class EmitSite:
    """An emit: ``emit(...)``, or ``emit_soon(...)`` as ``function`` says. ``name`` is None
    when it is not a string literal."""

    name: str | None
    fields: tuple[str, ...]
    spreads_mapping: bool
    site: Site
    function: str


@dataclass(frozen=True)
class Signature:
    """What a handler's definition says about how it can be called.

    Attributes:
        parameters: Each parameter a keyword argument can fill, with whether it has a default.
        var_keyword: Whether it takes ``**kwargs``.
        required_positional_only: Positional-only parameters without a default.
        generator: Whether its body yields.
    """

    parameters: dict[str, bool]
    var_keyword: bool
    required_positional_only: tuple[str, ...]
    generator: bool


@dataclass(frozen=True)
class HandlerSite:
    """A registration with ``on``.

    Attributes:
        name: The event name, or None when it is not a string literal.
        label: The handler as the registry names it, ``module.qualname``.
        signature: None when the handler's definition was not found in the module.
        site: Where ``on`` is called.
        module: The module the registration is in.
        at_import: Whether it registers when its module is imported (written at module or
            class level), rather than when a function runs.
        durable: Whether ``on`` is given ``durable=True``.
        durable_id: The literal ``id=`` of a durable handler, or None when it is not one.
    """

    name: str | None
    label: str
    signature: Signature | None
    site: Site
    module: str
    at_import: bool
    durable: bool = False
    durable_id: str | None = None


@dataclass(frozen=True)
class ModuleSource:
    """One module of the tree: where it is and what importing it does, in order: a module
    name for each module an import statement may import, a handler for each registration."""

    name: str
    path: str
    is_package: bool
    steps: tuple[str | HandlerSite, ...]


@dataclass
class Scan:
    """Everything a scan found, in file order, what it could not read, and what start-up
    imports and registers."""

    declarations: list[Declaration] = field(default_factory=list)
    emits: list[EmitSite] = field(default_factory=list)
    handlers: list[HandlerSite] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    modules: dict[str, ModuleSource] = field(default_factory=dict)
    package: str = ""
    """The root package's name."""
    startup: list[str] = field(default_factory=list)
    """The modules start-up imports, in the order it imports them."""
    registrations: list[HandlerSite] = field(default_factory=list)
    """The handlers start-up registers, in registration order."""

    @property
    def business(self) -> str:
        """The package holding the business packages (``app.business``)."""
        return f"{self.package}.{BUSINESS_FOLDER}"

    def business_packages(self) -> list[str]:
        """The business packages, in the order start-up imports them (by name)."""
        return sorted(
            name
            for name, module in self.modules.items()
            if module.is_package and name.rpartition(".")[0] == self.business
        )

    def business_package_of(self, module: str) -> str | None:
        """The business package ``module`` belongs to, or None."""
        prefix = self.business + "."
        if not module.startswith(prefix):
            return None
        package = self.business + "." + module[len(prefix) :].partition(".")[0]
        return package if package in self.modules and self.modules[package].is_package else None

    def never_imported(self, module: str) -> str:
        """Why start-up never imports ``module`` and how to make it, in sentences."""
        package = self.business_package_of(module)
        folder = self.business.replace(".", "/")
        if package is None:
            return (
                f"start-up imports only the business packages ({folder}/<name>/) and what they "
                f"import, never {module}. Move it into a business package."
            )
        init = self.modules[package].path
        parent, _, leaf = module.rpartition(".")
        return (
            f"start-up imports {package} ({init}), and nothing it imports imports {module}. "
            f"Import it from {init}: `from {parent} import {leaf} as {leaf}`."
        )


def scan(root: Path = APP_ROOT, base: Path | None = None) -> Scan:
    """Scan every ``.py`` file under ``root``, in path order, and work out what start-up
    imports and registers.

    Args:
        root: The package directory to scan; start-up is its ``bootstrap`` module and the
            packages in its ``business`` folder.
        base: Paths and module names are relative to it; the parent of ``root`` by default.
    """
    base = root.parent if base is None else base
    result = Scan(package=_module_name(root.relative_to(base) / "__init__.py"))
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
            reason = exc.msg if isinstance(exc, SyntaxError) else str(exc)
            result.problems.append(
                Problem(Site(site_path, line), f"cannot parse: {reason}. Fix the file.")
            )
            continue
        scanner = _ModuleScanner(module, site_path, path.name == "__init__.py", result)
        scanner.visit(tree)
        result.modules[module] = ModuleSource(
            module, site_path, path.name == "__init__.py", tuple(scanner.steps)
        )
    _run_startup(result)
    return result


def find_declaration(name: str, root: Path = APP_ROOT) -> tuple[Declaration, Scan] | None:
    """Find where the source under ``root`` declares ``name``, with the scan that found it;
    None when nothing there does. Files that do not mention the name are not parsed."""
    if not any(name in _text(path) for path in root.rglob("*.py")):
        return None
    found = scan(root)
    declaration = next((d for d in found.declarations if d.name == name), None)
    return None if declaration is None else (declaration, found)


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def _run_startup(result: Scan) -> None:
    """Import, on paper, what start-up imports: fill ``startup`` and ``registrations``."""
    imported: set[str] = set()

    def run(module: str) -> None:
        if module in imported or module not in result.modules:
            return
        parent = module.rpartition(".")[0]
        if parent:
            run(parent)  # Python imports a package before its modules
            if module in imported:  # the package imported it
                return
        imported.add(module)  # before its body: a cycle sees it half imported, as Python does
        result.startup.append(module)
        for step in result.modules[module].steps:
            if isinstance(step, HandlerSite):
                result.registrations.append(step)
            else:
                run(step)

    for module in [f"{result.package}.{BOOTSTRAP_MODULE}", *result.business_packages()]:
        run(module)


def _module_name(relative: Path) -> str:
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


class _ModuleScanner(ast.NodeVisitor):
    """Finds the registry's calls and the imports in one module, tracking how the module
    imported the registry."""

    def __init__(self, module: str, path: str, is_package: bool, result: Scan) -> None:
        self.module = module
        self.path = path
        self.package = module if is_package else module.rpartition(".")[0]
        self.result = result
        self.functions: dict[str, str] = {}  # local name -> declare / emit / on
        self.modules: set[str] = set()  # dotted names bound to a registry module
        self.emitter_classes: set[str] = set()  # local names of BackgroundEmitter
        self.scope: list[str] = []
        self.definitions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        self.steps: list[str | HandlerSite] = []

    @property
    def at_import(self) -> bool:
        """Whether the code being visited runs when the module is imported."""
        return "<locals>" not in self.scope

    def visit_Module(self, node: ast.Module) -> None:
        self.definitions = {
            n.name: n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        self.generic_visit(node)

    def visit_If(self, node: ast.If) -> None:
        if _dotted(node.test) in {"TYPE_CHECKING", "typing.TYPE_CHECKING"}:
            for child in node.orelse:  # the body runs for type checkers only
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if self.at_import:
                self.steps.append(alias.name)
            if alias.name in REGISTRY_MODULES:
                # ``import app.utils`` binds ``app`` and is used as ``app.utils.emit``.
                self.modules.add(alias.asname or alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = self._absolute(node)
        if module is None:
            return
        if self.at_import:
            self.steps.append(module)
            self.steps.extend(f"{module}.{alias.name}" for alias in node.names)
        for alias in node.names:
            bound = alias.asname or alias.name
            if module in REGISTRY_MODULES and alias.name in _FUNCTIONS:
                self.functions[bound] = alias.name
            elif f"{module}.{alias.name}" in REGISTRY_MODULES:
                self.modules.add(bound)
            elif (module, alias.name) == EMITTER_CLASS:
                self.emitter_classes.add(bound)

    def _absolute(self, node: ast.ImportFrom) -> str | None:
        """The module a ``from ... import`` names, relative imports resolved."""
        if not node.level:
            return node.module
        parts = self.package.split(".") if self.package else []
        if node.level - 1 > len(parts):
            return None
        parts = parts[: len(parts) - (node.level - 1)]
        return ".".join([*parts, node.module] if node.module else parts) or None

    def visit_Assign(self, node: ast.Assign) -> None:
        function = self._registry_function(node.value)
        if function is not None and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                self.functions[target.id] = function  # ``send = emit``: an alias
                return
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        self._check_reference(node)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr == _EMIT_SOON or self._registry_function(node) == "emit":
            self._check_reference(node)
        elif self._registry_function(node.value) != "emit":  # not an attribute of emit itself
            self.generic_visit(node)

    def _check_reference(self, node: ast.Name | ast.Attribute) -> None:
        """An emit handed on instead of called: the scan cannot tell what it emits."""
        if isinstance(node, ast.Attribute) and node.attr == _EMIT_SOON:
            function = _EMIT_SOON
        elif self._registry_function(node) == "emit":
            function = "emit"
        else:
            return
        self.result.problems.append(
            Problem(
                self._site(node),
                f"{ast.unparse(node)} is passed on instead of called, so the scan cannot "
                f'check what it emits. Call it here: {function}("aggregate.verb", field=...).',
            )
        )

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for child in [*node.decorator_list, *node.bases, *node.keywords]:
            self.visit(child)
        self.scope.append(node.name)
        for statement in node.body:
            self.visit(statement)
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._visit_function(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._visit_function(node)

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        label = ".".join([self.module, *self.scope, node.name])
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call) and self._registry_function(decorator.func) == "on":
                self._add_handler(decorator, label, _signature(node.args, node.body))
                self._visit_arguments(decorator)
            else:
                self.visit(decorator)
        self.scope.extend([node.name, "<locals>"])
        for child in [*node.args.defaults, *node.args.kw_defaults, *node.body]:
            if child is not None:
                self.visit(child)
        del self.scope[-2:]

    def visit_Lambda(self, node: ast.Lambda) -> None:
        self.scope.extend(["<lambda>", "<locals>"])
        self.generic_visit(node)
        del self.scope[-2:]

    def visit_Call(self, node: ast.Call) -> None:
        function = self._registry_function(node.func)
        if function == "emit":
            self._add_emit(node, node.args, "emit")
        elif function == "declare":
            self._add_declaration(node)
        elif function == "on":
            self.result.problems.append(
                Problem(
                    self._site(node),
                    "on(...) is not applied to a handler here, so the scan cannot tell what it "
                    "registers. Write @on(...) over the handler, or on(...)(handler).",
                )
            )
        elif isinstance(node.func, ast.Call) and self._registry_function(node.func.func) == "on":
            # on("a.b")(handler): the registration written as a call.
            target = node.args[0] if node.args else None
            label, signature = self._describe_target(target)
            self._add_handler(node.func, label, signature)
            self._visit_arguments(node.func)
        elif isinstance(node.func, ast.Attribute) and node.func.attr == _EMIT_SOON:
            unbound = _dotted(node.func.value) in self.emitter_classes
            self.visit(node.func.value)
            self._add_emit(node, node.args[1:] if unbound else node.args, _EMIT_SOON)
        else:
            self.generic_visit(node)
            return
        self._visit_arguments(node)

    def _visit_arguments(self, node: ast.Call) -> None:
        for child in [*node.args, *node.keywords]:
            self.visit(child)

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

    def _add_emit(self, node: ast.Call, args: list[ast.expr], function: str) -> None:
        name = _string(args[0]) if args else None
        if len(args) > 1:
            self.result.problems.append(
                Problem(
                    self._site(node),
                    f"{function} with a positional payload. Pass the fields as keyword arguments.",
                )
            )
        fields = tuple(k.arg for k in node.keywords if k.arg is not None)
        spreads = any(k.arg is None for k in node.keywords)
        self.result.emits.append(EmitSite(name, fields, spreads, self._site(node), function))

    def _add_handler(self, on_call: ast.Call, label: str, signature: Signature | None) -> None:
        keywords = {k.arg: k.value for k in on_call.keywords if k.arg is not None}
        durable = keywords.get("durable")
        handler = HandlerSite(
            _literal_name(on_call),
            label,
            signature,
            self._site(on_call),
            self.module,
            self.at_import,
            durable=isinstance(durable, ast.Constant) and durable.value is True,
            durable_id=_string(keywords.get("id")),
        )
        self.result.handlers.append(handler)
        if handler.at_import:
            self.steps.append(handler)

    def _describe_target(self, target: ast.expr | None) -> tuple[str, Signature | None]:
        if isinstance(target, ast.Name):
            definition = self.definitions.get(target.id)
            signature = _signature(definition.args, definition.body) if definition else None
            return f"{self.module}.{target.id}", signature
        if isinstance(target, ast.Lambda):
            return f"{self.module}.<lambda>", _signature(target.args, [])
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
                    f"(unreadable: {', '.join(unreadable)}). Write them out in the call.",
                )
            )
            return
        self.result.declarations.append(
            Declaration(name, source, payload, optional, purpose, replaced_by, site, self.module)
        )


def _signature(arguments: ast.arguments, body: list[ast.stmt]) -> Signature:
    """How a function defined with ``arguments`` and ``body`` can be called."""
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
    required_positional_only = tuple(
        a.arg for index, a in enumerate(arguments.posonlyargs) if index < first_default
    )
    return Signature(named, arguments.kwarg is not None, required_positional_only, _yields(body))


def _yields(body: list[ast.stmt]) -> bool:
    """Whether ``body`` yields, not counting functions and classes defined in it."""
    pending: list[ast.AST] = list(body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Yield | ast.YieldFrom):
            return True
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            pending.extend(ast.iter_child_nodes(node))
    return False


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
