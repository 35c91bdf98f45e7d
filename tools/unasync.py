"""Generate the SDK's blocking client and subscription from the asyncio ones.

The asyncio modules are the one hand-written source (as in httpcore, whose ``unasync.py`` this
follows): ``_async_client.py`` becomes ``_sync_client.py`` and ``_async_subscription.py``
becomes ``_sync_subscription.py``. The output is run through ruff (import order, unused
imports, formatting), so it is exactly what the linters accept.

    uv run python tools/unasync.py           # regenerate
    uv run python tools/unasync.py --check   # exit 1 if a generated file is stale (CI)

What changes, in order:

- lines ending in ``# async-only``, and blocks from ``# async-only: begin`` to
  ``# async-only: end``, are left out (publish coalescing exists only on asyncio);
- :data:`PHRASES`: the few places where the blocking side says or does something else;
- :data:`TOKENS`: ``async``/``await`` and the async names become their blocking twins.

Every rule must apply somewhere, so an edit of the asyncio source that a rule no longer
matches fails here instead of silently producing a wrong blocking module.
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "packages" / "msgbus-sdk" / "src" / "msgbus_sdk"
FILES = {
    "_async_client.py": "_sync_client.py",
    "_async_subscription.py": "_sync_subscription.py",
    "_async_durable.py": "_sync_durable.py",
    "_async_worker.py": "_sync_worker.py",
}

ASYNC_ONLY_LINE = re.compile(r"^.*# async-only\n", re.MULTILINE)
ASYNC_ONLY_BLOCK = re.compile(
    r"^[ \t]*# async-only: begin\n.*?^[ \t]*# async-only: end\n", re.MULTILINE | re.DOTALL
)

# The few places where the blocking side says or does something else: (asyncio text, blocking
# text), applied before TOKENS.
PHRASES: list[tuple[str, str]] = [
    # _async_client.py
    (
        '''"""The asyncio client, on grpc.aio.

The blocking :class:`MsgbusClient` is generated from this module by ``tools/unasync.py``: edit
this one and regenerate. Lines marked ``# async-only`` (and blocks between ``# async-only:
begin`` and ``# async-only: end``) are left out of the blocking client; so is publish
coalescing, which gathers publishes that become runnable in the same event-loop pass.
"""''',
        '"""The blocking client, on grpc\'s blocking channel."""',
    ),
    (
        "An asyncio client for one msgbus daemon.\n",
        "A blocking client for one msgbus daemon, safe to share between threads.\n\n"
        "    It has the same methods as the asyncio client.\n",
    ),
    (
        """

    Concurrent :meth:`publish` calls are coalesced into PublishBatch calls unless the client
    was connected with ``coalesce_publishes=False``; see :meth:`publish`.
""",
        "\n",
    ),
    (
        """\
            coalesce_publishes: gather concurrent :meth:`publish` calls into PublishBatch
                calls (the default); ``False`` sends one Publish per call.
""",
        "",
    ),
    (
        """\
        Publishes that run concurrently on this client are coalesced: the ones issued while
        earlier ones are in flight travel together in one PublishBatch call, which the daemon
        commits in one transaction. A publish on an otherwise idle client goes out at once as
        a plain Publish, so a sequential publisher never waits for company. Either way each
        call returns its own envelope or raises its own error, exactly as a lone Publish
        would: an invalid message fails alone and the others are stored. Publishes awaited
        one after the other keep their order in the log.

""",
        "",
    ),
    ("Returns an async iterator", "Returns an iterator"),
    ("  # noqa: ASYNC109", ""),
    ("[env async for env in self._fetch_page(request)]", "list(self._fetch_page(request))"),
    (
        "[state async for state in self.iter_peer_sync_states()]",
        "list(self.iter_peer_sync_states())",
    ),
    (
        "[stored async for stored in self.iter_cursors(name)]",
        "list(self.iter_cursors(name))",
    ),
    (
        "[message async for message in self.iter_fifo(queue)]",
        "list(self.iter_fifo(queue))",
    ),
    (
        """\
                for env in convert.fetch_envelopes(response):
                    yield env
""",
        """\
                yield from convert.fetch_envelopes(response)
""",
    ),
    # _async_subscription.py
    (
        '''"""The asyncio subscription: replay then live, resumed across daemon restarts.

The blocking :class:`Subscription` is generated from this module by ``tools/unasync.py``;
edit this one and regenerate. The resume point and the duplicate/gap guard are
``_subscription.Cursor``.
"""''',
        '''"""The blocking subscription: replay then live, resumed across daemon restarts.

The resume point and the duplicate/gap guard are ``_subscription.Cursor``.
"""''',
    ),
    ("An async iterator over one log", "A blocking iterator over one log"),
    # _async_worker.py: the lease keeper is a thread, waiting on the stop event.
    ("An async iterator of jobs", "A blocking iterator of jobs"),
    ("Process jobs in tasks", "Process jobs in threads"),
    ("Run jobs\n        in tasks", "Run jobs\n        in threads"),
    ("asyncio.Semaphore(concurrency)", "threading.Semaphore(concurrency)"),
    (
        "self._keeper: asyncio.Task[None] | None = None",
        "self._keeper: threading.Thread | None = None",
    ),
    (
        "self._keeper = asyncio.create_task(self._keep_leases())",
        "self._keeper = threading.Thread(\n"
        '                target=self._keep_leases, name="msgbus-lease-keeper", daemon=True\n'
        "            )\n"
        "            self._keeper.start()",
    ),
    ("await asyncio.sleep(seconds)", "self._stopped.wait(seconds)"),
    ("keeper.cancel()", "keeper.join()"),
    (
        "Stop the subscription and cancel its stream. Iteration then ends.",
        "Stop the subscription and cancel its stream. Iteration then ends.\n\n"
        "        Safe to call from another thread.\n        ",
    ),
]

TOKENS: list[tuple[str, str]] = [
    ("_async_transport", "_sync_transport"),
    ("_async_subscription", "_sync_subscription"),
    ("_async_durable", "_sync_durable"),
    ("_async_worker", "_sync_worker"),
    ("AsyncWorker", "Worker"),
    ("AsyncJob", "Job"),
    ("_async_client", "_sync_client"),
    ("AsyncDurableSubscription", "DurableSubscription"),
    ("_async_stream_publisher", "_sync_stream_publisher"),
    ("AsyncMsgbusClient", "MsgbusClient"),
    ("AsyncSubscription", "Subscription"),
    ("MsgbusServiceAsyncStub", "MsgbusServiceStub"),
    ("AsyncRetrying", "Retrying"),
    ("AsyncIterator", "Iterator"),
    ("StopAsyncIteration", "StopIteration"),
    (r"Awaitable\[(\w+)\]", r"\1"),
    ("__aenter__", "__enter__"),
    ("__aexit__", "__exit__"),
    ("__aiter__", "__iter__"),
    ("__anext__", "__next__"),
    ("aclose", "close"),
    ("async def", "def"),
    ("async for", "for"),
    ("async with", "with"),
    ("await ", ""),
]
_COMPILED_TOKENS = [(re.compile(rf"\b{pattern}"), repl) for pattern, repl in TOKENS]


def header(source: str) -> str:
    """The notice at the top of every generated file."""
    return (
        f"# Generated by tools/unasync.py from {source}: do not edit by hand.\n"
        f"# Edit {source} and run `uv run python tools/unasync.py`.\n"
    )


def unasync(text: str, used: set[str]) -> str:
    """The blocking form of one asyncio module, before formatting; records the rules used."""
    text, count = ASYNC_ONLY_BLOCK.subn("", text)
    if count:
        used.add("async-only block")
    text, count = ASYNC_ONLY_LINE.subn("", text)
    if count:
        used.add("async-only line")
    for old, new in PHRASES:
        if old in text:
            used.add(old)
            text = text.replace(old, new)
    for (pattern, _), (regex, repl) in zip(TOKENS, _COMPILED_TOKENS, strict=True):
        text, count = regex.subn(repl, text)
        if count:
            used.add(pattern)
    return text


def ruff(text: str, path: Path) -> str:
    """``text`` with ruff's import fixes and formatting, under the project's configuration."""
    name = str(path.relative_to(ROOT))
    for args in (["check", "--fix-only", "--select", "I,F401", "--quiet"], ["format", "--quiet"]):
        text = subprocess.run(
            [sys.executable, "-m", "ruff", *args, "--stdin-filename", name, "-"],
            input=text,
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout
    return text


def generate() -> dict[Path, str]:
    """Every generated file's path and expected content."""
    used: set[str] = set()
    outputs: dict[Path, str] = {}
    for source, target in FILES.items():
        text = (PACKAGE / source).read_text(encoding="utf-8")
        path = PACKAGE / target
        outputs[path] = ruff(header(source) + unasync(text, used), path)
    rules = {"async-only block", "async-only line"} | {old for old, _ in PHRASES}
    rules |= {pattern for pattern, _ in TOKENS}
    unused = rules - used
    if unused:
        raise SystemExit(f"unasync: rules that no longer match anything: {sorted(unused)}")
    return outputs


def main() -> int:
    """Regenerate the blocking modules, or with ``--check`` compare them to the sources."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a generated file is stale")
    args = parser.parse_args()
    stale = False
    for path, expected in generate().items():
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current == expected:
            continue
        if args.check:
            stale = True
            name = str(path.relative_to(ROOT))
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    expected.splitlines(keepends=True),
                    f"{name} (on disk)",
                    f"{name} (generated)",
                )
            )
        else:
            path.write_text(expected, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print("unasync: generated files are stale; run `uv run python tools/unasync.py`")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
