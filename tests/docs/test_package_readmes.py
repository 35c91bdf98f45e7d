"""Each package's README stands on its own on a package index page.

There, relative links break and nothing else of the repository is at hand, so every README
says how to install its package, links only to absolute URLs, and its ```python examples run
as written (```py blocks are fragments, not programs). The only change made to an example is
the daemon's address: `127.0.0.1:50051`, and the SDK's default target, become the test
daemon's endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from msgbus_server.testing import Daemon
from msgbus_testkit.examples import PYTHON_BLOCK, run_example
from msgbus_testkit.postgres import postgres_dsn, postgres_server

__all__ = ["postgres_dsn", "postgres_server"]  # fixtures the PostgreSQL example asks for

PACKAGES = Path(__file__).resolve().parents[2] / "packages"
NAMES = sorted(path.name for path in PACKAGES.iterdir() if (path / "pyproject.toml").is_file())
LINK = re.compile(r"\]\(([^)\s]+)\)")
HOME = "https://github.com/msgbus-py/msgbus"
POSTGRES_EXAMPLE = "postgresql://postgres@127.0.0.1:5432/msgbus"
"""The database the PostgreSQL store's README example opens."""


def readme(package: str) -> str:
    return (PACKAGES / package / "README.md").read_text(encoding="utf-8")


EXAMPLES = [
    (package, index, block)
    for package in NAMES
    for index, block in enumerate(PYTHON_BLOCK.findall(readme(package)))
]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with Daemon.start(tmp_path_factory.mktemp("package-readmes")) as running:
        yield running


def test_every_package_is_checked() -> None:
    assert len(NAMES) == 7, NAMES


@pytest.mark.parametrize("package", NAMES)
def test_readme_says_what_it_is_and_how_to_install_it(package: str) -> None:
    text = readme(package)
    assert text.startswith(f"# {package}\n"), "the title is the package name"
    assert f"pip install {package}" in text or f"pip install '{package}[" in text
    assert HOME in text, "a link to the project"
    assert PYTHON_BLOCK.search(text) or "```sh\nmsgbusd" in text, "an example"


@pytest.mark.parametrize("package", NAMES)
def test_readme_links_are_absolute(package: str) -> None:
    relative = [
        target
        for target in LINK.findall(readme(package))
        if not target.startswith(("https://", "#"))
    ]
    assert not relative, f"links that break on a package index page: {relative}"


@pytest.mark.parametrize(
    ("package", "index", "source"), EXAMPLES, ids=[f"{p}-{i}" for p, i, _ in EXAMPLES]
)
def test_readme_python_example_runs(
    package: str,
    index: int,
    source: str,
    daemon: Daemon,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    if POSTGRES_EXAMPLE in source:
        # A PostgreSQL store's example gets a fresh database on the tests' real server.
        source = source.replace(POSTGRES_EXAMPLE, request.getfixturevalue("postgres_dsn"))
    source = source.replace("127.0.0.1:50051", daemon.endpoint)
    source = source.replace("MsgbusClient.connect()", f'MsgbusClient.connect("{daemon.endpoint}")')
    run_example(source, tmp_path / f"{package.replace('-', '_')}_example_{index}.py")
