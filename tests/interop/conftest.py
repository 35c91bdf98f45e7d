"""Build the Go and Rust interop clients once, and drive them against real daemons.

Each client is a program (tests/interop/go, tests/interop/rust) that talks to a daemon started
here, prints one `ok` line per check and exits non-zero at the first failed one. The builds are
cached in `tests/interop/.cache` (ignored by git): a build is skipped while a stamp of every
input matches, and Go's build cache and Cargo's target folder live there too.

A missing `go` or `cargo` skips the tests with the reason, except under `CI=true`, where it
fails them: CI must never pass by running none of them.
"""

from __future__ import annotations

import datetime
import fcntl
import hashlib
import ipaddress
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from msgbus_proto import pb
from msgbus_server.testing import Daemon

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CACHE = HERE / ".cache"
FIXTURES = HERE / "fixtures"
PROTO = ROOT / "proto" / "msgbus" / "v1" / "msgbus.proto"

BACKENDS = ("sqlite", "duckdb")
NODE = "tenant/default/interop"
MAX_PAYLOAD = 4096
"""The daemons' --max-payload-bytes, so the oversized-payload check needs no large request."""

GO_PLUGINS = (
    "google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.10",
    "google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.0",
)
"""The buf plugins of tests/interop/go/buf.gen.yaml, pinned like go.mod pins their runtimes."""

BUILD_TIMEOUT_S = 1800
"""A first Rust build on a loaded 2-core CI box compiles ~150 crates; later runs take seconds."""

INTEROP_TIMEOUT = pytest.mark.timeout(BUILD_TIMEOUT_S + 300)
"""For tests that may wait for the first build (pytest-timeout counts fixture setup)."""


def _require(tool: str, *fallbacks: Path) -> str:
    """The path of `tool`; skip without it, or fail under CI=true."""
    found = shutil.which(tool) or next((str(p) for p in fallbacks if p.is_file()), None)
    if found:
        return found
    reason = f"`{tool}` is not installed, so the {tool} interop client cannot be built"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing toolchain fails the run)")
    pytest.skip(reason)


def _run(argv: Sequence[str], *, cwd: Path, env: dict[str, str], what: str) -> None:
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S
    )
    if result.returncode != 0:
        pytest.fail(f"{what} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


def _stamp(paths: Sequence[Path], *extra: str) -> str:
    """A digest of the build's inputs: the sources, the proto file and the tool versions."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    for item in extra:
        digest.update(item.encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Build:
    """One cached build of a client program."""

    name: str
    binary: Path
    inputs: Sequence[Path]
    versions: Sequence[str]
    steps: Callable[[], None]

    def ensure(self) -> Path:
        """Build unless the stamp says the cached binary is current; one build at a time.

        pytest-xdist workers share the cache, so they take turns under a file lock, and every
        worker after the first finds the stamp current.
        """
        CACHE.mkdir(parents=True, exist_ok=True)
        stamp_path = CACHE / f"{self.name}.stamp"
        with (CACHE / f"{self.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stamp = _stamp(self.inputs, *self.versions)
            current = stamp_path.is_file() and stamp_path.read_text() == stamp
            if current and self.binary.is_file():
                return self.binary
            self.steps()
            stamp_path.write_text(stamp)
        return self.binary


def _go_build() -> Build:
    go = _require("go", Path("/usr/local/go/bin/go"))
    module = HERE / "go"
    bin_dir = CACHE / "bin"
    env = {
        **os.environ,
        "GOBIN": str(bin_dir),
        "GOCACHE": str(CACHE / "go-build"),
        "GOFLAGS": "-mod=readonly",
        "GOTOOLCHAIN": "local",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    version = subprocess.run([go, "version"], capture_output=True, text=True, check=True).stdout

    def steps() -> None:
        for plugin in GO_PLUGINS:
            _run([go, "install", plugin], cwd=module, env=env, what=f"go install {plugin}")
        buf = str(Path(sys.executable).with_name("buf"))
        template = "tests/interop/go/buf.gen.yaml"
        _run([buf, "generate", "--template", template], cwd=ROOT, env=env, what="buf generate")
        binary = str(bin_dir / "msgbus-interop-go")
        _run([go, "build", "-o", binary, "."], cwd=module, env=env, what="go build")

    sources = [*module.glob("*.go"), module / "go.mod", module / "go.sum", module / "buf.gen.yaml"]
    return Build(
        name="go",
        binary=bin_dir / "msgbus-interop-go",
        inputs=[*sources, PROTO],
        versions=[version, *GO_PLUGINS],
        steps=steps,
    )


def _rust_build() -> Build:
    cargo = _require("cargo", Path.home() / ".cargo" / "bin" / "cargo")
    crate = HERE / "rust"
    target = CACHE / "cargo-target"
    env = {**os.environ, "CARGO_TARGET_DIR": str(target)}
    version = subprocess.run([cargo, "--version"], capture_output=True, text=True, check=True)

    def steps() -> None:
        _run([cargo, "build", "--locked"], cwd=crate, env=env, what="cargo build")

    sources = [*(crate / "src").glob("*.rs"), crate / "build.rs"]
    return Build(
        name="rust",
        binary=target / "debug" / "msgbus-interop",
        inputs=[*sources, crate / "Cargo.toml", crate / "Cargo.lock", PROTO],
        versions=[version.stdout],
        steps=steps,
    )


@pytest.fixture(scope="session")
def go_client() -> Path:
    """The Go client program, built (or found current) in the cache."""
    return _go_build().ensure()


@pytest.fixture(scope="session")
def rust_client() -> Path:
    """The Rust client program, built (or found current) in the cache."""
    return _rust_build().ensure()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each store backend msgbusd offers for real data."""
    name: str = request.param
    return name


# -- running a client ------------------------------------------------------------------------


def run_client(binary: Path, *args: str, timeout: float = 240.0) -> str:
    """Run a client command to completion; fail the test with its output unless it exits 0."""
    result = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    output = result.stdout + result.stderr
    print(output)  # what the client checked, shown by `pytest -rP`
    assert result.returncode == 0, f"{binary.name} {args[0]} failed:\n{output}"
    assert f"PASS {args[0]}" in result.stdout, output
    return output


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll `condition` every 20 ms until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def _start(data_dir: Path, backend: str, extra: Sequence[str] = (), **kwargs: object) -> Daemon:
    args = ["--max-payload-bytes", str(MAX_PAYLOAD), *extra]
    return Daemon.start(data_dir, storage=backend, node=NODE, extra_args=args, **kwargs)  # type: ignore[arg-type]


def check_contract(binary: Path, backend: str, data_dir: Path) -> str:
    """The client calls every RPC of the contract against a fresh daemon and checks the answers."""
    with _start(data_dir, backend) as daemon:
        output = run_client(
            binary,
            "contract",
            "-addr",
            daemon.endpoint,
            "-node",
            NODE,
            "-max-payload",
            str(MAX_PAYLOAD),
        )
        assert "Traceback" not in daemon.stderr_text()
    return output


def check_resume_across_crashes(binary: Path, backend: str, data_dir: Path) -> str:
    """SIGKILL and restart the daemon twice under a client's reconnecting subscription.

    Some messages are published while the client is connected, some right after each restart
    (so the client's resume replays them), and the client checks that it saw every head_id
    exactly once, in order, with reconnects at the original SDK's fixed 250 ms delay.
    """
    topic = f"interop.resume.{uuid.uuid4().hex[:8]}"
    progress = data_dir / "progress"
    rounds = (range(1, 6), range(6, 11), range(11, 16))
    count = rounds[-1][-1]
    with _start(data_dir / "daemon", backend) as daemon:
        stub = daemon.stub()

        def publish(heads: range) -> None:
            for head in heads:
                reply = stub.Publish(pb.PublishRequest(topic=topic, payload=f"m-{head}".encode()))
                assert reply.message.head_id == head

        def seen() -> int:
            try:
                return int(progress.read_text() or 0)
            except FileNotFoundError:
                return 0

        def caught_up(head: int) -> Callable[[], bool]:
            return lambda: seen() >= head or client.poll() is not None

        publish(rounds[0])
        args = ["resume", "-addr", daemon.endpoint, "-topic", topic, "-count", str(count)]
        args += ["-progress", str(progress), "-min-reconnects", "2"]
        client = subprocess.Popen(
            [str(binary), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            for heads in rounds[1:]:
                wait_until(caught_up(heads[0] - 1), f"the client to receive head {heads[0] - 1}")
                assert client.poll() is None, client.communicate()[0]
                daemon.kill()
                daemon.restart()
                stub = daemon.stub()
                publish(heads)
            output, _ = client.communicate(timeout=120)
        finally:
            if client.poll() is None:
                client.kill()
                client.communicate()
        print(output)
        assert client.returncode == 0, output
        assert "PASS resume" in output, output
        assert seen() == count
    return output


@dataclass(frozen=True)
class Pki:
    """Certificates made for one test module: a CA, the daemon's and a client's."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _issue(
    subject: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, role: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=role == "ca", path_length=None), critical=True)
    )
    if role == "server":
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if role != "ca":
        usage = (
            ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256()), key


def _write(
    directory: Path, stem: str, pair: tuple[x509.Certificate, ec.EllipticCurvePrivateKey]
) -> tuple[Path, Path]:
    cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert.write_bytes(pair[0].public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        pair[1].private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A fresh CA with a server certificate for 127.0.0.1/localhost and a client certificate."""
    directory = tmp_path_factory.mktemp("pki")
    ca = _issue("msgbus interop CA", None, "ca")
    ca_path, _ = _write(directory, "ca", ca)
    server_cert, server_key = _write(directory, "server", _issue("msgbusd", ca, "server"))
    client_cert, client_key = _write(directory, "client", _issue("interop client", ca, "client"))
    return Pki(ca_path, server_cert, server_key, client_cert, client_key)


def check_tls(binary: Path, pki: Pki, data_dir: Path, *, mutual: bool) -> str:
    """The client reaches a TLS (or mTLS) daemon with the test's CA, and only with it."""
    args = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
    client_args = ["tls", "-ca", str(pki.ca)]
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
    if mutual:
        args += ["--tls-client-ca", str(pki.ca)]
        client_args += ["-cert", str(pki.client_cert), "-key", str(pki.client_key)]
        client_args += ["-require-client-cert"]
        credentials = grpc.ssl_channel_credentials(
            root_certificates=pki.ca.read_bytes(),
            private_key=pki.client_key.read_bytes(),
            certificate_chain=pki.client_cert.read_bytes(),
        )
    with _start(data_dir, "sqlite", args, credentials=credentials) as daemon:
        return run_client(binary, *client_args, "-addr", daemon.endpoint)


class Scenarios:
    """What every client is put through; test modules reach it through the `scenarios` fixture."""

    contract = staticmethod(check_contract)
    resume_across_crashes = staticmethod(check_resume_across_crashes)
    tls = staticmethod(check_tls)
    run = staticmethod(run_client)
    require = staticmethod(_require)


@pytest.fixture
def scenarios() -> Scenarios:
    """The interop scenarios (conftest modules cannot be imported in importlib mode)."""
    return Scenarios()
