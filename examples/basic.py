"""The original msgbus basic example, in Python.

Publishes b"hello msgbus" on demo.events and fetches it back from the daemon named by
MSGBUS_ENDPOINT (default 127.0.0.1:50051). Run: `uv run python examples/basic.py`.
"""

from __future__ import annotations

import asyncio
import os

from msgbus_sdk import AsyncMsgbusClient


async def main() -> None:
    endpoint = os.environ.get("MSGBUS_ENDPOINT", "127.0.0.1:50051")
    async with await AsyncMsgbusClient.connect(endpoint) as bus:
        message = await bus.publish("demo.events", b"hello msgbus")
        print(f"published head_id={message.head_id}")
        # Read the log the message went to: its origin, from its head_id on.
        messages = await bus.fetch("demo.events", message.origin, message.head_id, limit=10)
        print(f"fetched {len(messages)} message(s)")


if __name__ == "__main__":
    asyncio.run(main())
