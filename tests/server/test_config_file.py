"""`msgbusd --config PATH`: a TOML file with one key per flag, below flags and variables.

Every test here runs real msgbusd processes, except the precedence matrix, which checks what
`parse_config` builds from flags, variables and a real file (a daemon per cell would add
nothing the daemon tests do not show).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import grpc
import pytest

from msgbus_proto import pb, rpc
from msgbus_server.cli import parse_config
from msgbus_server.config import ConfigError
from msgbus_server.testing import clean_env, free_port, msgbusd_command, run_msgbusd, wait_until
from msgbus_testkit.certificates import CertificateAuthority

ROOT = Path(__file__).resolve().parents[2]
READMES = [ROOT / "README.md", ROOT / "packages" / "msgbus-server" / "README.md"]
TOML_BLOCK = re.compile(r"^```toml\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def config_examples(readme: Path) -> list[str]:
    """The README's configuration file examples, less the Authorization section's policies."""
    blocks = TOML_BLOCK.findall(readme.read_text(encoding="utf-8"))
    return [block for block in blocks if "[policy]" not in block]


@contextlib.contextmanager
def serving(
    args: Sequence[str],
    endpoint: str,
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    log_dir: Path | None = None,
) -> Iterator[pb.HealthResponse]:
    """Run msgbusd with exactly `args` (Daemon.start always passes its own flags) until it serves.

    Yields its Health answer; stops it with SIGTERM and checks that it exits 0. Its stderr goes
    to a file in `log_dir` (default: `cwd`).
    """
    stderr_path = (log_dir or cwd) / f"msgbusd-{free_port()}.stderr"
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(
            [*msgbusd_command(), *args],
            cwd=cwd,
            env=clean_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    if credentials is None:
        channel = grpc.insecure_channel(endpoint)
    else:
        channel = grpc.secure_channel(endpoint, credentials)
    try:
        stub = rpc.MsgbusServiceStub(channel)

        def health() -> pb.HealthResponse | None:
            if process.poll() is not None:
                raise AssertionError(f"msgbusd exited: {stderr_path.read_text()}")
            reply: pb.HealthResponse = stub.Health(pb.HealthRequest(), timeout=1.0)
            return reply if reply.status == "SERVING" else None

        yield wait_until(health, message="Health SERVING", timeout=30)
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, stderr_path.read_text()
        assert "Traceback" not in stderr_path.read_text()
    finally:
        channel.close()
        if process.poll() is None:
            process.kill()
            process.wait()


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def node_key(reply: pb.HealthResponse) -> str:
    return f"{reply.node.tenant_id}/{reply.node.bl_name}/{reply.node.device_id}"


def refusal(args: list[str], env: dict[str, str] | None = None, *, cwd: Path) -> str:
    """msgbusd's one error line: exit 2, one line, no traceback."""
    result = run_msgbusd(args, env=env, cwd=cwd)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("msgbusd: error: "), line
    return line


def test_a_file_alone_sets_listen_data_storage_and_identity(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "state" / "bus.sqlite"
    data.parent.mkdir()
    config = write_config(
        tmp_path / "msgbusd.toml",
        f'listen = "127.0.0.1:{port}"\n'
        f'data = "{data}"\n'
        'storage = "sqlite"\n'
        'tenant-id = "acme"\n'
        'bl-name = "pos"\n'
        'device-id = "till-1"\n',
    )
    with serving(["--config", str(config)], f"127.0.0.1:{port}", cwd=tmp_path) as health:
        assert node_key(health) == "acme/pos/till-1"
        assert data.is_file()
    # MSGBUS_CONFIG names the file as well.
    env = {"MSGBUS_CONFIG": str(config)}
    with serving([], f"127.0.0.1:{port}", cwd=tmp_path, env=env) as health:
        assert node_key(health) == "acme/pos/till-1"
    assert not (tmp_path / "msgbus.sqlite").exists(), "the default --data was not used"


def test_flag_beats_variable_beats_file_on_a_running_daemon(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "msgbusd.toml",
        f'listen = "127.0.0.1:{port}"\n'
        'storage = "memory"\n'
        "volatile = true\n"
        'tenant-id = "file-tenant"\n'
        'bl-name = "file-bl"\n'
        'device-id = "file-device"\n',
    )
    endpoint = f"127.0.0.1:{port}"
    # The file's boolean lets the memory store run; each scalar comes from its highest layer.
    env = {"MSGBUS_TENANT_ID": "env-tenant", "MSGBUS_BL_NAME": "env-bl"}
    args = ["--config", str(config), "--tenant-id", "flag-tenant"]
    with serving(args, endpoint, cwd=tmp_path, env=env) as health:
        assert node_key(health) == "flag-tenant/env-bl/file-device"
    # A variable turns the file's boolean off, and the flag turns it back on.
    line = refusal(["--config", str(config)], {"MSGBUS_VOLATILE": "0"}, cwd=tmp_path)
    assert "--storage memory keeps nothing on disk" in line, line
    with serving(["--config", str(config), "--volatile"], endpoint, cwd=tmp_path, env=env):
        pass


def test_precedence_for_a_scalar_a_boolean_and_the_peer_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("MSGBUS_")]:
        monkeypatch.delenv(key)
    config = write_config(
        tmp_path / "msgbusd.toml",
        'listen = "0.0.0.0:7000"\nallow-insecure = true\nallow-anyone = true\n'
        'peer = ["file-a:1", "file-b:1=t/b/d"]\n',
    )
    use = ["--config", str(config)]

    def endpoints(argv: list[str]) -> list[str]:
        return [peer.endpoint for peer in parse_config(argv).peers]

    # The file alone.
    built = parse_config(use)
    assert (built.listen, built.allow_insecure) == ("0.0.0.0:7000", True)
    assert endpoints(use) == ["file-a:1", "file-b:1"]
    assert built.peers[1].pinned is not None
    # A variable beats the file, and replaces the whole peer list.
    monkeypatch.setenv("MSGBUS_LISTEN", "127.0.0.1:7001")
    monkeypatch.setenv("MSGBUS_PEERS", "env-a:1,env-b:1")
    assert parse_config(use).listen == "127.0.0.1:7001"
    assert endpoints(use) == ["env-a:1", "env-b:1"]
    monkeypatch.setenv("MSGBUS_LISTEN", "0.0.0.0:7001")
    monkeypatch.setenv("MSGBUS_ALLOW_INSECURE", "0")
    with pytest.raises(ConfigError, match="--allow-insecure"):
        parse_config(use)
    # A flag beats both.
    argv = [*use, "--listen", "0.0.0.0:7002", "--allow-insecure", "--peer", "flag:1"]
    built = parse_config(argv)
    assert (built.listen, built.allow_insecure) == ("0.0.0.0:7002", True)
    assert endpoints(argv) == ["flag:1"]
    # An empty variable counts as unset, as it always did.
    for name in ("MSGBUS_LISTEN", "MSGBUS_ALLOW_INSECURE", "MSGBUS_PEERS"):
        monkeypatch.setenv(name, "")
    assert endpoints(use) == ["file-a:1", "file-b:1"]


def test_relative_paths_resolve_against_the_files_directory(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "msgbus"
    (etc / "tls").mkdir(parents=True)
    files = CertificateAuthority("msgbus test CA").write_tls_files(etc / "tls")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    port = free_port()
    config = write_config(
        etc / "msgbusd.toml",
        f'listen = "127.0.0.1:{port}"\n'
        'data = "state/bus.sqlite"\n'
        f'tls-cert = "tls/{files.server_cert.name}"\n'
        f'tls-key = "tls/{files.server_key.name}"\n',
    )
    (etc / "state").mkdir()
    credentials = files.credentials(client=False)
    # Started from another directory, and with a relative --config: still the file's directory.
    args = ["--config", os.path.relpath(config, elsewhere)]
    endpoint = f"127.0.0.1:{port}"
    with serving(args, endpoint, cwd=elsewhere, credentials=credentials, log_dir=tmp_path):
        assert (etc / "state" / "bus.sqlite").is_file()
    assert list(elsewhere.iterdir()) == [], "nothing was created in the working directory"
    # The same paths as flags or variables stay relative to the working directory.
    line = refusal(["--config", str(config), "--tls-cert", "tls/nope.pem"], env=None, cwd=elsewhere)
    assert "--tls-cert: cannot read tls/nope.pem" in line, line


BAD_FILES = [
    ('max-payload-bytes = "1MiB"', ["max-payload-bytes must be an integer", "'1MiB'"]),
    ("sync-interval-ms = true", ["sync-interval-ms must be an integer", "boolean true"]),
    ("max-read-bytes-in-flight = 1.5", ["max-read-bytes-in-flight must be an integer", "1.5"]),
    ('volatile = "yes"', ["volatile must be a boolean", "'yes'"]),
    ("listen = 50051", ["listen must be an array of strings", "number 50051"]),
    ("peer = [1, 2]", ["peer must be an array of strings", "number 1"]),
    ('device-id = ["a"]', ["device-id must be a string", "an array"]),
    ("[listen]\nport = 1", ["listen must be an array of strings", "a table"]),
    ('lisen = "127.0.0.1:1"', ["unknown key 'lisen'", "did you mean 'listen'?"]),
    ("max_payload_bytes = 1", ["unknown key 'max_payload_bytes'", "mean 'max-payload-bytes'?"]),
    ('config = "other.toml"', ["unknown key 'config'"]),
    (
        '[retention."telemetry.*"]\nmax-age = "7x"',
        ["retention.\"telemetry.*\".max-age: invalid duration '7x'", "(use a number with ms,"],
    ),
    ('data = "x"\nlisten = 127.0.0.1:5', ["line 2: invalid TOML", "'listen = 127.0.0.1:5'"]),
    ('tenant-id = "a\n', ["line 1: invalid TOML", "tenant-id"]),
    ('log-format = "xml"', ["log-format: invalid choice 'xml'", "text, json"]),
    ('log-level = "chatty"', ["log-level: invalid choice 'chatty'"]),
    ("max-payload-bytes = 0", ["--max-payload-bytes must be between 1 and", "(from "]),
    ('listen = "localhost:1"', ["--listen: 'localhost' is not an IP address", "(from "]),
    ('bl-name = "a/b"', ["--bl-name contains '/'", "(from "]),
    ('peer = ["not a peer"]', ["--peer:", "(from "]),
    ('storage = "memory"', ["--storage memory keeps nothing on disk", "(from "]),
]


@pytest.mark.parametrize(
    ("text", "words"), BAD_FILES, ids=[words[0].split(":")[0][:40] for _, words in BAD_FILES]
)
def test_a_bad_file_is_one_line_naming_the_file_and_the_key(
    tmp_path: Path, text: str, words: list[str]
) -> None:
    config = write_config(tmp_path / "conf" / "msgbusd.toml", text + "\n")
    data = tmp_path / "db.sqlite"
    line = refusal(["--config", str(config), "--data", str(data)], cwd=tmp_path)
    assert str(config) in line, line
    for word in words:
        assert word in line, line
    if "unknown key" in line and not any("mean" in word for word in words):
        assert "did you mean" not in line, line
    assert not data.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conf"], "nothing is created"


def test_an_unreadable_file_is_one_line_naming_it(tmp_path: Path) -> None:
    data = tmp_path / "db.sqlite"
    base = ["--listen", f"127.0.0.1:{free_port()}", "--data", str(data)]
    missing = tmp_path / "missing.toml"
    line = refusal([*base, "--config", str(missing)], cwd=tmp_path)
    assert f"--config {missing}: cannot read the file: No such file or directory" in line, line
    line = refusal(base, {"MSGBUS_CONFIG": str(missing)}, cwd=tmp_path)
    assert str(missing) in line, line
    line = refusal([*base, "--config", str(tmp_path)], cwd=tmp_path)
    assert f"--config {tmp_path}: cannot read the file" in line, line
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe\x00listen")
    line = refusal([*base, "--config", str(binary)], cwd=tmp_path)
    assert f"--config {binary}: not a TOML file" in line, line
    assert not data.exists()


def test_a_bad_variable_choice_is_refused_like_the_flag(tmp_path: Path) -> None:
    # Before the file existed, variables were argparse defaults, whose choices argparse never
    # checked: MSGBUS_LOG_LEVEL=chatty ended in a traceback from logging.
    base = ["--listen", f"127.0.0.1:{free_port()}", "--data", str(tmp_path / "db.sqlite")]
    line = refusal(base, {"MSGBUS_LOG_LEVEL": "chatty"}, cwd=tmp_path)
    assert "--log-level (MSGBUS_LOG_LEVEL): invalid choice 'chatty'" in line, line
    line = refusal(base, {"MSGBUS_SYNC_BATCH_LIMIT": "many"}, cwd=tmp_path)
    assert "--sync-batch-limit (MSGBUS_SYNC_BATCH_LIMIT): invalid integer value 'many'" in line
    line = refusal(base[2:], {"MSGBUS_LISTEN": "localhost:1"}, cwd=tmp_path)
    assert line.endswith("(from MSGBUS_LISTEN)"), line


def test_help_mentions_the_file() -> None:
    result = run_msgbusd(["--help"])
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "--config PATH" in text
    assert "MSGBUS_CONFIG" in text
    assert "relative paths are relative to the file" in text


@pytest.mark.parametrize("readme", READMES, ids=[p.parent.name for p in READMES])
def test_the_readme_example_file_starts_a_daemon(
    readme: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("MSGBUS_")]:
        monkeypatch.delenv(key)
    [example] = config_examples(readme)
    config = write_config(tmp_path / "msgbusd.toml", example)
    # The file as written; the flags move it to a free port and a writable database (and show
    # that a flag beats the file).
    port = free_port()
    data = tmp_path / "bus.sqlite"
    args = ["--config", str(config), "--listen", f"127.0.0.1:{port}", "--data", str(data)]
    with serving(args, f"127.0.0.1:{port}", cwd=tmp_path) as health:
        assert node_key(health) == "acme/pos/till-1"
        assert data.is_file()
    built = parse_config(["--config", str(config)])
    assert (built.listen, built.data) == ("127.0.0.1:50051", "/var/lib/msgbus/msgbus.sqlite")
    assert [peer.endpoint for peer in built.peers] == ["127.0.0.1:50052"]
    assert (built.sync_interval_s, built.max_payload_bytes) == (2.0, 4 * 1024 * 1024)
    assert built.log_format == "json"


def test_both_readmes_show_the_same_example() -> None:
    examples = [config_examples(path) for path in READMES]
    assert examples[0] == examples[1]
