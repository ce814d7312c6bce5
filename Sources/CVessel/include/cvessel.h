#ifndef CVESSEL_H
#define CVESSEL_H

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
/// exec'd processes are children of the agent, which reaps them. Returns like fork.
pid_t vessel_clone_parent(void);

int vessel_pivot_root(const char *new_root, const char *put_old);
int vessel_setns(int fd, int nstype);
/* The CLONE_NEW* type of the namespace an nsfs fd refers to (NS_GET_NSTYPE), or -1 and errno. */
int vessel_ns_type(int fd);
int vessel_unshare(int flags);
int vessel_sethostname(const char *name, size_t len);
int vessel_setgroups(size_t n, const gid_t *groups);
int vessel_set_ctty(int fd);
int vessel_set_winsize(int fd, uint16_t rows, uint16_t cols);
int vessel_set_child_subreaper(void);
int vessel_set_pdeathsig(int sig);
int vessel_set_dumpable(int on);
/// openat2(2) with a resolve mask (RESOLVE_BENEATH = 0x08, RESOLVE_IN_ROOT = 0x10, RESOLVE_NO_SYMLINKS = 0x04,
/// RESOLVE_NO_MAGICLINKS = 0x02). Returns an fd or -1 with errno.
int vessel_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve);
/// mount_setattr(2) (AT_RECURSIVE = 0x8000 for a whole tree); MOUNT_ATTR_* bits. Returns 0 or -1 with errno.
int vessel_mount_setattr(int dirfd, const char *path, unsigned int flags, uint64_t attr_set, uint64_t attr_clr);
/// Opens a new pty master (O_RDWR|O_NOCTTY|O_CLOEXEC) and its slave; returns 0 or -errno.
int vessel_openpty(int *master, int *slave);
int vessel_execveat(int fd, char *const argv[], char *const envp[]);
/// Sets every fd >= `from` close-on-exec (close_range with CLOSE_RANGE_CLOEXEC, or a /proc walk).
void vessel_cloexec_from(int from);
/// waitid(P_ALL, WEXITED): returns the pid and stores a shell-style status (code, or 128+signal).
/// Returns 0 when nothing is ready (WNOHANG), -errno on error.
pid_t vessel_reap_one(int nohang, int *status);
int vessel_reboot_poweroff(void);
int vessel_pipe2(int fds[2], int flags);
/// A blocking AF_VSOCK stream connection to `cid`:`port` (guest side only); returns the fd
/// (close-on-exec) or -errno.
int vessel_vsock_connect(uint32_t cid, uint32_t port);
/// statfs(2)'s f_type (RAMFS_MAGIC, TMPFS_MAGIC...) of the filesystem holding `path`, or -1 with errno.
long vessel_fs_type(const char *path);

/// Capabilities as 64-bit masks (bit n = capability n), set with capset(2) version 3.
int vessel_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable);
int vessel_capbset_drop(int cap);
int vessel_cap_ambient_clear(void);
int vessel_cap_ambient_raise(int cap);
int vessel_set_keepcaps(int on);
int vessel_set_no_new_privs(void);

/// A BPF_PROG_TYPE_CGROUP_DEVICE program from `count` 8-byte instructions; returns its fd or -errno.
/// `log` (may be NULL) receives the verifier's complaint.
int vessel_bpf_load_device_program(const uint64_t *insns, uint32_t count, char *log, uint32_t log_size);
/// Attaches (attach=1) or detaches (attach=0) a device program to a cgroup v2 directory fd.
int vessel_bpf_device_attach(int cgroup_fd, int prog_fd, int attach);
/// The ids of the device programs attached to the cgroup itself; *count: room in `ids`, then how many. 0 or -errno.
int vessel_bpf_device_query(int cgroup_fd, uint32_t *ids, uint32_t *count);
/// An fd of the loaded program `id`, or -errno.
int vessel_bpf_prog_fd_by_id(uint32_t id);

/// Sends `fd` over a Unix socket with SCM_RIGHTS, `name` as the payload (runc's console-socket protocol).
int vessel_send_fd(int sock, const char *name, int fd);
/// Receives one fd sent with SCM_RIGHTS (close-on-exec); the payload goes to `name`. Returns the fd or -errno.
int vessel_recv_fd(int sock, char *name, size_t name_size);
int vessel_get_winsize(int fd, uint16_t *rows, uint16_t *cols);
int vessel_pidfd_open(pid_t pid);
/// Sets IFF_UP on the loopback interface of the caller's network namespace; -errno on failure.
int vessel_loopback_up(void);
/// Opens /dev/net/tun and creates the tap `name` with TUNSETIFF `flags`; the fd or -errno.
int vessel_tap_open(const char *name, int flags);
/// The path of a pty master's slave (ptsname); -errno on failure.
int vessel_ptsname(int master, char *name, size_t size);

/// GNU-only open flags the Swift Glibc module does not export (same values on x86_64 and arm64).
#define VESSEL_O_PATH 010000000
#define VESSEL_O_TMPFILE 020200000


#ifdef __cplusplus
}
#endif

#endif
