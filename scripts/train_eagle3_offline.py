"""`torchrun --standalone --nproc_per_node N scripts/train_eagle3_offline.py --train-hidden-states-path S ...`

EAGLE-3 training from a feature store: same flags and code as `draftsmith train --mode offline`.
"""

import sys

from draftsmith.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("train", ["--mode", "offline", *sys.argv[1:]], prog="train_eagle3_offline.py"))
