"""What the end-to-end tests share, in one package (not published; found through pytest's
`pythonpath` option and mypy's `mypy_path` in the root pyproject.toml).

- `backends`: the store backends to parametrise over, skipping those that do not load.
- `calls`: calls that must fail, and the status codes a daemon may refuse with.
- `certificates`: a CA made in the test, and the server and client certificates it issues.
- `distributions`: uv builds, fresh venvs and msgbusd run from them (the packaging tests).
- `logs`: publishing, reading whole logs and checking their shape.
- `nodes`: the node ids test daemons get.
- `peers`: daemons that sync from each other, and fake peers written in the test.

Running daemons, waiting for a condition (`wait_until`) and free ports are the daemon harness's
job: `msgbus_server.testing`, which the soak scripts use too.
"""
