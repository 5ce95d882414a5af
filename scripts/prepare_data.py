"""python scripts/prepare_data.py --dataset ultrachat|sharegpt|... [--data-path F] [--output-path D]

Same function as `draftsmith prepare-data`."""

import sys

from draftsmith.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("prepare-data", sys.argv[1:], prog="scripts/prepare_data.py"))
