"""A seccomp filter for the code sandbox, built in pure Python (no libseccomp).

Why: bubblewrap gives the sandbox its own namespaces, but the kernel's keyring is not
namespaced (a key added inside persists in the host kernel and is readable by a later
sandbox with the same uid), and nested user namespaces expose kernel attack surface that
no solution needs. The filter answers EPERM to:

- the keyring: ``add_key``, ``keyctl``, ``request_key``;
- new namespaces: ``unshare``, ``setns``, ``clone`` with any ``CLONE_NEW*`` flag, and
  ``clone3`` (ENOSYS, so that libc falls back to ``clone``, whose flags a filter can read);
- mounts and root changes: ``mount``, ``umount2``, ``pivot_root``, ``chroot`` and the new
  mount API (``open_tree``, ``move_mount``, ``fsopen``, ``fsconfig``, ``fsmount``, ``fspick``,
  ``mount_setattr``);
- looking into other processes: ``ptrace``, ``process_vm_readv``/``writev``, ``kcmp``,
  ``pidfd_getfd``;
- rarely needed kernel surface: ``bpf``, ``perf_event_open``, ``userfaultfd``, ``io_uring_*``,
  ``kexec_*``, module loading, ``open_by_handle_at``, ``name_to_handle_at``, ``personality``.

A system call of another architecture (a 32-bit ``int 0x80`` on x86_64, or x32 numbers)
kills the process: the numbers above would not match it. :func:`build` returns the program
as the raw ``struct sock_filter`` array that ``bwrap --seccomp FD`` loads just before it
runs the server, so every test process, forked from the server, inherits it.
"""

from __future__ import annotations

import errno
import platform
import struct

# BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h).
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
RET_KILL_PROCESS = 0x80000000

# Offsets in struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6].
_NR, _ARCH, _ARG0_LOW = 0, 4, 16  # args[0] low word (little-endian machines only, as both below are)

#: Every CLONE_NEW* flag that fits clone's flags word: NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET.
CLONE_NEW_MASK = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
CLONE_NEWUSER = 0x10000000

_COMMON = {  # the unified numbers (>= 424) are the same on every architecture
    "pidfd_getfd": 438,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
}

#: (AUDIT_ARCH value, deny table, clone, clone3, first number of a foreign ABI to kill or None)
ARCHES: dict[str, tuple[int, dict[str, int], int, int, int | None]] = {
    "x86_64": (
        0xC000003E,
        {
            "add_key": 248,
            "request_key": 249,
            "keyctl": 250,
            "unshare": 272,
            "setns": 308,
            "mount": 165,
            "umount2": 166,
            "pivot_root": 155,
            "chroot": 161,
            "ptrace": 101,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "kcmp": 312,
            "bpf": 321,
            "perf_event_open": 298,
            "userfaultfd": 323,
            "kexec_load": 246,
            "kexec_file_load": 320,
            "init_module": 175,
            "finit_module": 313,
            "delete_module": 176,
            "open_by_handle_at": 304,
            "name_to_handle_at": 303,
            "personality": 135,
            **_COMMON,
        },
        56,
        435,
        0x40000000,  # __X32_SYSCALL_BIT
    ),
    "aarch64": (
        0xC00000B7,
        {
            "add_key": 217,
            "request_key": 218,
            "keyctl": 219,
            "unshare": 97,
            "setns": 268,
            "mount": 40,
            "umount2": 39,
            "pivot_root": 41,
            "chroot": 51,
            "ptrace": 117,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "kcmp": 272,
            "bpf": 280,
            "perf_event_open": 241,
            "userfaultfd": 282,
            "kexec_load": 104,
            "kexec_file_load": 294,
            "init_module": 105,
            "finit_module": 273,
            "delete_module": 106,
            "open_by_handle_at": 265,
            "name_to_handle_at": 264,
            "personality": 92,
            **_COMMON,
        },
        220,
        435,
        None,
    ),
}


class SeccompUnsupported(RuntimeError):
    """No filter is known for this machine's architecture."""


def _insn(code: int, k: int, jt: int | str = 0, jf: int | str = 0) -> tuple[int, int, int | str, int | str]:
    return (code, k, jt, jf)


def build(machine: str | None = None) -> bytes:
    """The filter for ``machine`` (default: this one) as a ``struct sock_filter[]`` byte string.

    Raises SeccompUnsupported for an architecture without a table (the caller refuses to
    start rather than run without the filter).
    """
    machine = machine or platform.machine()
    if machine not in ARCHES:
        raise SeccompUnsupported(
            f"no seccomp filter for architecture {machine!r} (known: {', '.join(ARCHES)}); "
            "the code sandbox refuses to start without one"
        )
    audit_arch, deny, clone_nr, clone3_nr, foreign = ARCHES[machine]
    # Jump targets are labels, resolved below into the relative offsets BPF wants.
    prog: list[tuple[int, int, int | str, int | str]] = [
        _insn(_LD_W_ABS, _ARCH),
        _insn(_JEQ_K, audit_arch, 0, "kill"),
        _insn(_LD_W_ABS, _NR),
    ]
    if foreign is not None:
        prog.append(_insn(_JGE_K, foreign, "kill", 0))
    for nr in sorted(set(deny.values())):
        prog.append(_insn(_JEQ_K, nr, "eperm", 0))
    prog.append(_insn(_JEQ_K, clone3_nr, "enosys", 0))
    prog.append(_insn(_JEQ_K, clone_nr, "clone", "allow"))
    labels: dict[str, int] = {}
    for name, insns in (
        ("clone", [_insn(_LD_W_ABS, _ARG0_LOW), _insn(_JSET_K, CLONE_NEW_MASK, "eperm", "allow")]),
        ("allow", [_insn(_RET_K, RET_ALLOW)]),  # BPF jumps only forward: every return comes last
        ("eperm", [_insn(_RET_K, RET_ERRNO | errno.EPERM)]),
        ("enosys", [_insn(_RET_K, RET_ERRNO | errno.ENOSYS)]),
        ("kill", [_insn(_RET_K, RET_KILL_PROCESS)]),
    ):
        labels[name] = len(prog)
        prog.extend(insns)
    out = bytearray()
    for i, (code, k, jt, jf) in enumerate(prog):
        offs = [labels[j] - (i + 1) if isinstance(j, str) else j for j in (jt, jf)]
        if not all(0 <= o <= 255 for o in offs):
            raise AssertionError(f"seccomp jump out of range at {i}: {offs}")
        out += struct.pack("=HBBI", code, offs[0], offs[1], k)
    return bytes(out)
