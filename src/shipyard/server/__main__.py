"""`python -m shipyard.server CONFIG_JSON`: the supervisor alone. An application's own command prepares
what the workers need, then execs into this, so that the long-lived parent holds none of its memory."""

from __future__ import annotations

import argparse
import os
import sys

from shipyard.server.config import ServerConfig, configure_logging
from shipyard.server.supervisor import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shipyard.server")
    parser.add_argument("config", nargs="?", help="ServerConfig as JSON")
    parser.add_argument(
        "--config-fd",
        type=int,
        help="read the ServerConfig JSON from this inherited descriptor instead: unlike the command line, "
        "which every user of the machine can read, it may carry a secret (a banner with a first password)",
    )
    args = parser.parse_args(argv)
    if args.config_fd is not None:
        with os.fdopen(args.config_fd, "rb") as source:
            text = source.read().decode()
    elif args.config is not None:
        text = args.config
    else:
        parser.error("give the config as JSON, or --config-fd")
    config = ServerConfig.from_json(text)
    configure_logging(config.log_level)
    return serve(config)


if __name__ == "__main__":
    sys.exit(main())
