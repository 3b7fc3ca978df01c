"""Job entry point for `raytopo score`: the arguments are exactly those of `raytopo score`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/score.py CHECKPOINT [--per-count 8] [--json] [--out FILE]

Inside a job Ray sets ``RAY_ADDRESS``, so the command attaches to the cluster instead of starting one.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("score"))
