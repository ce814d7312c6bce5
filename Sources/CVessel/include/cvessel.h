#ifndef CVESSEL_H
#define CVESSEL_H

// What Swift cannot call cleanly (variadic calls, macros, GNU-only declarations the Glibc module
// leaves out). One convention: a call that can fail returns -errno (a non-negative result is the
// answer), so no caller ever reads errno, which another call on the thread may have replaced.

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/// One fd to install in the child: `src` becomes `dst` (without close-on-exec).
struct vessel_fd_map {
    int src;
    int dst;
};

/// Creates a child with clone3(`clone_flags` | SIGCHLD), optionally in new namespaces, and executes
/// `exe_fd` (execveat AT_EMPTY_PATH) or, when exe_fd < 0, `path`. Only async-signal-safe C runs in the
/// child, so this is safe from a multi-threaded process. Every fd not in `fds` is closed on exec and
/// all signal dispositions and the signal mask are reset.
/// Returns the child's pid (or -errno when clone failed); an exec failure is stored in *exec_errno, read from a
/// close-on-exec pipe as posix_spawn does; the failed child is then reaped by the caller's reaper.
/// `pdeathsig` (0 = none) is sent to the child when the calling *thread* exits; `new_session` runs setsid();
/// `cgroup_fd` (-1 = none) is a cgroup v2 directory the child starts in; `keep_caps` (~0 = all) is the
/// bounding set the child keeps (bit n = capability n), with no_new_privs whenever it drops any;
/// `cgroup_procs_fd` (-1 = none), an open cgroup.procs of any hierarchy (v1 too), is joined before exec.
pid_t vessel_spawn(int exe_fd, const char *path, char *const argv[], char *const envp[],
                   const struct vessel_fd_map *fds, int nfds, uint64_t clone_flags, int *exec_errno,
                   int pdeathsig, int new_session, int cgroup_fd, uint64_t keep_caps, int cgroup_procs_fd);

/// fork() whose child becomes a child of our parent (CLONE_PARENT): the exec helper uses it so that
/// exec'd processes are children of the agent, which reaps them. Returns the pid, 0 in the child.
pid_t vessel_clone_parent(void);

int vessel_pivot_root(const char *new_root, const char *put_old);
int vessel_setns(int fd, int nstype);
/// The CLONE_NEW* type of the namespace an nsfs fd refers to (NS_GET_NSTYPE).
int vessel_ns_type(int fd);
int vessel_unshare(int flags);
int vessel_set_ctty(int fd);
int vessel_set_winsize(int fd, uint16_t rows, uint16_t cols);
int vessel_set_dumpable(int on);
/// openat2(2) with a resolve mask (RESOLVE_BENEATH = 0x08, RESOLVE_IN_ROOT = 0x10, RESOLVE_NO_SYMLINKS = 0x04,
/// RESOLVE_NO_MAGICLINKS = 0x02). Returns an fd.
int vessel_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve);
/// mount_setattr(2) (AT_RECURSIVE = 0x8000 for a whole tree); MOUNT_ATTR_* bits.
int vessel_mount_setattr(int dirfd, const char *path, unsigned int flags, uint64_t attr_set, uint64_t attr_clr);
/// Opens a new pty master (O_RDWR|O_NOCTTY|O_CLOEXEC) and its slave.
int vessel_openpty(int *master, int *slave);
/// Sets every fd >= `from` close-on-exec (close_range with CLOSE_RANGE_CLOEXEC, or a /proc walk).
void vessel_cloexec_from(int from);
/// waitid(P_ALL, WEXITED): returns the pid and stores a shell-style status (code, or 128+signal).
/// Returns 0 when nothing is ready (WNOHANG).
pid_t vessel_reap_one(int nohang, int *status);
int vessel_reboot_poweroff(void);
int vessel_pipe2(int fds[2], int flags);
/// A blocking AF_VSOCK stream connection to `cid`:`port` (guest side only); returns the fd
/// (close-on-exec).
int vessel_vsock_connect(uint32_t cid, uint32_t port);
/// statfs(2)'s f_type (RAMFS_MAGIC, TMPFS_MAGIC...) of the filesystem holding `path`.
long vessel_fs_type(const char *path);

/// Capabilities as 64-bit masks (bit n = capability n), set with capset(2) version 3.
int vessel_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable);
int vessel_capbset_drop(int cap);
int vessel_cap_ambient_clear(void);
int vessel_cap_ambient_raise(int cap);
int vessel_set_keepcaps(int on);
int vessel_set_no_new_privs(void);

/// A BPF_PROG_TYPE_CGROUP_DEVICE program from `count` 8-byte instructions; returns its fd.
/// `log` (may be NULL) receives the verifier's complaint.
int vessel_bpf_load_device_program(const uint64_t *insns, uint32_t count, char *log, uint32_t log_size);
/// Attaches (attach=1) or detaches (attach=0) a device program to a cgroup v2 directory fd.
int vessel_bpf_device_attach(int cgroup_fd, int prog_fd, int attach);
/// The ids of the device programs attached to the cgroup itself; *count: room in `ids`, then how many. 0 or -errno.
int vessel_bpf_device_query(int cgroup_fd, uint32_t *ids, uint32_t *count);
/// An fd of the loaded program `id`, or -errno.
int vessel_bpf_prog_fd_by_id(uint32_t id);

/// sendmsg(MSG_NOSIGNAL) of `len` bytes with `nfds` (at most 32) fds as SCM_RIGHTS. Returns the bytes sent.
ssize_t vessel_send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);
/// recvmsg of up to `len` bytes (`flags`: MSG_DONTWAIT or 0). SCM_RIGHTS fds arrive close-on-exec in
/// `fds`, at most `maxfds`: further ones are closed but counted in *nfds. *ctrunc is set when the
/// kernel cut the control data short. Returns the bytes read (0: end of stream).
ssize_t vessel_recv_fds(int sock, void *buf, size_t len, int flags, int *fds, int maxfds, int *nfds, int *ctrunc);
/// accept4(2), the connection non-blocking and close-on-exec (-EAGAIN: none waiting).
int vessel_accept(int listener);
int vessel_get_winsize(int fd, uint16_t *rows, uint16_t *cols);
int vessel_pidfd_open(pid_t pid);
/// Sets IFF_UP on the loopback interface of the caller's network namespace.
int vessel_loopback_up(void);
/// Opens /dev/net/tun and creates the tap `name` with TUNSETIFF `flags`; the fd.
int vessel_tap_open(const char *name, int flags);
/// The path of a pty master's slave (ptsname).
int vessel_ptsname(int master, char *name, size_t size);

/// One epoll event, without the packing struct epoll_event has on x86-64.
struct vessel_epoll_event {
    uint32_t events;
    uint64_t data;
};
/// epoll_create1(EPOLL_CLOEXEC).
int vessel_epoll_create(void);
/// epoll_ctl(2) with EPOLL_CTL_ADD/DEL/MOD (1, 2, 3) as `op`.
int vessel_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);
/// epoll_wait(2) for at most 64 events; returns how many are in `out`.
int vessel_epoll_wait(int epfd, struct vessel_epoll_event *out, int max, int timeout_ms);
/// A non-blocking, close-on-exec eventfd counting from 0.
int vessel_eventfd(void);
/// A close-on-exec memfd of `size` bytes.
int vessel_memfd(const char *name, uint64_t size);

// Index accesses on virtqueue rings, shared with a guest that another process runs: the driver
// publishes avail->idx with a release store after writing descriptors and ring entries, so it is
// read with acquire; used->idx is published with release after the used elements. Inline, as
// they run for every packet.
static inline uint16_t vessel_load_acquire_u16(const void *p) {
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE);
}
static inline uint16_t vessel_load_relaxed_u16(const void *p) {
    return __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED);
}
static inline void vessel_store_release_u16(void *p, uint16_t v) { __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE); }
/// Orders a store before a later load (store-load), which acquire and release do not.
static inline void vessel_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/// GNU-only open flags the Swift Glibc module does not export (same values on x86_64 and arm64).
#define VESSEL_O_PATH 010000000
#define VESSEL_O_TMPFILE 020200000


#ifdef __cplusplus
}
#endif

#endif
