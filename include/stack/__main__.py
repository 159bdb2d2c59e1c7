"""`python -m include.stack up|down|status|logs` (make up, make down, make status, make logs)."""

from __future__ import annotations

import argparse
import sys

from include.stack.config import StackError, load_config
from include.stack.supervisor import down, show_logs, status, up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.stack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the stack; return when Airflow is healthy")
    commands.add_parser("down", help="stop what up started")
    commands.add_parser("status", help="show which services run")
    logs = commands.add_parser("logs", help="show the end of each service's log")
    logs.add_argument("--lines", type=int, default=40, help="lines per log (default 40)")
    arguments = parser.parse_args(argv)
    try:
        config = load_config()
        if arguments.command == "up":
            up(config)
        elif arguments.command == "down":
            down(config)
        elif arguments.command == "status":
            status(config)
        else:
            show_logs(config, arguments.lines)
    except StackError as error:
        print(f"make {arguments.command}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
