"""Job entry point for `raytopo pointcloud`: the arguments are exactly those of `raytopo pointcloud`.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/pointcloud.py clusters5to3 --out runs/pc5to3

The experiment runs in the job's driver process (it needs no Ray workers); its exit status is the verdict.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("pointcloud"))
