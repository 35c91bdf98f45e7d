"""`python -m msgbus_server`: the same as the `msgbusd` console script."""

from msgbus_server.cli import main

if __name__ == "__main__":
    main()
