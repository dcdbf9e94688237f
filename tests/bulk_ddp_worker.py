"""Worker for test_bulk_distributed.py, run by torchrun with 2 CPU processes (gloo): the real CLI, twice.

`vlens caption DIR --out OUT/caps.jsonl` and `vlens index build DIR --out OUT/index`, each process taking its
shard; rank 0 writes both.
"""

import sys

from vlens.cli.main import main

if __name__ == "__main__":
    images, out = sys.argv[1], sys.argv[2]
    rc = main(["caption", images, "--out", f"{out}/caps.jsonl", "--batch-size", "3", "--workers", "1"])
    rc = rc or main(["index", "build", images, "--out", f"{out}/index", "--batch-size", "3", "--workers", "1"])
    sys.exit(rc)
