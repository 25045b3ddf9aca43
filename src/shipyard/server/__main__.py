"""`python -m shipyard.server CONFIG_JSON`: the supervisor alone. An application's own command prepares
what the workers need, then execs into this, so that the long-lived parent holds none of its memory."""

from __future__ import annotations

import argparse
import sys

from shipyard.server.config import ServerConfig, configure_logging
from shipyard.server.supervisor import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shipyard.server")
    parser.add_argument("config", help="ServerConfig as JSON")
    config = ServerConfig.from_json(parser.parse_args(argv).config)
    configure_logging(config.log_level)
    return serve(config)


if __name__ == "__main__":
    sys.exit(main())
