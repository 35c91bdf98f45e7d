"""Workloads run against real msgbusd processes, by the soak scripts and by tests/reliability.

- `workloads.load`: fan-out, slow-subscriber and subscribe/disconnect workloads (memory figures).
- `workloads.crash`: crash rounds (SIGKILL under load, restart, hold the daemon to its answers).
- `workloads.logs`: reading whole logs over gRPC and checking their shape.

Nothing here is test code: `scripts/load_soak.py` and `scripts/crash_soak.py` import it as a
package next to them, and pytest finds it through the `pythonpath` option in pyproject.toml.
"""
