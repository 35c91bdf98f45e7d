"""The asyncio and the blocking SDK offer the same public surface.

The blocking client and subscription are generated from the asyncio ones (tools/unasync.py);
this test guards the result, and any hand edit, by comparing the members of each pair with
`inspect.signature`: the same names, the same member kinds, and the same parameters with the
same kinds, defaults and annotations.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from typing import Any

import pytest

from msgbus_sdk import AsyncMsgbusClient, AsyncSubscription, MsgbusClient, Subscription

# Publish coalescing gathers publishes that become runnable in the same event-loop pass; it
# exists on the asyncio client only. Nothing else may differ.
ASYNC_ONLY_MEMBERS = {"coalesces_publishes"}
ASYNC_ONLY_PARAMETERS = {("__init__", "coalesce_publishes"), ("connect", "coalesce_publishes")}

# The asyncio spelling of a name and its blocking twin.
TWIN_NAMES = {
    "aclose": "close",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
}
_ASYNC_WORDS = re.compile(r"Async(?=[A-Z])|\bAwaitable\[([^\]]*)\]")


def _blocking_spelling(annotation: str) -> str:
    return _ASYNC_WORDS.sub(lambda m: m.group(1) or "", annotation)


def _member_kind(cls: type, name: str) -> str:
    raw = inspect.getattr_static(cls, name)
    if isinstance(raw, property):
        return "property"
    if isinstance(raw, classmethod):
        return "classmethod"
    if isinstance(raw, staticmethod):
        return "staticmethod"
    return "method" if callable(raw) else type(raw).__name__


def _public_names(cls: type) -> set[str]:
    names = {name for name in vars(cls) if not name.startswith("_")}
    dunders = {"__init__", *TWIN_NAMES, *TWIN_NAMES.values()}
    return names | {name for name in dunders if name in vars(cls)}


def _parameters(cls: type, name: str) -> dict[str, tuple[str, Any, str]]:
    """Each parameter's kind, default and annotation (in blocking spelling), in order."""
    member = inspect.getattr_static(cls, name)
    if isinstance(member, property):
        assert member.fget is not None
        member = member.fget
    if isinstance(member, classmethod | staticmethod):
        member = member.__func__
    signature = inspect.signature(member)
    parameters = {
        p.name: (p.kind.name, p.default, _blocking_spelling(str(p.annotation)))
        for p in signature.parameters.values()
        if (name, p.name) not in ASYNC_ONLY_PARAMETERS
    }
    parameters["return"] = ("", None, _blocking_spelling(str(signature.return_annotation)))
    return parameters


def surface_differences(async_cls: type, blocking_cls: type) -> Iterator[str]:
    """Every way in which `blocking_cls` is not the blocking twin of `async_cls`."""
    async_names = {
        TWIN_NAMES.get(name, name) for name in _public_names(async_cls) - ASYNC_ONLY_MEMBERS
    }
    blocking_names = _public_names(blocking_cls)
    for name in sorted(async_names - blocking_names):
        yield f"{blocking_cls.__name__} lacks {name}"
    for name in sorted(blocking_names - async_names):
        yield f"{blocking_cls.__name__} has {name}, which {async_cls.__name__} lacks"
    twins = {TWIN_NAMES.get(name, name): name for name in _public_names(async_cls)}
    for name in sorted(async_names & blocking_names):
        async_name = twins[name]
        kinds = _member_kind(async_cls, async_name), _member_kind(blocking_cls, name)
        if kinds[0] != kinds[1]:
            yield f"{name}: {kinds[0]} in {async_cls.__name__}, {kinds[1]} in the other"
            continue
        expected = _parameters(async_cls, async_name)
        found = _parameters(blocking_cls, name)
        if list(expected) != list(found):
            yield f"{name}: parameters {list(expected)} != {list(found)}"
            continue
        for parameter, shape in expected.items():
            if found[parameter] != shape:
                yield f"{name}: {parameter} {shape} != {found[parameter]}"


@pytest.mark.parametrize(
    ("async_cls", "blocking_cls"),
    [(AsyncMsgbusClient, MsgbusClient), (AsyncSubscription, Subscription)],
)
def test_the_blocking_surface_matches_the_asyncio_one(async_cls: type, blocking_cls: type) -> None:
    assert list(surface_differences(async_cls, blocking_cls)) == []


def test_the_async_only_members_exist_only_on_asyncio() -> None:
    # Keeps the exceptions above honest: each one must still be a real difference.
    for name in ASYNC_ONLY_MEMBERS:
        assert hasattr(AsyncMsgbusClient, name)
        assert not hasattr(MsgbusClient, name)
    for method, parameter in ASYNC_ONLY_PARAMETERS:
        assert parameter in inspect.signature(getattr(AsyncMsgbusClient, method)).parameters
        assert parameter not in inspect.signature(getattr(MsgbusClient, method)).parameters


def test_the_blocking_methods_block_and_the_asyncio_ones_await() -> None:
    for cls in (MsgbusClient, Subscription):
        for name in _public_names(cls):
            assert not inspect.iscoroutinefunction(getattr(cls, name)), name
    for name in ("health", "publish", "fetch", "close", "peek_fifo"):
        assert inspect.iscoroutinefunction(getattr(AsyncMsgbusClient, name)), name
    assert inspect.isasyncgenfunction(AsyncMsgbusClient.iter_fetch)
    assert inspect.iscoroutinefunction(AsyncSubscription.aclose)


def test_both_clients_take_several_endpoints_and_say_which_one_is_in_use() -> None:
    # The failover surface (issue 16), named here so that dropping it from both clients at once,
    # which the comparison above would not notice, fails.
    for cls in (AsyncMsgbusClient, MsgbusClient):
        target = inspect.signature(cls.connect).parameters["target"]
        assert target.annotation == "str | Sequence[str]", cls
        for name in ("target", "endpoint", "endpoints"):
            assert _member_kind(cls, name) == "property", (cls, name)
        assert "open_channel" in inspect.signature(cls.__init__).parameters


# -- the comparison itself can fail ----------------------------------------------------------


class _AsyncModel:
    async def fetch(self, topic: str, limit: int = 100) -> list[str]:
        return [topic] * limit

    async def aclose(self) -> None:
        return None

    @property
    def closed(self) -> bool:
        return False


class _MissingMethod:
    def fetch(self, topic: str, limit: int = 100) -> list[str]:
        return [topic] * limit

    @property
    def closed(self) -> bool:
        return False


class _ChangedDefault:
    def fetch(self, topic: str, limit: int = 10) -> list[str]:
        return [topic] * limit

    def close(self) -> None:
        return None

    @property
    def closed(self) -> bool:
        return False


class _ChangedKind:
    def fetch(self, topic: str, *, limit: int = 100) -> list[str]:
        return [topic] * limit

    def close(self) -> None:
        return None

    def closed(self) -> bool:
        return False


class _Twin:
    def fetch(self, topic: str, limit: int = 100) -> list[str]:
        return [topic] * limit

    def close(self) -> None:
        return None

    @property
    def closed(self) -> bool:
        return False


def test_the_comparison_catches_a_missing_method_a_default_and_a_kind() -> None:
    assert list(surface_differences(_AsyncModel, _Twin)) == []
    assert list(surface_differences(_AsyncModel, _MissingMethod)) == ["_MissingMethod lacks close"]
    assert list(surface_differences(_AsyncModel, _ChangedDefault)) == [
        "fetch: limit ('POSITIONAL_OR_KEYWORD', 100, 'int') != ('POSITIONAL_OR_KEYWORD', 10, 'int')"
    ]
    assert list(surface_differences(_AsyncModel, _ChangedKind)) == [
        "closed: property in _AsyncModel, method in the other",
        "fetch: limit ('POSITIONAL_OR_KEYWORD', 100, 'int') != ('KEYWORD_ONLY', 100, 'int')",
    ]
