"""The static check of a source tree against its event declarations (``events check``).

``scan`` (from ``app.core._source``) reads the tree without importing it; ``check`` then
compares what was found with what was declared and with what start-up imports, and says, for
each problem, where it is and how to fix it.
"""

from __future__ import annotations

from collections.abc import Iterator

from app.core._checks import GENERATOR_FUNCTION, NO_VAR_KEYWORD, positional_only_problem
from app.core._describe import plural
from app.core._durable import json_friendly
from app.core._names import name_problem, rename_hint
from app.core._source import (
    REGISTRY_MODULES,
    REGISTRY_PACKAGE,
    Declaration,
    EmitSite,
    HandlerSite,
    Problem,
    Scan,
    Signature,
    Site,
    scan,
)
from app.core.catalogue import did_you_mean, parameter_problems

__all__ = [
    "REGISTRY_MODULES",
    "REGISTRY_PACKAGE",
    "Declaration",
    "EmitSite",
    "HandlerSite",
    "Problem",
    "Scan",
    "Signature",
    "Site",
    "check",
    "scan",
]

_DECLARE_IT = "declare the event with declare() in the events module of the package that emits it"


def check(found: Scan) -> list[Problem]:
    """Return every problem of ``found``, in file order: what the scan could not read, each
    mismatch between the declarations and the emit sites and handlers, each handler that
    cannot be registered or that start-up never registers, and each declaration that start-up
    never runs."""
    problems = list(found.problems)
    declared: dict[str, Declaration] = {}
    startup = set(found.startup)
    for declaration in found.declarations:
        problem = name_problem(declaration.name)
        if problem is not None:
            problems.append(
                Problem(
                    declaration.site, f"declare() of {problem}. {rename_hint(declaration.name)}"
                )
            )
            continue
        if declaration.module not in startup:
            problems.append(
                Problem(
                    declaration.site,
                    f"{declaration.name!r} is declared in a module start-up never imports, so "
                    "emit would raise UnknownEventError: "
                    f"{found.never_imported(declaration.module)}",
                )
            )
        earlier = declared.setdefault(declaration.name, declaration)
        if earlier is not declaration and earlier.contract() != declaration.contract():
            problems.append(
                Problem(
                    declaration.site,
                    f"{declaration.name!r} is declared differently at {earlier.site}. Declare it "
                    "once, in the events module of the package that emits it.",
                )
            )
    names = list(declared)
    emitted = set()
    for emit_site in found.emits:
        if emit_site.name is not None:
            emitted.add(emit_site.name)
        problems.extend(_emit_problems(emit_site, declared, names))
    durable_ids: dict[str, HandlerSite] = {}
    for handler in found.handlers:
        problems.extend(_handler_problems(handler, declared, names))
        if handler.durable:
            problems.extend(_durable_problems(handler, declared, durable_ids))
        if handler.at_import and handler.module not in startup:
            problems.append(
                Problem(
                    handler.site,
                    f"handler {handler.label} never registers: "
                    f"{found.never_imported(handler.module)}",
                )
            )
    problems.extend(
        Problem(
            d.site,
            f"{d.name!r} is declared but nothing emits it. Emit it (with emit or "
            "BackgroundEmitter.emit_soon), or remove the declaration.",
        )
        for d in declared.values()
        if d.name not in emitted
    )
    return sorted(problems, key=lambda p: p.site)


def _emit_problems(
    emit_site: EmitSite, declared: dict[str, Declaration], names: list[str]
) -> Iterator[Problem]:
    name = emit_site.name
    site = emit_site.site
    what = emit_site.function
    if name is None:
        yield Problem(
            site,
            f"{what} with a name that is not a string literal, which the scan cannot check. "
            "Write the event name as a string literal.",
        )
        return
    declaration = _declaration_of(name, f"{what} of", site, declared, names)
    if isinstance(declaration, Problem):
        yield declaration
        return
    allowed = {**declaration.payload, **declaration.optional}
    missing = [f for f in declaration.payload if f not in emit_site.fields]
    unexpected = [f for f in emit_site.fields if f not in allowed]
    if missing and not emit_site.spreads_mapping:
        yield Problem(
            site,
            f"{what} of {name!r} is missing the required "
            f"{plural(len(missing), 'field', count=False)} {', '.join(missing)}. Pass "
            f"{_them(missing)}, or make {_them(missing)} optional at {declaration.site}.",
        )
    if unexpected:
        yield Problem(
            site,
            f"{what} of {name!r} passes the undeclared "
            f"{plural(len(unexpected), 'field', count=False)} {', '.join(unexpected)}. Remove "
            f"{_them(unexpected)}, or declare {_them(unexpected)} at {declaration.site}.",
        )


def _handler_problems(
    handler: HandlerSite, declared: dict[str, Declaration], names: list[str]
) -> Iterator[Problem]:
    name = handler.name
    site = handler.site
    if handler.signature is not None:
        problem = _signature_problem(handler.signature)
        if problem is not None:
            yield Problem(site, f"handler {handler.label} cannot be registered: {problem}")
    if name is None:
        yield Problem(
            site,
            f"handler {handler.label} is registered with a name that is not a string literal, "
            "which the scan cannot check. Write the event name as a string literal.",
        )
        return
    declaration = _declaration_of(
        name, f"handler {handler.label} is registered for", site, declared, names
    )
    if isinstance(declaration, Problem):
        yield declaration
        return
    parameters = handler.signature.parameters if handler.signature is not None else {}
    for problem in parameter_problems(name, parameters, declaration.payload, declaration.optional):
        yield Problem(site, f"handler {handler.label} {problem}.")


def _durable_problems(
    handler: HandlerSite, declared: dict[str, Declaration], ids: dict[str, HandlerSite]
) -> Iterator[Problem]:
    """A durable handler without a literal id, with an id an earlier one has, or of an event
    whose declared fields are not all of JSON types."""
    site = handler.site
    if handler.durable_id is None:
        yield Problem(
            site,
            f"durable handler {handler.label} has no literal id=. Give it a stable id as a "
            'string literal (id="package.what"): its queued jobs name it.',
        )
    else:
        first = ids.setdefault(handler.durable_id, handler)
        if first is not handler:
            yield Problem(
                site,
                f"durable handler {handler.label} has id={handler.durable_id!r}, which "
                f"{first.label} ({first.site}) has too. Give each durable handler its own id: "
                "its queued jobs name it.",
            )
    declaration = declared.get(handler.name or "")
    if declaration is None:
        return
    fields = {**declaration.payload, **declaration.optional}
    unfriendly = [f"{name}: {kind}" for name, kind in fields.items() if not json_friendly(kind)]
    if unfriendly:
        yield Problem(
            site,
            f"durable handler {handler.label} handles {handler.name!r}, whose "
            f"{plural(len(unfriendly), 'field', count=False)} {', '.join(unfriendly)} "
            f"({declaration.site}) {'is' if len(unfriendly) == 1 else 'are'} not of a JSON "
            "type. Its jobs carry the payload as JSON: declare int, float, str, bool, None, "
            "list, dict or Any (or unions of them), or make the handler in-process.",
        )


def _signature_problem(signature: Signature) -> str | None:
    """What ``on`` would refuse about a handler defined this way (see ``app.core._checks``)."""
    if signature.generator:
        return GENERATOR_FUNCTION
    if not signature.var_keyword:
        return NO_VAR_KEYWORD
    if signature.required_positional_only:
        return positional_only_problem(signature.required_positional_only)
    return None


def _declaration_of(
    name: str, what: str, site: Site, declared: dict[str, Declaration], names: list[str]
) -> Declaration | Problem:
    problem = name_problem(name)
    if problem is not None:
        return Problem(site, f"{what} {problem}. {rename_hint(name)}")
    declaration = declared.get(name)
    if declaration is not None:
        return declaration
    hint = did_you_mean(name, names)
    return Problem(
        site,
        f"{what} {name!r}, which is not declared{f' ({hint})' if hint else ''}. Fix the name, "
        f"or {_DECLARE_IT}.",
    )


def _them(names: list[str]) -> str:
    return "it" if len(names) == 1 else "them"
