"""A manifest on the user's disk and the files it names, which are read relative to its folder: the
manifest's `data: data/tickets.csv` is both the key in the bucket and `<manifest's folder>/data/tickets.csv`
here. `batchdrop validate` reads them in place; `batchdrop local run` and `batchdrop submit` upload them
to those keys before the manifest, so the manifest never lands before its data."""

from __future__ import annotations

import os

from batchdrop.tables import manifest as mf
from batchdrop.tables.sources import LocalObjects


def folder_of(manifest_path: str) -> str:
    return os.path.dirname(os.path.abspath(manifest_path))


def companions(manifest_path: str) -> list[tuple[str, str]]:
    """(local path, key) of every file the manifest names; ManifestError says which is missing."""
    with open(manifest_path, "rb") as f:
        manifest = mf.parse(f.read(), manifest_path)
    base = folder_of(manifest_path)
    local = LocalObjects(base)
    names = [manifest.data] if isinstance(manifest.data, str) else list(manifest.data)
    found: list[tuple[str, str]] = []
    for name in names:
        if name.endswith("/"):
            under = local.list(name)
            if not under:
                raise mf.ManifestError(
                    f'{manifest_path}: "data" {name!r} names a folder; no files found in {os.path.join(base, name)}'
                )
            found += [(os.path.join(base, *o.key.split("/")), o.key) for o in under]
        elif local.head(name) is None:
            raise mf.ManifestError(
                f'{manifest_path}: "data" {name!r} is read next to the manifest, and there is no '
                f"{os.path.join(base, *name.split('/'))}"
            )
        else:
            found.append((os.path.join(base, *name.split("/")), name))
    if manifest.template is not None:
        if local.head(manifest.template) is None:
            raise mf.ManifestError(
                f'{manifest_path}: "template" {manifest.template!r} is read next to the manifest, and there is no '
                f"{os.path.join(base, *manifest.template.split('/'))}"
            )
        found.append((os.path.join(base, *manifest.template.split("/")), manifest.template))
    return found
