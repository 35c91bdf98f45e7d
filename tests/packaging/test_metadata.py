"""Package metadata: one shared version, exact pins, licenses, declared == imported dependencies,
and the contents of every wheel and sdist that `uv build --all-packages` makes."""

from __future__ import annotations

import ast
import email
import email.message
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path
from typing import Any

import pytest

from msgbus_testkit.distributions import PACKAGES, ROOT, VERSION, Dist, uv

HOME = "https://github.com/msgbus-py/msgbus"
LICENSES = ("LICENSE-MIT", "LICENSE-APACHE")
MEMBER_MODULES = {
    "msgbus_core": "msgbus-core",
    "msgbus_proto": "msgbus-proto",
    "msgbus": "msgbus-proto",  # the generated msgbus.v1 package ships in msgbus-proto
    "msgbus_store_sqlite": "msgbus-store-sqlite",
    "msgbus_store_duckdb": "msgbus-store-duckdb",
    "msgbus_store_postgres": "msgbus-store-postgres",
    "msgbus_server": "msgbus-server",
    "msgbus_sdk": "msgbus-sdk",
}
OPTIONAL_MODULES = {
    # module path inside the package -> the extra that provides what it imports
    "src/msgbus_core/testing.py": "testing",
    # the conformance tests of idempotency keys, cursors and FIFO leases, part of the same suite
    "src/msgbus_core/publish_key_testing.py": "testing",
    "src/msgbus_core/cursor_testing.py": "testing",
    "src/msgbus_core/fifo_lease_testing.py": "testing",
    "src/msgbus_sdk/_top.py": "top",  # msgbus top draws with rich
}
DECLARED_NOT_IMPORTED = {
    # The default store is found through the msgbus.stores entry point, never imported, and is a
    # hard dependency so that `pip install msgbus-server` runs `msgbusd` with its defaults.
    "msgbus-server": {"msgbus-store-sqlite"},
}
TOP_LEVEL = {
    "msgbus-core": {"msgbus_core"},
    "msgbus-proto": {"msgbus_proto", "msgbus"},
    "msgbus-store-sqlite": {"msgbus_store_sqlite"},
    "msgbus-store-duckdb": {"msgbus_store_duckdb"},
    "msgbus-store-postgres": {"msgbus_store_postgres"},
    "msgbus-server": {"msgbus_server"},
    "msgbus-sdk": {"msgbus_sdk"},
}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return normalize(match.group(0))


def pyproject(package: str) -> dict[str, Any]:
    with (ROOT / "packages" / package / "pyproject.toml").open("rb") as file:
        project: dict[str, Any] = tomllib.load(file)["project"]
        return project


def wheel_metadata(dist: Dist, package: str) -> email.message.Message:
    with zipfile.ZipFile(dist.wheel(package)) as wheel:
        name = f"{package.replace('-', '_')}-{VERSION}.dist-info/METADATA"
        return email.message_from_bytes(wheel.read(name))


# -- one version ---------------------------------------------------------------------------------


def test_version_file_is_a_plain_pep440_version() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?", VERSION)


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_has_the_shared_version_and_pins_members_exactly(package: str) -> None:
    project = pyproject(package)
    assert project["name"] == package
    assert project["version"] == VERSION
    requirements = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    for requirement in requirements:
        if requirement_name(requirement) in PACKAGES:
            assert requirement == f"{requirement_name(requirement)}=={VERSION}", requirement


def test_set_version_check_reports_no_drift() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "set-version.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_sdk_dunder_version_matches() -> None:
    import msgbus_sdk

    assert msgbus_sdk.__version__ == VERSION


# -- metadata and dependencies -------------------------------------------------------------------


@pytest.mark.parametrize("package", PACKAGES)
def test_wheel_metadata_is_complete(dist: Dist, package: str) -> None:
    meta = wheel_metadata(dist, package)
    assert meta["Name"] == package
    assert meta["Version"] == VERSION
    assert meta["License-Expression"] == "MIT OR Apache-2.0"
    assert sorted(meta.get_all("License-File") or []) == sorted(LICENSES)
    assert meta["Requires-Python"] == ">=3.11"
    assert meta["Summary"]
    assert meta["Description-Content-Type"] == "text/markdown"
    classifiers = meta.get_all("Classifier") or []
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Typing :: Typed" in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")], "use License-Expression"
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL") or [])
    assert urls["Homepage"] == HOME
    assert all(url.startswith(HOME) for url in urls.values()), urls
    assert {"Source", "Issues", "Changelog", "Documentation"} <= set(urls)


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def _distribution_of(module: str) -> str | None:
    """The distribution that provides `module`, None for the standard library."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names:
        return None
    if top in MEMBER_MODULES:
        return MEMBER_MODULES[top]
    if module.startswith("google.protobuf"):
        return "protobuf"
    providers = packages_distributions().get(top)
    assert providers, f"no installed distribution provides {module}"
    return normalize(providers[0])


@pytest.mark.parametrize("package", PACKAGES)
def test_declared_dependencies_are_exactly_the_imported_ones(package: str) -> None:
    """Every shipped module's imports are declared, and nothing is declared that nothing imports
    (except `DECLARED_NOT_IMPORTED`). Imports of optional modules belong to their extra."""
    root = ROOT / "packages" / package
    required: set[str] = set()
    by_extra: dict[str, set[str]] = {}
    sources = [root / "src"] + ([root / "generated"] if (root / "generated").is_dir() else [])
    for source in sources:
        for path in source.rglob("*.py"):
            relative = path.relative_to(root).as_posix()
            found = {_distribution_of(module) for module in _imports(path)}
            needs = {d for d in found if d is not None and d != package}
            extra = OPTIONAL_MODULES.get(relative)
            (by_extra.setdefault(extra, set()) if extra else required).update(needs)

    project = pyproject(package)
    declared = {requirement_name(r) for r in project.get("dependencies", [])}
    assert declared == required | DECLARED_NOT_IMPORTED.get(package, set())
    extras = project.get("optional-dependencies", {})
    for extra, needs in by_extra.items():
        assert needs - required <= {requirement_name(r) for r in extras[extra]}, extra


def test_server_extras_select_the_store() -> None:
    extras = pyproject("msgbus-server")["optional-dependencies"]
    assert extras == {
        "sqlite": [f"msgbus-store-sqlite=={VERSION}"],
        "duckdb": [f"msgbus-store-duckdb=={VERSION}"],
        "postgres": [f"msgbus-store-postgres=={VERSION}"],
    }
    assert f"msgbus-store-sqlite=={VERSION}" in pyproject("msgbus-server")["dependencies"]


# -- files in the distributions ------------------------------------------------------------------


@pytest.mark.parametrize("package", PACKAGES)
def test_license_copies_match_the_root(package: str) -> None:
    for name in LICENSES:
        assert (ROOT / "packages" / package / name).read_bytes() == (ROOT / name).read_bytes()


@pytest.mark.parametrize("package", PACKAGES)
def test_wheel_holds_its_own_modules_and_the_licenses(dist: Dist, package: str) -> None:
    with zipfile.ZipFile(dist.wheel(package)) as wheel:
        names = wheel.namelist()
        info = f"{package.replace('-', '_')}-{VERSION}.dist-info"
        top = {n.split("/")[0] for n in names if not n.startswith(info)}
        assert top == TOP_LEVEL[package]
        for name in LICENSES:
            assert wheel.read(f"{info}/licenses/{name}") == (ROOT / name).read_bytes()
        assert not [n for n in names if "/tests/" in n or n.endswith((".pyc", ".sqlite"))]
        py_typed = [n for n in names if n.endswith("py.typed")]
        assert {n.split("/")[0] for n in py_typed} == TOP_LEVEL[package]


@pytest.mark.parametrize("package", PACKAGES)
def test_sdist_holds_licenses_readme_and_sources(dist: Dist, package: str) -> None:
    prefix = f"{package.replace('-', '_')}-{VERSION}"
    with tarfile.open(dist.sdist(package)) as sdist:
        names = set(sdist.getnames())
        for name in (*LICENSES, "README.md", "pyproject.toml", "PKG-INFO"):
            assert f"{prefix}/{name}" in names
        for module in TOP_LEVEL[package] - {"msgbus"}:
            assert f"{prefix}/src/{module}/__init__.py" in names


def test_sdist_builds_a_wheel_outside_the_workspace(dist: Dist, tmp_path: Path) -> None:
    """`uv build` makes every wheel from its sdist already; this builds the server's sdist again
    from a directory that has no workspace around it at all."""
    out = tmp_path / "out"
    uv("build", "--wheel", str(dist.sdist("msgbus-server")), "--out-dir", str(out), cwd=tmp_path)
    (wheel,) = out.glob("*.whl")
    assert wheel.name == f"msgbus_server-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as built, zipfile.ZipFile(dist.wheel("msgbus-server")) as first:
        assert sorted(built.namelist()) == sorted(first.namelist())


# -- changelog -----------------------------------------------------------------------------------


def test_changelog_has_an_entry_for_this_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(rf"^## \[{re.escape(VERSION)}\] - \d{{4}}-\d{{2}}-\d{{2}}$", changelog, re.M)
    assert "## [Unreleased]" in changelog
