"""The sandbox's seccomp filter: no namespaces, mounts, memfds, ptrace, keyrings, io_uring, userfaultfd, perf
events, BPF, file handles, System V IPC objects or POSIX message queues for a program, in both modes.

    program = seccomp_filter()      # classic BPF (struct sock_filter rows), or None: not written for this host
    read_end = filter_pipe()        # a pipe's read end holding it (None where there is no filter)

One filter, loaded twice over: bwrap mode hands the pipe to bwrap (--seccomp), `rlimits_only` to the runner
(sandbox_runner.load_seccomp: prctl(PR_SET_NO_NEW_PRIVS), then prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER))
before the untrusted program runs; its children inherit it. Every syscall that makes a namespace or a mount (a
nested user namespace gives a program a tmpfs of any size and CAP_SYS_ADMIN over it) or anonymous memory
outside RLIMIT_AS (memfd) fails with EPERM; clone3 with ENOSYS (its flags are behind a pointer; glibc falls
back to clone, whose flags are checked). The syscall numbers are x86_64's: on any other machine no filter is
built (a filter with another architecture's numbers would refuse the wrong calls and allow these), programs
run without one, and the first call logs a warning saying so.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import platform
import struct

log = logging.getLogger(__name__)

# Classic BPF over struct seccomp_data (nr at 0, arch at 4, args from 16).
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
DENIED_SYSCALLS = {"mount": 165, "umount2": 166, "pivot_root": 155, "unshare": 272, "setns": 308,
                   "memfd_create": 319, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
                   "fsmount": 432, "fspick": 433, "mount_setattr": 442, "memfd_secret": 447,
                   # the judge's memory (sandbox_runner: its process is not dumpable either), and the kernel
                   # keyring, which carried data from one run to the next of a worker's (one user id)
                   "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "add_key": 248,
                   "request_key": 249, "keyctl": 250,
                   # kernel surface no test program needs, denied as Docker's default profile denies it
                   "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "userfaultfd": 323,
                   "perf_event_open": 298, "bpf": 321, "name_to_handle_at": 303, "open_by_handle_at": 304,
                   # System V IPC objects outlive the run (rlimits_only: the host's IPC namespace; a segment's
                   # memory, once detached, is outside RLIMIT_AS): 128 MB of segments were left per run
                   "shmget": 29, "semget": 64, "msgget": 68,
                   # and so do POSIX message queues (mq_open works without /dev/mqueue mounted): one a run made
                   # in rlimits_only stayed in the host's kernel, counted against the sandbox user's RLIMIT_MSGQUEUE
                   "mq_open": 240}
CLONE, CLONE3 = 56, 435
CLONE_NAMESPACES = 0x7E020000  # CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET


def _bpf(program: list[tuple]) -> bytes:
    """Assemble (code, k, jump-if-true label, jump-if-false label) rows and "label" strings into sock_filter."""
    labels, rows = {}, []
    for entry in program:
        if isinstance(entry, str):
            labels[entry] = len(rows)
        else:
            rows.append(entry)
    out = b""
    for index, (code, k, true, false) in enumerate(rows):
        jump = [labels[t] - index - 1 if t else 0 for t in (true, false)]
        out += struct.pack("=HBBI", code, jump[0], jump[1], k)
    return out


@functools.lru_cache(maxsize=1)
def seccomp_filter() -> bytes | None:
    """The BPF program; None where it is not written for this machine (not x86_64), with a warning, once."""
    if platform.machine() != "x86_64":
        log.warning("code sandbox: no seccomp filter on %s (its syscall numbers are x86_64's): programs can "
                    "create namespaces, mount inside them and use memfds", platform.machine() or "this machine")
        return None
    load, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ/JGE/JSET|K, BPF_RET|K
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    program = [(load, 4, None, None), (jeq, AUDIT_ARCH_X86_64, None, "deny"),  # i386 (int 0x80): denied
               (load, 0, None, None), (jge, X32_SYSCALL_BIT, "deny", None)]  # x32 numbers: denied
    program += [(jeq, number, "deny", None) for number in DENIED_SYSCALLS.values()]
    program += [(jeq, CLONE3, "enosys", None), (jeq, CLONE, None, "allow"),
                (load, 16, None, None), (jset, CLONE_NAMESPACES, "deny", "allow"),  # clone's flags (low word)
                "allow", (ret, allow, None, None), "deny", (ret, eperm, None, None),
                "enosys", (ret, enosys, None, None)]
    return _bpf(program)


def filter_pipe() -> int | None:
    """A pipe's read end holding the filter (the reader reads to the end); None where there is no filter."""
    program = seccomp_filter()
    if program is None:
        return None
    read_end, write_end = os.pipe()
    os.write(write_end, program)  # a few hundred bytes: well under a pipe's buffer
    os.close(write_end)
    return read_end
