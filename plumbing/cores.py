"""The cores this process may use, and how work is spread over them: the CPU replicas of
a training run, the slices of a batch that evaluate and predict run side by side, and
TensorFlow's operations at once. Sizes come from the machine the code runs on, never from
the one it was written on.

One thread inside each operation (--intra-op-threads 1): the cores that the replicas leave
over are not spent as threads, because measured here they gain nothing (two threads in one
operation: 1.01-1.03x at 128 images, 0.81-1.15x at 32; docs/performance.md).
"""

import math
import os

MIN_IMAGES_PER_REPLICA = 32  # a replica's share of the batch: below it, the matrix products of a
# step are too small to be worth a core of their own (docs/performance.md)
MAX_PREDICT_SLICES = 8  # slices of a prediction batch: the graph holds a copy of the model for
# each, and its first call takes longer the more copies it holds (docs/performance.md)


def usable_cores(cgroup_root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """How many cores this process may keep busy at once, at least 1: those of its CPU
    affinity (`taskset`, a batch system's allocation), fewer when a cgroup CPU quota (a
    container's `--cpus`) allows less.

    Python 3.13's os.process_cpu_count() is the affinity and honours PYTHON_CPU_COUNT; before
    it, os.sched_getaffinity where the system has it (Linux), else the machine's count (macOS,
    Windows). The quota is read by hand: the libraries that read it (joblib's loky, dask) come
    with a process pool or a scheduler, for one function that reads two files.
    """
    if hasattr(os, "process_cpu_count"):
        cores = os.process_cpu_count()
    elif hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count()
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cores = min(cores or quota, math.ceil(quota))
    return max(1, cores or 1)


def cgroup_cpu_quota(root, proc_cgroup):
    """The CPU quota of this process's cgroup and of those above it, in cores (2.5: two and
    a half cores' time in every period), or None where there is none (or no cgroups: not Linux).
    cgroup v2 says it in cpu.max ("250000 100000"; "max 100000": no quota), v1 in
    cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us."""
    try:
        with open(proc_cgroup) as f:
            memberships = [line.split(":", 2) for line in f.read().splitlines() if line.count(":") >= 2]
    except OSError:
        return None
    quotas = []
    for _, controllers, path in memberships:
        if controllers and "cpu" not in controllers.split(","):
            continue
        base = os.path.join(root, controllers)  # v2 ("0::/path"): the root itself
        parts = [p for p in path.strip("/").split("/") if p]
        for depth in range(len(parts), -1, -1):  # the cgroup, then each one above it
            folder = os.path.join(base, *parts[:depth])
            quota = read_quota(folder, v2=not controllers)
            if quota is not None:
                quotas.append(quota)
    return min(quotas) if quotas else None


def read_quota(folder, v2):
    try:
        if v2:
            with open(os.path.join(folder, "cpu.max")) as f:
                limit, period = f.read().split()[:2]
        else:
            with open(os.path.join(folder, "cpu.cfs_quota_us")) as f, \
                    open(os.path.join(folder, "cpu.cfs_period_us")) as g:
                limit, period = f.read().strip(), g.read().strip()
        if limit in ("max", "-1"):
            return None
        return int(limit) / int(period)
    except (OSError, ValueError):  # no such file here, or one that says nothing readable
        return None


def cpu_replicas(cores, batch_size):
    """CPU replicas for training: one per core, but none with fewer than
    MIN_IMAGES_PER_REPLICA images of the batch (64 cores and a batch of 128: 4 replicas)."""
    return max(1, min(cores, batch_size // MIN_IMAGES_PER_REPLICA))


def operations_at_once(cores, replicas):
    """TensorFlow's operations that may run at once: one per replica (or slice), each core
    running one's chain of steps; for a replica alone, two where there are two cores."""
    return replicas if replicas > 1 else min(cores, 2)


def predict_slices(cores, batch_size):
    """Slices of a prediction batch run side by side: one per core, each of
    MIN_IMAGES_PER_REPLICA images at least, at most MAX_PREDICT_SLICES."""
    return max(1, min(cores, batch_size // MIN_IMAGES_PER_REPLICA, MAX_PREDICT_SLICES))
