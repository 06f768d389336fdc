"""The API reference is generated from the docstrings (`make python-docs`): every public name
and every public method has one, so the reference has no blank entries."""

from __future__ import annotations

import inspect

import kappa


def test_every_public_name_and_method_is_documented() -> None:
    missing = []
    for name in kappa.__all__:
        item = getattr(kappa, name)
        if not inspect.getdoc(item):
            missing.append(name)
        if inspect.isclass(item):
            for attribute, member in vars(item).items():
                if attribute.startswith("_") or not callable(member):
                    continue
                if not (member.__doc__ or "").strip():
                    missing.append(f"{name}.{attribute}")
    assert not missing, f"undocumented: {missing}"
