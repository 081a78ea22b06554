"""Exec checks through the VIP path: a cgroup per real whose sockets get its mark.

The probe namespace (vip_path.py) sends a packet for a VIP to one real's MAC
only when the socket carries that real's mark. carom's own probes mark their
sockets; a command cannot be asked to. So each real probed through the VIP path
gets a cgroup, `<cgroup2>/carom-hc-<instance>/<mark>`, and a BPF program
(bpf/hc_mark.bpf.c, `cgroup/sock_create`, attached to `carom-hc-<instance>`)
gives every socket made by a process in that cgroup the real's mark: the
`carom_hc_marks` map holds cgroup id -> mark. An exec probe through the VIP path
runs its command as

    /bin/sh -c 'echo 0 > "$0" && exec "$@"' <cgroup>/cgroup.procs \\
        nsenter --net=/run/netns/carom-hc-<instance> -- <command...>

a fixed script: the shell moves itself into the real's cgroup and execs nsenter,
which enters the probe namespace and execs the command; the configured argv is
passed as arguments, never interpolated. Its children stay in the cgroup and
the namespace, so whatever the command connects to the VIP goes the DSR path of
that one real.

The cgroup v2 hierarchy is wherever it is mounted (/sys/fs/cgroup, or
/sys/fs/cgroup/unified on hybrid systems). A daemon started by `ip netns exec`
sees a fresh /sys without it; then it mounts the hierarchy itself at
/run/carom-hc-cgroup2 (the same hierarchy, one more mount point) and unmounts
it when the namespace goes."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
import subprocess

from carom.bpf import libbpf
from carom.bpf.loader import object_path
from carom.health.spec import Via

log = logging.getLogger("carom.health")

OBJECT = "hc_mark.bpf.o"
PROGRAM = "carom_hc_mark"
MAP = "carom_hc_marks"
BPF_CGROUP_INET_SOCK_CREATE = 2  # enum bpf_attach_type
BPF_F_ALLOW_MULTI = 2
NETNS_DIR = "/run/netns"
OWN_MOUNT = "/run/carom-hc-cgroup2"  # where the hierarchy is mounted if nowhere else
SCRIPT = 'echo 0 > "$0" && exec "$@"'  # $0: the cgroup.procs file; "$@": what to exec


def cgroup2_root() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or
    /sys/fs/cgroup/unified on hybrid systems), None if nowhere."""
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "cgroup2":
                    return fields[1]
    except OSError:
        return None
    return None


def cgroup_of(via: Via) -> str | None:
    """The cgroup directory of the real that `via` leads to."""
    root = cgroup2_root()
    if root is None or not via.netns:
        return None
    return os.path.join(root, via.netns, str(via.mark))


def argv(via: Via, command: tuple[str, ...]) -> list[str]:
    """The command line of an exec probe through the VIP path (module doc).
    Raises OSError when that path is not set up for the real."""
    cgroup = cgroup_of(via)
    if cgroup is None:
        raise OSError(errno.ENOENT, "no probe namespace or no cgroup2 mount for exec via: vip")
    procs = os.path.join(cgroup, "cgroup.procs")
    if not os.path.exists(procs):
        raise OSError(errno.ENOENT, f"exec via: vip is not set up ({cgroup} is missing)")
    netns = f"--net={os.path.join(NETNS_DIR, via.netns)}"
    return ["/bin/sh", "-c", SCRIPT, procs, "nsenter", netns, "--", *command]


class ExecMarks:
    """The cgroups and the marking program of one probe namespace."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self._mounted = False
        root = cgroup2_root()
        if root is None:
            os.makedirs(OWN_MOUNT, exist_ok=True)
            proc = subprocess.run(
                ["mount", "-t", "cgroup2", "none", OWN_MOUNT],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if proc.returncode != 0:
                raise OSError(
                    errno.ENOENT,
                    f"no cgroup2 hierarchy is mounted, and mounting one failed: "
                    f"{proc.stderr.strip()}",
                )
            self._mounted, root = True, OWN_MOUNT
        self.dir = os.path.join(root, netns)
        self._obj: libbpf.BpfObject | None = None
        self._map_fd = -1
        self._ids: dict[int, int] = {}  # mark -> cgroup id in the map

    def up(self) -> None:
        """Make the namespace's cgroup (anew if a previous run left one) and
        attach the program to it."""
        self._remove()
        os.makedirs(self.dir, exist_ok=True)
        obj = libbpf.BpfObject(object_path(OBJECT))
        try:
            obj.load()
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
            try:
                libbpf.prog_attach(
                    obj.program_fd(PROGRAM), fd, BPF_CGROUP_INET_SOCK_CREATE, BPF_F_ALLOW_MULTI
                )
            finally:
                os.close(fd)
        except BaseException:
            obj.close()
            raise
        self._obj = obj
        self._map_fd = obj.map(MAP).fd

    def sync(self, marks: set[int]) -> None:
        """A cgroup, and its entry in the map, for exactly these marks."""
        if self._obj is None:
            return
        for mark in [m for m in self._ids if m not in marks]:
            libbpf.map_delete(self._map_fd, struct.pack("Q", self._ids.pop(mark)))
            with contextlib.suppress(OSError):  # busy: a probe still runs; next time
                os.rmdir(os.path.join(self.dir, str(mark)))
        for mark in sorted(marks - self._ids.keys()):
            path = os.path.join(self.dir, str(mark))
            os.makedirs(path, exist_ok=True)
            cgroup_id = os.stat(path).st_ino  # cgroup v2: the id is the inode number
            libbpf.map_update(self._map_fd, struct.pack("Q", cgroup_id), struct.pack("I", mark))
            self._ids[mark] = cgroup_id

    def down(self) -> None:
        """Remove the cgroups (the program goes with the last of them)."""
        self._ids.clear()
        self._remove()
        if self._obj is not None:
            self._obj.close()
            self._obj = None
        if self._mounted:
            subprocess.run(["umount", OWN_MOUNT], capture_output=True, timeout=30)
            with contextlib.suppress(OSError):
                os.rmdir(OWN_MOUNT)
            self._mounted = False

    def _remove(self) -> None:
        if not os.path.isdir(self.dir):
            return
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            if os.path.isdir(path):
                try:
                    os.rmdir(path)
                except OSError as exc:  # a command still running in it
                    log.warning("cgroup left behind", extra={"path": path, "error": str(exc)})
        with contextlib.suppress(OSError):
            os.rmdir(self.dir)
