"""Exactly-once publish on a hub: two msgbusd processes on one PostgreSQL database (issue 19).

Both processes are sent the same idempotency keys at once, from threads racing each other: the
key is looked up under the log's row lock and the `publish_keys` primary key decides, so each
key is stored once whichever process took it first, and the other answers that envelope as a
duplicate. A client failing over between the processes (they share the node) keeps retrying
with the same key, so its publish also stays one message.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import TYPE_CHECKING

from msgbus_proto import pb

if TYPE_CHECKING:
    from conftest import HubStarter

KEYS = 300
TOPIC = "hub.orders"


def test_two_processes_store_each_key_once(start_hub: HubStarter, postgres_dsn: str) -> None:
    hubs = [start_hub(postgres_dsn, name) for name in ("a", "b")]
    answers: list[list[pb.PublishResponse]] = [[], []]
    start = threading.Barrier(len(hubs))

    def publish(index: int) -> None:
        stub = hubs[index].stub()
        start.wait()
        for n in range(KEYS):
            # Both processes race for every key, each with a payload of its own.
            request = pb.PublishRequest(
                topic=TOPIC, payload=f"{index}:{n}".encode(), idempotency_key=f"order-{n}"
            )
            answers[index].append(stub.Publish(request))

    threads = [threading.Thread(target=publish, args=(index,)) for index in range(len(hubs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)

    stored = list(hubs[0].stub().Fetch(pb.FetchRequest(topic=TOPIC, from_head_id=1, limit=10_000)))
    messages = [response.message for response in stored]
    assert [m.head_id for m in messages] == list(range(1, KEYS + 1))
    # One message per key, and both processes answered each key with that same envelope.
    keys = Counter(m.payload.split(b":")[1] for m in messages)
    assert set(keys.values()) == {1}
    for n in range(KEYS):
        a, b = answers[0][n], answers[1][n]
        assert a.message == b.message
        assert [a.duplicate, b.duplicate].count(True) == 1
    for hub in hubs:
        assert "Traceback" not in hub.stderr_text()
