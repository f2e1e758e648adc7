"""Mixers from other packages: the `ssmbench.mixers` entry-point group, loaded on first use.

A plugin distribution declares, in its pyproject.toml,

    [project.entry-points."ssmbench.mixers"]
    lru = "ssmbench_lru"

and its module registers the mixer with `model_zoo.layers.register_mixer("lru", ...)` when it is
imported. The registry asks here only when a name is not one of its own (`load_mixer`), so
`import model_zoo` never imports third-party code, and a broken plugin only breaks its own name.
Checkpoints record which distribution and version a plugin mixer came from (`plugin_of`), so that
loading one where the plugin is missing names what to install instead of "unknown architecture".
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from model_zoo.errors import ZooError

GROUP = "ssmbench.mixers"
BUILTIN_PACKAGE = "model_zoo."  # mixers defined here are built in, whatever a plugin declares


@dataclass(frozen=True)
class Plugin:
    """Where a mixer came from: the installed distribution that declared its entry point."""

    distribution: str
    version: str

    def to_dict(self) -> dict[str, str]:
        return {"distribution": self.distribution, "version": self.version}


def _entry_point(name: str) -> EntryPoint | None:
    found = [point for point in entry_points(group=GROUP) if point.name == name]
    if len(found) > 1:
        owners = ", ".join(sorted(point.dist.name for point in found if point.dist is not None))
        raise ZooError(f"mixer {name!r} is declared by several installed plugins ({owners}); uninstall all but one")
    return found[0] if found else None


def available() -> list[str]:
    """The mixer names that installed plugins declare (not imported yet)."""
    return sorted({point.name for point in entry_points(group=GROUP)})


def load_mixer(name: str) -> bool:
    """Import the plugin that declares mixer `name`; False when no installed plugin declares it.

    Importing registers the mixer (the plugin's module uses the register_mixer decorator); a
    plugin that fails to import, or imports without registering `name`, is a one-line ZooError.
    """
    from model_zoo.layers.base import MIXERS  # the registry calls us; import here, not at module level

    point = _entry_point(name)
    if point is None:
        return False
    owner = point.dist.name if point.dist is not None else point.value
    try:
        point.load()
    except Exception as exc:  # third-party code: whatever it raises is its failure, reported in one line
        raise ZooError(f"the mixer plugin {owner} failed to import {point.value} ({type(exc).__name__}: {exc})") from None
    if name not in MIXERS:
        raise ZooError(f"the mixer plugin {owner} declares {name!r} but importing {point.value} did not register it "
                       "(decorate the mixer class with model_zoo.layers.register_mixer)")
    return True


def plugin_of(name: str) -> Plugin | None:
    """The distribution (name, version) that provides mixer `name`, or None for a built-in one."""
    from model_zoo.layers.base import MIXERS

    spec = MIXERS[name] if name in MIXERS else None
    if spec is not None and spec.cls.__module__.startswith(BUILTIN_PACKAGE):
        return None
    point = _entry_point(name)
    if point is None or point.dist is None:
        return None
    return Plugin(point.dist.name, point.dist.version)
