"""Named components with parameters: one syntax for flags, config files and the audit.

A component spec is ``NAME`` or ``NAME:key=value,key=value``. ``NAME`` is a
registered name (``krum``, ``scaled``) or an import path
``package.module:factory`` (``mypkg.attacks:my_attack``; a name followed by
``:word`` with no ``=`` is read as an import path), whose factory is
called with the parameters, exactly like a registered one. Values parse as
JSON literals where they can (``3``, ``-4.0``, ``true``, ``"x"``) and stay
strings otherwise (``attack=sign_flip``). Examples::

    --aggregation krum:f=3
    --attack scaled:factor=-4
    --attack cheat_sometimes:attack=sign_flip,q=0.3
    --verification mypkg.schemes:round_robin:period=4

The run's config records the canonical spec text, the signed genesis binds
it, and ``pot-jax audit`` rebuilds the same component from it (a plugin
module must be importable where the audit runs). Each kind of component has
one ``Registry``; ``register_*`` functions add to them (for example
``pot_jax.attacks.register_attack``).
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ComponentSpec", "Registry", "import_paths", "parse_spec"]


@dataclass(frozen=True)
class ComponentSpec:
    """A component's name (or import path) and its parameters, in the order given."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def is_import_path(self) -> bool:
        return ":" in self.name

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    def __str__(self) -> str:
        if not self.params:
            return self.name
        text = ",".join(f"{k}={_format(v)}" for k, v in self.params)
        return f"{self.name}:{text}"


def _format(value: Any) -> str:
    if isinstance(value, str) and _parse_value(value) == value and "," not in value:
        return value
    return json.dumps(value)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_spec(text: str, *, flag: str = "component") -> ComponentSpec:
    """``NAME[:k=v,...]`` or ``pkg.module:attr[:k=v,...]``; raises ValueError naming ``flag``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{flag} {text!r}: expected NAME or NAME:key=value,...")
    text = text.strip()
    head, _, rest = text.partition(":")
    first = rest.partition(":")[0]
    if "." in head or (rest and "=" not in first):  # module:attribute, then the parameters
        attr, _, rest = rest.partition(":")
        if not attr.isidentifier() or not all(p.isidentifier() for p in head.split(".")):
            raise ValueError(
                f"{flag} {text!r}: an import path is package.module:factory, then :key=value,..."
            )
        name = f"{head}:{attr}"
    else:
        name = head
        if not name.isidentifier():
            raise ValueError(f"{flag} {text!r}: {name!r} is not a component name")
    params = []
    for item in (p for p in rest.split(",") if p.strip()) if rest else ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"{flag} {text!r}: parameter {item!r} is not key=value")
        if key in dict(params):
            raise ValueError(f"{flag} {text!r}: parameter {key!r} is given twice")
        params.append((key, _parse_value(value.strip())))
    return ComponentSpec(name, tuple(params))


def import_paths(text: str) -> list[str]:
    """The ``package.module:factory`` names in a spec (``+``-joined parts included).

    Building such a component imports that module and calls that factory with
    the spec's parameters, so whoever wrote the spec chooses the code that runs:
    an auditor checks this list before building anything from an untrusted run.
    """
    out = []
    for part in str(text).split("+"):
        try:
            spec = parse_spec(part)
        except ValueError:
            continue  # not buildable at all; the config check says why
        if spec.is_import_path:
            out.append(spec.name)
    return out


class Registry:
    """The components of one kind: registered names, or factories by import path."""

    def __init__(self, kind: str, factories: dict[str, Callable[..., Any]]):
        self.kind = kind
        self._factories = factories  # shared with the module that owns the built-ins

    def register(self, name: str, factory: Callable[..., Any], *, replace: bool = False) -> None:
        """Make ``factory`` available as ``name`` (flags, config files, the audit)."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"a {self.kind} name must be an identifier, got {name!r}")
        if not callable(factory):
            raise ValueError(f"the {self.kind} {name!r} needs a callable factory")
        if name in self._factories and not replace:
            raise ValueError(f"a {self.kind} named {name!r} is already registered")
        self._factories[name] = factory

    def names(self) -> tuple[str, ...]:
        return tuple(self._factories)

    def factory(self, spec: ComponentSpec, *, flag: str) -> Callable[..., Any]:
        if spec.is_import_path:
            module_name, attr = spec.name.split(":")
            try:
                module = importlib.import_module(module_name)
                factory = getattr(module, attr)
            except (ImportError, AttributeError) as err:
                raise ValueError(f"{flag} {spec.name!r}: cannot import it ({err})") from None
            if not callable(factory):
                raise ValueError(f"{flag} {spec.name!r} is not a callable factory")
            return factory
        try:
            return self._factories[spec.name]
        except KeyError:
            raise ValueError(
                f"{flag} {spec.name!r}: unknown {self.kind}; expected one of "
                f"{', '.join(self._factories)} or an import path package.module:factory"
            ) from None

    def accepts(self, text: str, keyword: str, *, flag: str) -> bool:
        """Whether the factory ``text`` names takes ``keyword`` (one taking ``**kwargs`` does)."""
        accepted = _parameters(self.factory(parse_spec(text, flag=flag), flag=flag))
        return accepted is None or keyword in accepted

    def check(self, text: str, *, flag: str, extra: Mapping[str, Any] | None = None) -> str:
        """Validate ``text`` without building; return its canonical spec text."""
        spec = parse_spec(text, flag=flag)
        factory = self.factory(spec, flag=flag)
        _check_params(factory, spec, flag, set(extra or ()))
        return str(spec)

    def build(self, text: str, *, flag: str, **extra: Any) -> Any:
        """The component ``text`` names, built with its parameters.

        ``extra`` are run-level arguments (a scheme's budget, the rule it pairs
        with); each is passed only if the factory accepts it.
        """
        spec = parse_spec(text, flag=flag)
        factory = self.factory(spec, flag=flag)
        _check_params(factory, spec, flag, set(extra))
        accepted = _parameters(factory)
        passed = {k: v for k, v in extra.items() if accepted is None or k in accepted}
        try:
            return factory(**passed, **spec.kwargs)
        except TypeError as err:
            raise ValueError(f"{flag} {text!r}: {err}") from None


def _parameters(factory) -> set[str] | None:
    """The keyword names a factory takes; None when it takes any (``**kwargs``)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return None
    return set(signature.parameters)


def _check_params(factory, spec: ComponentSpec, flag: str, extra: set[str]) -> None:
    accepted = _parameters(factory)
    if accepted is None:
        return
    takes = ", ".join(sorted(accepted - extra)) or "no parameters"
    for key, _ in spec.params:
        if key not in accepted or key in extra:
            raise ValueError(
                f"{flag} {spec}: {spec.name} has no parameter {key!r}; it takes {takes}"
            )
    signature = inspect.signature(factory)
    for key, parameter in signature.parameters.items():
        required = parameter.default is inspect.Parameter.empty and parameter.kind in (
            inspect.Parameter.KEYWORD_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        )
        if required and key not in spec.kwargs and key not in extra:
            raise ValueError(
                f"{flag} {spec}: {spec.name} needs parameter {key!r} ({spec.name}:{key}=...)"
            )
