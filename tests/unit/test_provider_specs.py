"""The provider registry: every spec names a client and an emulator plugin that exist, its folder holds
what the rest of the code reads of it, and the code outside the folders names no provider's rules."""

from __future__ import annotations

import importlib

import pytest

from batchdrop.local.emulator import Plugin, ProviderEmulator
from batchdrop.providers import SPECS
from batchdrop.providers.base import Provider


def resolve(path: str) -> type:
    module, _, name = path.partition(":")
    found = getattr(importlib.import_module(module), name)
    assert isinstance(found, type), path
    return found


@pytest.mark.parametrize("name", list(SPECS))
def test_each_spec_names_a_client_and_an_emulator_plugin(name: str) -> None:
    spec = SPECS[name]
    assert spec.name == name
    client = resolve(spec.client)
    methods = [name for name in vars(Provider) if not name.startswith("_") and callable(vars(Provider)[name])]
    assert methods
    assert all(callable(getattr(client, method, None)) for method in methods)
    assert issubclass(resolve(spec.emulator), Plugin)
    assert spec.maxima.max_requests >= spec.defaults.max_requests
    assert spec.maxima.max_bytes >= spec.defaults.max_bytes


def test_the_emulator_installs_each_specs_plugin_once() -> None:
    emulator = ProviderEmulator()
    installed = [type(plugin) for plugin in emulator.plugins]
    assert installed == list(dict.fromkeys(resolve(spec.emulator) for spec in SPECS.values()))
    for spec in SPECS.values():
        plugin = resolve(spec.emulator)
        assert isinstance(getattr(emulator, plugin.provider), plugin)  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        _ = emulator.no_such_provider
