"""Job entry point for `raytopo tune`: the arguments are exactly those of `raytopo tune`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/tune.py SPACE.yaml [--num-samples N] [--resume]

Inside a job Ray sets ``RAY_ADDRESS``, so the command attaches to the cluster instead of starting one.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("tune"))
