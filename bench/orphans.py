"""``python -m bench.orphans [TRIALS]``: SIGKILL the caller of a 2-worker job at random moments
(its first seconds included: workers starting, importing torch, training) and count the workers
still alive 10 s later. The suite runs 6 fixed moments; this runs many random ones."""

from __future__ import annotations

import random
import subprocess
import sys
import time

from tests.conftest import worker_pids
from tests.distributed.test_reliability import LONG_JOB


def main() -> None:
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    rng = random.Random(0)
    orphaned = 0
    for trial in range(trials):
        delay = rng.uniform(0.0, 5.0)
        caller = subprocess.Popen([sys.executable, "-c", LONG_JOB], stderr=subprocess.DEVNULL)
        time.sleep(delay)
        caller.kill()
        caller.wait()
        time.sleep(10)
        left = worker_pids()
        orphaned += bool(left)
        print(f"trial {trial + 1:2d}: killed after {delay:.2f} s, workers alive 10 s later: {left}")
        for pid in left:
            subprocess.run(["kill", "-9", str(pid)], check=False)
    print(f"{trials - orphaned} of {trials} trials left no worker running")


if __name__ == "__main__":
    main()
