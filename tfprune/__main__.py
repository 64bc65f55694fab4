"""Command line: `python -m tfprune demo`."""

import argparse
import os
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="tfprune", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="prune a small CNN on digits to 90%% with AGP")
    args = parser.parse_args(argv)
    if args.command in (None, "demo"):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from tfprune import demo

        demo.main()
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
