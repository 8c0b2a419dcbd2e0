"""The public API: every advertised name resolves, and importing the package stays cheap."""

import subprocess
import sys

import comfyfleet


def test_every_public_name_resolves_to_the_object_it_names() -> None:
    from comfyfleet.preflight import check_manifest
    from comfyfleet.provisioning import provision
    from comfyfleet.verification import verify

    for name in comfyfleet.__all__:
        assert getattr(comfyfleet, name) is not None, name
    assert comfyfleet.check is check_manifest
    assert comfyfleet.provision is provision
    assert comfyfleet.verify is verify
    assert issubclass(comfyfleet.NotFound, comfyfleet.ComfyfleetError)


def test_importing_the_package_loads_no_heavy_dependency() -> None:
    heavy = "('aiohttp', 'asyncssh', 'pydantic', 'rich')"
    code = f"import sys, comfyfleet; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_names_raise_attribute_error() -> None:
    try:
        comfyfleet.not_a_name  # noqa: B018
    except AttributeError as exc:
        assert "not_a_name" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_every_public_name_is_documented_in_the_readme() -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("\n## Public API\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", section))
    missing = sorted(set(comfyfleet.__all__) - documented)
    assert missing == [], f"README's Public API section does not list {missing}"
