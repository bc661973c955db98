"""Everything about several processes, below the model: torchrun's environment and the process
group (world.py: setup, teardown, the watchdog and collective timeouts, the collectives), the
host's shared page that sums batch-norm vectors (host_sum.py), and the reducer a cross-replica
batch norm is given (reduce.py)."""
from .reduce import PROCESS_GROUP, ProcessGroupSum, Reducer
from .world import (World, all_gather_objects, all_reduce_, barrier, choose_device, set_where, setup, teardown,
                    watching)

__all__ = ["PROCESS_GROUP", "ProcessGroupSum", "Reducer", "World", "all_gather_objects", "all_reduce_", "barrier",
           "choose_device", "set_where", "setup", "teardown", "watching"]
