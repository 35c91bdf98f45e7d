#!/usr/bin/env python3
"""Keep the six msgbus packages on ONE version: the root `VERSION` file.

    python scripts/set-version.py 0.2.0   # write VERSION, then update every package
    python scripts/set-version.py         # re-apply VERSION (after editing it by hand)
    python scripts/set-version.py --check # exit 1 and list what is out of date; change nothing

For each `packages/*/pyproject.toml` it rewrites:
  - `[project] version`;
  - every dependency on another workspace member (in `dependencies` and in every
    `optional-dependencies` extra) to an exact pin, `msgbus-core==<VERSION>`: the packages are
    released together and only tested together;
and it rewrites `__version__ = "..."` in each package's top-level `__init__.py` when there is one,
and copies the root LICENSE-MIT and LICENSE-APACHE into each package (a wheel and an sdist can only
carry license files from inside the package's own directory).

Edits are textual and minimal (only the version strings change), so comments and layout stay.
Standard library only: it runs with any Python >= 3.11, before `uv sync`. Run `uv lock` afterwards.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VERSION_FILE = ROOT / "VERSION"
LICENSE_FILES = ("LICENSE-MIT", "LICENSE-APACHE")

# PEP 440 public versions (the canonical form is what we publish): 1.2.3, 1.2.3rc1, 1.2.3.post1 ...
_PEP440 = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?$")
# A PEP 508 requirement, split just enough to replace its version specifier.
_REQUIREMENT = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?P<extras>\[[^\]]*\])?\s*(?P<spec>[^;]*?)\s*"
    r"(?P<marker>;.*)?$"
)
_PROJECT_VERSION = re.compile(r'^(version\s*=\s*)"[^"]*"', re.MULTILINE)
_DUNDER_VERSION = re.compile(r'^(__version__\s*=\s*)"[^"]*"', re.MULTILINE)


def normalize(name: str) -> str:
    """PEP 503 normalized distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Change:
    path: Path
    new_text: str | bytes


def package_dirs() -> list[Path]:
    """Every workspace member directory (those with a pyproject.toml under packages/)."""
    return sorted(p.parent for p in (ROOT / "packages").glob("*/pyproject.toml"))


def read_version() -> str:
    version = VERSION_FILE.read_text(encoding="utf-8").strip()
    if not _PEP440.match(version):
        raise SystemExit(f"set-version: {VERSION_FILE.name}: {version!r} is not a PEP 440 version")
    return version


def pinned(requirement: str, members: set[str], version: str) -> str:
    """`requirement` with an exact `==version` pin when it names a workspace member."""
    match = _REQUIREMENT.match(requirement)
    if match is None or normalize(match["name"]) not in members:
        return requirement
    return f"{match['name']}{match['extras'] or ''}=={version}{match['marker'] or ''}"


def pyproject_text(path: Path, members: set[str], version: str) -> str:
    """The pyproject at `path` with its own version and its member pins set to `version`."""
    text = path.read_text(encoding="utf-8")
    project = tomllib.loads(text)["project"]
    if "version" not in project or "version" in project.get("dynamic", []):
        raise SystemExit(f"set-version: {path}: [project] has no static version")
    # [project] is the first table of every member, so the first `version = ` line is its own.
    text, count = _PROJECT_VERSION.subn(rf'\g<1>"{version}"', text, count=1)
    if count != 1:
        raise SystemExit(f"set-version: {path}: no `version = ...` line")

    requirements: list[str] = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    for requirement in requirements:
        new = pinned(requirement, members, version)
        if new != requirement:
            # TOML basic strings: requirements hold no quotes or backslashes to escape.
            text = text.replace(f'"{requirement}"', f'"{new}"')

    check = tomllib.loads(text)["project"]
    if check["version"] != version:
        raise SystemExit(f"set-version: {path}: the first `version =` is not [project]'s")
    return text


def planned_changes(version: str) -> list[Change]:
    """Every file whose content differs from what `version` requires."""
    dirs = package_dirs()
    members = {
        normalize(tomllib.loads((d / "pyproject.toml").read_text("utf-8"))["project"]["name"])
        for d in dirs
    }
    changes: list[Change] = []
    for directory in dirs:
        pyproject = directory / "pyproject.toml"
        text = pyproject_text(pyproject, members, version)
        if text != pyproject.read_text(encoding="utf-8"):
            changes.append(Change(pyproject, text))
        for init in sorted(directory.glob("src/*/__init__.py")):
            old = init.read_text(encoding="utf-8")
            new = _DUNDER_VERSION.sub(rf'\g<1>"{version}"', old)
            if new != old:
                changes.append(Change(init, new))
        for name in LICENSE_FILES:
            root_copy = (ROOT / name).read_bytes()
            target = directory / name
            if not target.exists() or target.read_bytes() != root_copy:
                changes.append(Change(target, root_copy))
    return changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("version", nargs="?", help="new version to write to VERSION first")
    parser.add_argument("--check", action="store_true", help="report drift, change nothing")
    args = parser.parse_args(argv)

    if args.version is not None:
        if args.check:
            parser.error("--check takes no version")
        if not _PEP440.match(args.version):
            parser.error(f"{args.version!r} is not a PEP 440 version")
        VERSION_FILE.write_text(args.version + "\n", encoding="utf-8")
    version = read_version()
    changes = planned_changes(version)

    if args.check:
        for change in changes:
            print(f"out of date with VERSION {version}: {change.path.relative_to(ROOT)}")
        return 1 if changes else 0
    for change in changes:
        if isinstance(change.new_text, bytes):
            change.path.write_bytes(change.new_text)
        else:
            change.path.write_text(change.new_text, encoding="utf-8")
        print(f"updated {change.path.relative_to(ROOT)}")
    print(f"all packages at {version}; now run `uv lock`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
