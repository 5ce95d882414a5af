"""`torchrun --nproc_per_node=N scripts/prepare_hidden_states.py ...`: the hidden-states stage.

Same flags and code as `draftsmith hidden-states`; also runs as a plain python process.
"""

import sys

from draftsmith.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("hidden-states", sys.argv[1:], prog="prepare_hidden_states.py"))
