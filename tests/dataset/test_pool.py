"""The analysis pool's forked workers: their cycle collector runs, but never over what they inherited."""

from __future__ import annotations

import json
import subprocess
import sys

# Run in a new interpreter: a pool forks only from a process that runs no other thread, which the test runner's
# process may not be by then.
CHECK = r"""
import gc, json, os
from pipelines.procutil import worker_pool

def state():
    return gc.get_freeze_count(), gc.isenabled(), os.getppid()

inherited = [[i] for i in range(50_000)]  # what a worker's first collection would otherwise walk (and copy)
gc.disable()  # as the builder runs
with worker_pool(2, fork=True) as pool:
    parent_frozen = gc.get_freeze_count()
    states = sorted({pool.submit(state).result() for _ in range(4)})
print(json.dumps({"parent_frozen": parent_frozen, "states": states, "pid": os.getpid(), "made": len(inherited)}))
"""


def test_forked_workers_leave_the_objects_they_inherited_out_of_their_collections() -> None:
    found = json.loads(subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True).stdout)
    assert found["parent_frozen"] == 0  # this process's collector sees all of its objects again
    for frozen, enabled, parent in found["states"]:
        assert parent == found["pid"]  # forked from it
        assert enabled  # collecting what they make themselves
        assert frozen >= found["made"]  # but not what they inherited
