"""Job entry point for `raytopo study`: the arguments are exactly those of `raytopo study`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/study.py STUDY.yaml [--resume]

Inside a job Ray sets ``RAY_ADDRESS``, so the command attaches to the cluster instead of starting one.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("study"))
