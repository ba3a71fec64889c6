"""The settings a process runs with: a frozen snapshot of the environment, read once.

The names, types and defaults are declared in :mod:`acestep.setting_table` (the model is vLLM's
``envs.py``). A process reads the environment once into a :class:`Settings` snapshot
(:func:`current`) and passes it down; a process that changes its own environment first (``.env``,
the CLI flags) calls :func:`reload`. No other module reads ``os.environ``. A read site takes a
setting's default and parse from the table (:func:`value`), never a literal of its own.
``python -m acestep.settings --markdown > docs/configuration.md`` writes the page.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from acestep.setting_table import (  # re-exported: the callers' one import for settings
    DECLARED,
    FALSE_WORDS,
    GROUPS,
    REGISTRY,
    SECRET_SETTINGS,
    TRUE_WORDS,
    Setting,
    markdown,
    parse_bool_setting,
)

__all__ = [
    "DECLARED",
    "FALSE_WORDS",
    "GROUPS",
    "REGISTRY",
    "SECRET_SETTINGS",
    "TRUE_WORDS",
    "Setting",
    "Settings",
    "UndeclaredSetting",
    "cache_dir",
    "checkpoints_dir",
    "child_environment",
    "current",
    "device",
    "dit_name",
    "lora_dir",
    "markdown",
    "parse_bool_setting",
    "project_root",
    "read",
    "reload",
    "set_unset",
    "value",
]


class UndeclaredSetting(KeyError):
    """A name read from a snapshot that the registry does not declare (a bug, not a user error)."""


class Settings(Mapping[str, str]):
    """A frozen snapshot: the raw text of every declared setting that was set. It is a
    ``Mapping[str, str]``, so a function taking ``env`` takes a snapshot or a plain dict alike."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str]):
        object.__setattr__(self, "_values", dict(values))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Settings is frozen; build a new one with read()")

    def __getitem__(self, name: str) -> str:
        if name not in DECLARED:
            raise UndeclaredSetting(f"{name} is not declared in acestep/setting_table.py")
        return self._values[name]

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        if name not in DECLARED:
            raise UndeclaredSetting(f"{name} is not declared in acestep/setting_table.py")
        return self._values.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        shown = {k: ("***" if DECLARED[k].secret else v) for k, v in self._values.items()}
        return f"Settings({shown})"

    def value(self, name: str) -> Any:
        """The parsed value (the registry's rule), with a message naming the setting when bad."""
        return value(self, name)


def value(env: Mapping[str, str], name: str) -> Any:
    """``name``'s value in ``env`` (a snapshot or a plain mapping) by the registry's default,
    minimum and parse: the one way a read site turns a setting's text into its value."""
    if name not in DECLARED:
        raise UndeclaredSetting(f"{name} is not declared in acestep/setting_table.py")
    return DECLARED[name].parse(env.get(name))


def read(env: Mapping[str, str]) -> Settings:
    """The declared settings found in ``env`` (undeclared names are left out)."""
    return Settings({name: env[name] for name in DECLARED if name in env})


_current: Settings | None = None


def current() -> Settings:
    """This process's settings, read from the environment once."""
    global _current
    if _current is None:
        _current = read(os.environ)
    return _current


def reload() -> Settings:
    """Read the environment again: for a process that has just changed its own (``.env``, flags)."""
    global _current
    _current = read(os.environ)
    return _current


def child_environment(
    extra: Mapping[str, str] | None = None, keep: Callable[[str], bool] | None = None
) -> dict[str, str]:
    """The environment for a child process: ours (all names, PATH included; only those ``keep``
    accepts when given) with ``extra`` on top, and the secret settings removed."""
    inherited = {k: v for k, v in os.environ.items() if keep is None or keep(k)}
    return {k: v for k, v in (inherited | dict(extra or {})).items() if k not in SECRET_SETTINGS}


def set_unset(values: Mapping[str, str]) -> list[str]:
    """Write each of ``values`` into the environment where the name is not set yet (a ``.env``
    never overrides the real environment), then read the settings again; returns the names set."""
    added = [name for name in values if name not in os.environ]
    os.environ.update({name: values[name] for name in added})
    reload()
    return added


def _project_folder(env: Mapping[str, str], variable: str, name: str) -> Path:
    """``$variable``, else ``$ACESTEP_PROJECT_ROOT/<name>``, else ``./<name>``."""
    explicit = env.get(variable)
    if explicit:
        return Path(explicit).expanduser()
    return project_root(env) / name


def project_root(env: Mapping[str, str] | None = None) -> Path:
    """``ACESTEP_PROJECT_ROOT``, else the working directory."""
    root = (current() if env is None else env).get("ACESTEP_PROJECT_ROOT")
    return Path(root).expanduser() if root else Path.cwd()


def checkpoints_dir(env: Mapping[str, str] | None = None) -> Path:
    """``ACESTEP_CHECKPOINTS_DIR``, else ``$ACESTEP_PROJECT_ROOT/checkpoints``, else ``./checkpoints``."""
    return _project_folder(current() if env is None else env, "ACESTEP_CHECKPOINTS_DIR", "checkpoints")


def lora_dir(env: Mapping[str, str] | None = None) -> Path:
    """``ACESTEP_LORA_DIR``, else ``$ACESTEP_PROJECT_ROOT/loras``, else ``./loras``."""
    return _project_folder(current() if env is None else env, "ACESTEP_LORA_DIR", "loras")


def training_dir(env: Mapping[str, str] | None = None) -> Path:
    """``ACESTEP_TRAINING_DIR``, else ``$ACESTEP_PROJECT_ROOT/training_data``, else ``./training_data``."""
    return _project_folder(current() if env is None else env, "ACESTEP_TRAINING_DIR", "training_data")


def dit_name(env: Mapping[str, str] | None = None) -> str | None:
    """``ACESTEP_CONFIG_PATH`` names the DiT folder (e.g. ``acestep-v15-base``)."""
    return (current() if env is None else env).get("ACESTEP_CONFIG_PATH") or None


def device(env: Mapping[str, str] | None = None) -> str:
    return value(current() if env is None else env, "ACESTEP_DEVICE")


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = current() if env is None else env
    base = env.get("ACESTEP_CACHE_DIR") or env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "acestep"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        raise SystemExit("usage: python -m acestep.settings --markdown > docs/configuration.md")
    sys.stdout.write(markdown())
