"""The Dockerfile, checked without Docker (which cannot run here).

- Every path the Dockerfile COPYs from the build context exists and survives .dockerignore.
- The build stage's `uv` commands, run on a copy of that context, produce the image's
  environment from uv.lock.
- The ENTRYPOINT + CMD work from a wheel install of what the image holds, and the HEALTHCHECK
  command reports healthy against that daemon (and unhealthy once it is gone).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from msgbus_testkit.distributions import ROOT, VERSION, Msgbusd, Venv, uv

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
IMAGE_ENV = "/opt/msgbus"
DATA_DIR = "/var/lib/msgbus"
RUN_DIR = "/run/msgbus"
SOCKET = f"unix://{RUN_DIR}/msgbusd.sock"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def instructions() -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    result: list[Instruction] = []
    stage = -1
    for line in logical:
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        result.append(Instruction(keyword.upper(), args.strip(), stage))
    return result


def stage_of(name: str) -> int:
    for ins in instructions():
        if ins.keyword == "FROM" and ins.args.split()[-1] == name:
            return ins.stage
    raise AssertionError(f"no stage named {name}")


def exec_form(args: str) -> list[str]:
    """A JSON-array instruction argument (ENTRYPOINT, CMD, HEALTHCHECK CMD)."""
    value = json.loads(args)
    assert isinstance(value, list), args
    assert all(isinstance(v, str) for v in value), args
    return [str(v) for v in value]


def env_of(stage: int) -> dict[str, str]:
    """ENV values set in `stage` (KEY=VALUE form)."""
    env: dict[str, str] = {}
    for ins in instructions():
        if ins.keyword == "ENV" and ins.stage == stage:
            for item in shlex.split(ins.args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def copies(stage: int | None = None) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context (not `--from=`)."""
    result = []
    for ins in instructions():
        if ins.keyword != "COPY" or (stage is not None and ins.stage != stage):
            continue
        words = shlex.split(ins.args)
        if any(w.startswith("--from=") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        result.append((words[:-1], words[-1]))
    return result


def ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and line[0] != "#"]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `relative` (or a parent of it) out of the build context."""
    parts = relative.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), "exceptions are not modelled by this test"
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/"):
                tail = pattern[3:]
                segments = prefix.split("/")
                if any(
                    fnmatch.fnmatchcase("/".join(segments[i:]), tail) for i in range(len(segments))
                ):
                    return True
    return False


def context_files(source: str) -> list[str]:
    """Tracked files under `source` that Docker would send, as repository-relative paths."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", source],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    patterns = ignore_patterns()
    return [path for path in listed if (ROOT / path).exists() and not ignored(path, patterns)]


# -- static checks -------------------------------------------------------------------------------


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    patterns = ignore_patterns()
    sources = [source for sources, _ in copies() for source in sources]
    assert sources, "the Dockerfile copies nothing from the context"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        assert not ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"


def test_the_context_keeps_what_the_package_builds_need() -> None:
    shipped = set(context_files("packages"))
    for package in (ROOT / "packages").iterdir():
        for name in ("pyproject.toml", "README.md", "LICENSE-MIT", "LICENSE-APACHE"):
            assert f"packages/{package.name}/{name}" in shipped
    assert "packages/msgbus-proto/generated/msgbus/v1/msgbus_pb2.py" in shipped
    assert not [path for path in shipped if "/tests/" in path]


def test_image_shape() -> None:
    all_ins = instructions()
    froms = [ins for ins in all_ins if ins.keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    runtime = froms[-1].stage
    final = [ins for ins in all_ins if ins.stage == runtime]
    users = [ins.args for ins in final if ins.keyword == "USER"]
    assert users, "the runtime stage must set USER"
    assert users[-1].split(":")[0] not in ("root", "0"), "the runtime stage must not run as root"
    assert any(DATA_DIR in ins.args for ins in final if ins.keyword == "VOLUME")
    assert any(ins.args.split() == ["50051"] for ins in final if ins.keyword == "EXPOSE")
    builds = " ".join(ins.args for ins in all_ins if ins.keyword == "RUN")
    assert "uv sync --frozen" in builds, "the image must be built from uv.lock"
    assert [src for sources, _ in copies() for src in sources][:2] == ["pyproject.toml", "uv.lock"]


def test_healthcheck_uses_msgbus_health() -> None:
    (check,) = [ins.args for ins in instructions() if ins.keyword == "HEALTHCHECK"]
    command = check.split(" CMD ", 1)[1]
    assert re.search(r"\bmsgbus\b.*\bhealth\b", command)


# -- the build stage, replayed with uv -----------------------------------------------------------


def test_build_stage_uv_commands_install_the_locked_environment(tmp_path: Path) -> None:
    """Copy the context the way the build stage does, then run its `uv` RUN lines."""
    build = stage_of("build")
    context = tmp_path / "src"
    context.mkdir()
    for sources, destination in copies(build):
        for source in sources:
            if (ROOT / source).is_dir():
                pairs = [
                    (path, context / destination / Path(path).relative_to(source))
                    for path in context_files(source)
                ]
            elif destination.endswith("/"):
                pairs = [(source, context / destination / Path(source).name)]
            else:
                pairs = [(source, context / destination)]
            for path, target in pairs:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / path, target)

    env = env_of(build)
    assert env["UV_PROJECT_ENVIRONMENT"] == IMAGE_ENV
    venv = tmp_path / "opt-msgbus"
    env.update(UV_PROJECT_ENVIRONMENT=str(venv), UV_PYTHON=os.path.realpath(sys.executable))
    runs = [ins.args for ins in instructions() if ins.keyword == "RUN" and ins.stage == build]
    commands = [[w for w in shlex.split(run) if not w.startswith("--mount=")] for run in runs]
    uv_commands = [command for command in commands if command[0] == "uv"]
    assert len(uv_commands) == len(commands) >= 2
    for command in uv_commands:
        uv(*command[1:], cwd=context, env=env)

    installed = Venv(venv).distributions()
    ours = {name: v for name, v in installed.items() if name.startswith("msgbus-")}
    assert ours == dict.fromkeys(
        ["msgbus-core", "msgbus-proto", "msgbus-store-sqlite", "msgbus-server", "msgbus-sdk"],
        VERSION,
    )
    assert "duckdb" not in installed
    assert "pytest" not in installed, "dev dependencies leaked into the image"
    for script in ("msgbusd", "msgbus"):
        assert (venv / "bin" / script).exists()
    # Non-editable: nothing in the environment may point back into the build context.
    for pth in venv.glob("lib/python*/site-packages/*.pth"):
        assert str(context) not in pth.read_text(errors="replace"), pth.name


# -- the entrypoint, from a wheel install --------------------------------------------------------


def _entrypoint_argv(venv: Venv, data_dir: Path, run_dir: Path | None = None) -> list[str]:
    """ENTRYPOINT + CMD, with the image's paths mapped into the test venv and tmp dirs, and the
    fixed port 50051 swapped for 0 (the daemon logs the port it bound)."""
    entrypoint = [ins.args for ins in instructions() if ins.keyword == "ENTRYPOINT"][-1]
    cmd = [ins.args for ins in instructions() if ins.keyword == "CMD"][-1]
    argv = exec_form(entrypoint) + exec_form(cmd)
    assert argv[0] == f"{IMAGE_ENV}/bin/msgbusd"
    assert "0.0.0.0:50051" in argv, "the container must listen on all interfaces on 50051"
    assert SOCKET in argv, f"the container must serve its Unix socket {SOCKET}"
    mapped = []
    for arg in argv:
        arg = arg.replace(IMAGE_ENV, str(venv.path)).replace(DATA_DIR, str(data_dir))
        arg = arg.replace(RUN_DIR, str(run_dir or data_dir))
        mapped.append("0.0.0.0:0" if arg == "0.0.0.0:50051" else arg)
    return mapped


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """/run/msgbus of the image: short, for the socket path (at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="mb-run-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_runtime_stage_makes_the_socket_directory() -> None:
    runtime = max(ins.stage for ins in instructions())
    runs = " ".join(
        ins.args for ins in instructions() if ins.keyword == "RUN" and ins.stage == runtime
    )
    assert f"install -d -o msgbus -g msgbus -m 0755 {RUN_DIR}" in runs


def _healthcheck(venv: Venv, port: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    (check,) = [ins.args for ins in instructions() if ins.keyword == "HEALTHCHECK"]
    argv = exec_form(check.split(" CMD ", 1)[1])
    argv = [arg.replace("127.0.0.1:50051", f"127.0.0.1:{port}") for arg in argv]
    runtime = max(ins.stage for ins in instructions())
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSGBUS_")}
    env.update(env_of(runtime))
    env["PATH"] = f"{venv.path / 'bin'}:{os.environ['PATH']}"
    env["MSGBUS_ENDPOINT"] = f"127.0.0.1:{port}"
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=120
    )


def test_entrypoint_serves_and_the_healthcheck_passes(
    image_venv: Venv, workdir: Path, run_dir: Path
) -> None:
    data_dir = workdir / "var-lib-msgbus"
    data_dir.mkdir()
    argv = _entrypoint_argv(image_venv, data_dir, run_dir)
    daemon = Msgbusd(argv=argv, cwd=workdir).start()
    try:
        assert "listening on 0.0.0.0:" in daemon.stderr_text()
        assert f"and unix:{run_dir}/msgbusd.sock" in daemon.stderr_text()
        healthy = _healthcheck(image_venv, daemon.port, workdir)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert "SERVING" in healthy.stdout
        # What another container sharing /run/msgbus reaches.
        over_socket = subprocess.run(
            [
                str(image_venv.bin("msgbus")),
                "--endpoint",
                f"unix://{run_dir}/msgbusd.sock",
                "health",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert over_socket.returncode == 0, over_socket.stderr
        assert stat.S_IMODE((run_dir / "msgbusd.sock").stat().st_mode) == 0o660
        assert (data_dir / "msgbus.sqlite").exists()
    finally:
        code = daemon.terminate()
    assert code == 0, daemon.stderr_text()
    assert not (run_dir / "msgbusd.sock").exists()
    unhealthy = _healthcheck(image_venv, daemon.port, workdir)
    assert unhealthy.returncode == 1, "Docker reads exit status 1 as unhealthy"


def test_without_allow_insecure_the_entrypoint_refuses_plaintext(
    image_venv: Venv, workdir: Path
) -> None:
    """Why the default CMD carries --allow-insecure: without it (and without TLS) msgbusd refuses
    to listen on 0.0.0.0."""
    argv = [arg for arg in _entrypoint_argv(image_venv, workdir) if arg != "--allow-insecure"]
    result = subprocess.run(
        argv,
        cwd=workdir,
        env={k: v for k, v in os.environ.items() if not k.startswith("MSGBUS_")},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 2
    assert "refusing plaintext gRPC on non-loopback address" in result.stderr


def test_without_allow_anyone_the_entrypoint_refuses_to_serve_without_a_policy(
    image_venv: Venv, workdir: Path, run_dir: Path
) -> None:
    """Why the default CMD carries --allow-anyone: 0.0.0.0 without a policy is refused."""
    argv = _entrypoint_argv(image_venv, workdir, run_dir)
    result = subprocess.run(
        [arg for arg in argv if arg != "--allow-anyone"],
        cwd=workdir,
        env={k: v for k, v in os.environ.items() if not k.startswith("MSGBUS_")},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 2
    assert "without an authorization policy" in result.stderr


@pytest.mark.parametrize("name", ["msgbusd", "msgbus"])
def test_image_environment_has_both_commands(image_venv: Venv, name: str) -> None:
    result = subprocess.run(
        [str(image_venv.bin(name)), "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"usage: {name}" in result.stdout
