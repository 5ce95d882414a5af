"""`torchrun --standalone --nproc_per_node N scripts/train_eagle3_online.py --target-model-path M --train-data-path F ...`

EAGLE-3 training with the target in the loop: same flags and code as `draftsmith train --mode online`.
"""

import sys

from draftsmith.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("train", ["--mode", "online", *sys.argv[1:]], prog="train_eagle3_online.py"))
