"""What /proc says of processes, for the test drivers (ci/chaos.py,
ci/cluster.py): a process's stat fields, its command line, its children."""
import os


class Proc:
    __slots__ = ("pid", "comm", "state", "ppid", "pgrp", "starttime")

    def __init__(self, pid, stat):
        self.pid = pid
        self.comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        self.state = fields[0]
        self.ppid = int(fields[1])
        self.pgrp = int(fields[2])
        self.starttime = int(fields[19])


def read_proc(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return Proc(pid, f.read())
    except (OSError, ValueError, IndexError):
        return None


def all_procs():
    procs = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            p = read_proc(int(name))
            if p:
                procs[p.pid] = p
    return procs


def read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def cmdline(pid):
    return read_bytes(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode("utf-8", "replace").strip()


def children(pid):
    """Children of every thread of `pid`."""
    kids = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return kids
    for task in tasks:
        kids += [int(k) for k in read_bytes(f"/proc/{pid}/task/{task}/children").split()]
    return kids
