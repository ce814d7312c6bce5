#define _GNU_SOURCE
#include "cvessel.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/bpf.h>
#include <linux/capability.h>
#include <linux/sched.h>
#include <linux/nsfs.h>
#include <linux/openat2.h>
#include <linux/vm_sockets.h>
#include <net/if.h>
#include <linux/if_tun.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/auxv.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

// A system call's -1 and errno as the one return this module has: -errno.
static long or_errno(long rc) { return rc < 0 ? -errno : rc; }

#define NEW_ROOT "/.vessel-root"

static int copy_file(const char *from, const char *to, mode_t mode) {
    int in = open(from, O_RDONLY | O_CLOEXEC);
    if (in < 0)
        return -1;
    int out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (out < 0) {
        close(in);
        return -1;
    }
    char buffer[65536];
    ssize_t n;
    int rc = 0;
    while ((n = read(in, buffer, sizeof(buffer))) > 0) {
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(out, buffer + done, (size_t)(n - done));
            if (w < 0) {
                rc = -1;
                break;
            }
            done += w;
        }
        if (rc < 0)
            break;
    }
    if (n < 0)
        rc = -1;
    close(in);
    close(out);
    return rc;
}

// The running executable (the agent, /init): it is not copied, only kept alive by its mapping and
// by the fd the agent opens from /proc/self/exe; copying its 20 MB cost up to 0.3 s of a TCG boot.
static dev_t self_dev;
static ino_t self_ino;

// One entry of the initramfs into the new root (the rootfs has no other mounts yet).
static int copy_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)ftw;
    if (strcmp(path, "/") == 0)
        return 0;
    if (strncmp(path, NEW_ROOT, sizeof(NEW_ROOT) - 1) == 0)
        return 0;
    if (st->st_dev == self_dev && st->st_ino == self_ino)
        return 0;
    char target[4096];
    if (snprintf(target, sizeof(target), NEW_ROOT "%s", path) >= (int)sizeof(target))
        return -1;
    mode_t mode = st->st_mode & 07777;
    switch (st->st_mode & S_IFMT) {
    case S_IFDIR:
        return (flag == FTW_D && mkdir(target, mode) == 0) ? 0 : -1;
    case S_IFREG:
        return copy_file(path, target, mode);
    case S_IFLNK: {
        char link[4096];
        ssize_t n = readlink(path, link, sizeof(link) - 1);
        if (n < 0)
            return -1;
        link[n] = 0;
        return symlink(link, target);
    }
    default:
        return mknod(target, st->st_mode, st->st_rdev);
    }
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    if (strcmp(path, "/") == 0 || strncmp(path, NEW_ROOT, sizeof(NEW_ROOT) - 1) == 0)
        return 0;
    remove(path);
    return 0;
}

// pivot_root(2) cannot leave the kernel's rootfs, so containers entered from it need MS_MOVE +
// chroot, with the initramfs left underneath them. Much as switch_root does: copy the initramfs,
// but for our own executable, onto a tmpfs, empty the rootfs (its memory is freed, but for that
// still-mapped file), move the tmpfs onto "/" and chroot into it, still PID 1 and without an exec.
// Any failure leaves the initramfs as it was (the agent then uses MS_MOVE + chroot and says so).
static void switch_to_tmpfs_root(void) {
    struct statfs fs;
    if (statfs("/", &fs) != 0 || (fs.f_type != 0x858458f6 && fs.f_type != 0x01021994))
        return;
    const char *self = (const char *)getauxval(AT_EXECFN);
    struct stat st;
    if (self == NULL || stat(self, &st) != 0)
        return;
    self_dev = st.st_dev;
    self_ino = st.st_ino;
    if (mkdir(NEW_ROOT, 0755) != 0)
        return;
    if (mount("tmpfs", NEW_ROOT, "tmpfs", 0, "mode=0755") != 0) {
        rmdir(NEW_ROOT);
        return;
    }
    if (nftw("/", copy_entry, 64, FTW_PHYS | FTW_MOUNT) != 0) {
        umount2(NEW_ROOT, MNT_DETACH);
        rmdir(NEW_ROOT);
        return;
    }
    nftw("/", remove_entry, 64, FTW_PHYS | FTW_MOUNT | FTW_DEPTH);
    if (chdir(NEW_ROOT) == 0 && mount(".", "/", NULL, MS_MOVE, NULL) == 0 && chroot(".") == 0)
        chdir("/");
}

// A static Swift binary resolves /proc/self/exe before main; as PID 1 of a fresh initrd /proc is not
// mounted yet, so mount it here, earlier than the Swift runtime. Only when /proc is really missing:
// the container-init helper is PID 1 of its own pid namespace too, but sees the host's /proc.
__attribute__((constructor(101))) static void vessel_pid1_early(void) {
    if (getpid() != 1 || access("/proc/self/exe", F_OK) == 0)
        return;
    switch_to_tmpfs_root();
    mkdir("/proc", 0555);
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
}

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif

/// `cgroup_fd` >= 0: the child starts in that cgroup v2 directory (CLONE_INTO_CGROUP), so it is
/// never outside it, not even for the instant a later cgroup.procs write would leave.
static pid_t raw_clone3(uint64_t flags, uint64_t exit_signal, int cgroup_fd) {
    struct clone_args args;
    memset(&args, 0, sizeof(args));
    args.flags = flags;
    args.exit_signal = exit_signal;
    if (cgroup_fd >= 0) {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = (uint64_t)cgroup_fd;
    }
    long rc = syscall(SYS_clone3, &args, sizeof(args));
    if (rc < 0 && errno == ENOSYS && flags == 0 && cgroup_fd < 0)
        rc = fork();
    return (pid_t)or_errno(rc);
}

void vessel_cloexec_from(int from) {
    if (syscall(SYS_close_range, (unsigned)from, ~0U, CLOSE_RANGE_CLOEXEC) == 0)
        return;
    // Kernels before 5.11: walk the possible fd numbers.
    long max = sysconf(_SC_OPEN_MAX);
    for (int fd = from; fd < max && fd < 65536; fd++) {
        int fl = fcntl(fd, F_GETFD);
        if (fl >= 0)
            fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
    }
}

static void spawn_fail(int errpipe) {
    int err = errno;
    while (write(errpipe, &err, sizeof(err)) < 0 && errno == EINTR) {
    }
    _exit(127);
}

// Runs in the cloned child: async-signal-safe calls only.
static void spawn_child(int exe_fd, const char *path, char *const argv[], char *const envp[],
                        const struct vessel_fd_map *fds, int nfds, int errpipe, int pdeathsig, pid_t parent,
                        int new_session, uint64_t keep_caps, int cgroup_procs_fd) {
    sigset_t all;
    sigemptyset(&all);
    for (int sig = 1; sig < NSIG; sig++)
        signal(sig, SIG_DFL);
    sigprocmask(SIG_SETMASK, &all, NULL);
    if (new_session && setsid() < 0)
        spawn_fail(errpipe);
    // "0" moves the writer itself: the child runs nothing before it is in that cgroup (v1 too).
    if (cgroup_procs_fd >= 0 && write(cgroup_procs_fd, "0", 1) != 1)
        spawn_fail(errpipe);
    // The parent may have died before prctl: then nobody would ever send the signal.
    if (pdeathsig && (prctl(PR_SET_PDEATHSIG, pdeathsig, 0, 0, 0) < 0 || getppid() != parent)) {
        errno = ESRCH;
        spawn_fail(errpipe);
    }
    // For a root child the bounding set is what it keeps across exec; no_new_privs stops setuid
    // files and file capabilities from giving anything back.
    if (keep_caps != ~0ULL) {
        for (int cap = 0; cap < 64; cap++)
            if (!(keep_caps & (1ULL << cap)) && prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1 &&
                prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
                spawn_fail(errpipe);
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
            spawn_fail(errpipe);
    }

    int base = 3;
    for (int i = 0; i < nfds; i++)
        if (fds[i].dst >= base)
            base = fds[i].dst + 1;
    // Move everything we still need above every destination before the dup2s can clobber it.
    errpipe = fcntl(errpipe, F_DUPFD_CLOEXEC, base);
    if (exe_fd >= 0)
        exe_fd = fcntl(exe_fd, F_DUPFD_CLOEXEC, base);
    int tmp[nfds > 0 ? nfds : 1];
    for (int i = 0; i < nfds; i++)
        tmp[i] = fcntl(fds[i].src, F_DUPFD_CLOEXEC, base);
    for (int i = 0; i < nfds; i++) {
        if (tmp[i] < 0 || dup2(tmp[i], fds[i].dst) < 0)
            goto fail;
    }
    vessel_cloexec_from(base);
    if (exe_fd >= 0)
        syscall(SYS_execveat, exe_fd, "", argv, envp, AT_EMPTY_PATH);
    else
        execve(path, argv, envp);
fail:;
    int err = errno;
    while (write(errpipe, &err, sizeof(err)) < 0 && errno == EINTR) {
    }
    _exit(127);
}

pid_t vessel_spawn(int exe_fd, const char *path, char *const argv[], char *const envp[],
                   const struct vessel_fd_map *fds, int nfds, uint64_t clone_flags, int *exec_errno,
                   int pdeathsig, int new_session, int cgroup_fd, uint64_t keep_caps, int cgroup_procs_fd) {
    int pipefd[2];
    pid_t parent = getpid();
    *exec_errno = 0;
    if (pipe2(pipefd, O_CLOEXEC) < 0)
        return -errno;
    pid_t pid = raw_clone3(clone_flags, SIGCHLD, cgroup_fd);
    if (pid == 0) {
        close(pipefd[0]);
        spawn_child(exe_fd, path, argv, envp, fds, nfds, pipefd[1], pdeathsig, parent, new_session, keep_caps,
                    cgroup_procs_fd);
    }
    close(pipefd[1]);
    if (pid < 0) {
        close(pipefd[0]);
        return pid;
    }
    int err = 0;
    ssize_t n;
    do {
        n = read(pipefd[0], &err, sizeof(err));
    } while (n < 0 && errno == EINTR);
    close(pipefd[0]);
    if (n == sizeof(err))
        *exec_errno = err;
    return pid;
}

pid_t vessel_clone_parent(void) {
    // clone3 requires exit_signal 0 with CLONE_PARENT; the child inherits our own exit signal (SIGCHLD).
    return raw_clone3(CLONE_PARENT, 0, -1);
}

int vessel_pivot_root(const char *new_root, const char *put_old) {
    return (int)or_errno(syscall(SYS_pivot_root, new_root, put_old));
}

int vessel_setns(int fd, int nstype) { return (int)or_errno(setns(fd, nstype)); }
int vessel_ns_type(int fd) { return (int)or_errno(ioctl(fd, NS_GET_NSTYPE)); }
int vessel_unshare(int flags) { return (int)or_errno(unshare(flags)); }
int vessel_set_ctty(int fd) { return (int)or_errno(ioctl(fd, TIOCSCTTY, 0)); }

int vessel_set_winsize(int fd, uint16_t rows, uint16_t cols) {
    struct winsize ws = {.ws_row = rows, .ws_col = cols};
    return (int)or_errno(ioctl(fd, TIOCSWINSZ, &ws));
}

int vessel_set_dumpable(int on) { return (int)or_errno(prctl(PR_SET_DUMPABLE, on, 0, 0, 0)); }

int vessel_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve) {
    struct open_how how;
    memset(&how, 0, sizeof(how));
    how.flags = flags;
    how.mode = mode;
    how.resolve = resolve;
    return (int)or_errno(syscall(SYS_openat2, dirfd, path, &how, sizeof(how)));
}

int vessel_mount_setattr(int dirfd, const char *path, unsigned int flags, uint64_t attr_set, uint64_t attr_clr) {
    struct mount_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.attr_set = attr_set;
    attr.attr_clr = attr_clr;
    return (int)or_errno(syscall(SYS_mount_setattr, dirfd, path, flags, &attr, sizeof(attr)));
}

int vessel_openpty(int *master, int *slave) {
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (m < 0)
        return -errno;
    if (unlockpt(m) < 0)
        goto fail;
    // TIOCGPTPEER opens the slave of this very master, immune to /dev/pts path games.
    int s = ioctl(m, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (s < 0) {
        char name[64];
        if (ptsname_r(m, name, sizeof(name)) != 0)
            goto fail;
        s = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (s < 0)
            goto fail;
    }
    *master = m;
    *slave = s;
    return 0;
fail:;
    int err = errno;
    close(m);
    return -err;
}

pid_t vessel_reap_one(int nohang, int *status) {
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    int rc;
    do {
        rc = waitid(P_ALL, 0, &info, WEXITED | (nohang ? WNOHANG : 0));
    } while (rc < 0 && errno == EINTR);
    if (rc < 0)
        return -errno;
    if (info.si_pid == 0)
        return 0;
    *status = info.si_code == CLD_EXITED ? info.si_status : 128 + info.si_status;
    return info.si_pid;
}

int vessel_reboot_poweroff(void) {
    sync();
    return (int)or_errno(reboot(RB_POWER_OFF));
}

int vessel_pipe2(int fds[2], int flags) { return (int)or_errno(pipe2(fds, flags)); }

int vessel_vsock_connect(uint32_t cid, uint32_t port) {
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct sockaddr_vm addr;
    memset(&addr, 0, sizeof(addr));
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = cid;
    addr.svm_port = port;
    int rc;
    do {
        rc = connect(fd, (struct sockaddr *)&addr, sizeof(addr));
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

long vessel_fs_type(const char *path) {
    struct statfs fs;
    if (statfs(path, &fs) < 0)
        return -errno;
    return (long)fs.f_type;
}

int vessel_capset(uint64_t effective, uint64_t permitted, uint64_t inheritable) {
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    data[0].effective = (uint32_t)effective;
    data[1].effective = (uint32_t)(effective >> 32);
    data[0].permitted = (uint32_t)permitted;
    data[1].permitted = (uint32_t)(permitted >> 32);
    data[0].inheritable = (uint32_t)inheritable;
    data[1].inheritable = (uint32_t)(inheritable >> 32);
    return (int)or_errno(syscall(SYS_capset, &header, data));
}

int vessel_capbset_drop(int cap) { return (int)or_errno(prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)); }
int vessel_cap_ambient_clear(void) { return (int)or_errno(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)); }
int vessel_cap_ambient_raise(int cap) { return (int)or_errno(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0)); }
int vessel_set_keepcaps(int on) { return (int)or_errno(prctl(PR_SET_KEEPCAPS, on, 0, 0, 0)); }
int vessel_set_no_new_privs(void) { return (int)or_errno(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)); }

int vessel_bpf_load_device_program(const uint64_t *insns, uint32_t count, char *log, uint32_t log_size) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
    attr.insn_cnt = count;
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.license = (uint64_t)(uintptr_t)"Apache-2.0";
    if (log && log_size) {
        log[0] = 0;
        attr.log_buf = (uint64_t)(uintptr_t)log;
        attr.log_size = log_size;
        attr.log_level = 1;
    }
    return (int)or_errno(syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof(attr)));
}

int vessel_bpf_device_attach(int cgroup_fd, int prog_fd, int attach) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.target_fd = cgroup_fd;
    attr.attach_bpf_fd = prog_fd;
    attr.attach_type = BPF_CGROUP_DEVICE;
    attr.attach_flags = attach ? BPF_F_ALLOW_MULTI : 0;
    return (int)or_errno(syscall(SYS_bpf, attach ? BPF_PROG_ATTACH : BPF_PROG_DETACH, &attr, sizeof(attr)));
}

int vessel_bpf_device_query(int cgroup_fd, uint32_t *ids, uint32_t *count) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.query.target_fd = cgroup_fd;
    attr.query.attach_type = BPF_CGROUP_DEVICE;
    attr.query.prog_ids = (uint64_t)(uintptr_t)ids;
    attr.query.prog_cnt = *count;
    if (syscall(SYS_bpf, BPF_PROG_QUERY, &attr, sizeof(attr)) < 0) return -errno;
    *count = attr.query.prog_cnt;
    return 0;
}

int vessel_bpf_prog_fd_by_id(uint32_t id) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_id = id;
    return (int)or_errno(syscall(SYS_bpf, BPF_PROG_GET_FD_BY_ID, &attr, sizeof(attr)));
}

#define MAX_PASSED_FDS 32

ssize_t vessel_send_fds(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    union {
        char buf[CMSG_SPACE(MAX_PASSED_FDS * sizeof(int))];
        struct cmsghdr align;
    } control;
    if (nfds < 0 || nfds > MAX_PASSED_FDS)
        return -EINVAL;
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        memset(&control, 0, sizeof(control));
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(cmsg), fds, nfds * sizeof(int));
    }
    ssize_t n;
    do {
        n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    return or_errno(n);
}

ssize_t vessel_recv_fds(int sock, void *buf, size_t len, int flags, int *fds, int maxfds, int *nfds, int *ctrunc) {
    union {
        char buf[CMSG_SPACE(MAX_PASSED_FDS * sizeof(int))];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof(control));
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof(control.buf)};
    *nfds = 0;
    *ctrunc = 0;
    ssize_t n;
    do {
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | flags);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    *ctrunc = (msg.msg_flags & MSG_CTRUNC) != 0;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
            continue;
        int count = (int)((cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
            // Beyond what the caller takes, nobody would ever close them.
            if (*nfds < maxfds)
                fds[*nfds] = fd;
            else
                close(fd);
            (*nfds)++;
        }
    }
    return n;
}

int vessel_accept(int listener) {
    int fd;
    do {
        fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    return (int)or_errno(fd);
}

int vessel_get_winsize(int fd, uint16_t *rows, uint16_t *cols) {
    struct winsize ws;
    if (ioctl(fd, TIOCGWINSZ, &ws) < 0)
        return -errno;
    *rows = ws.ws_row;
    *cols = ws.ws_col;
    return 0;
}

int vessel_pidfd_open(pid_t pid) { return (int)or_errno(syscall(SYS_pidfd_open, pid, 0)); }

int vessel_loopback_up(void) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    int rc = ioctl(fd, SIOCGIFFLAGS, &ifr);
    if (rc == 0) {
        ifr.ifr_flags |= IFF_UP;
        rc = ioctl(fd, SIOCSIFFLAGS, &ifr);
    }
    int err = rc < 0 ? -errno : 0;
    close(fd);
    return err;
}

int vessel_ptsname(int master, char *name, size_t size) {
    int rc = ptsname_r(master, name, size);
    return rc == 0 ? 0 : -rc;
}

int vessel_tap_open(const char *name, int flags) {
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof(ifr));
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    ifr.ifr_flags = (short)flags;
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

int vessel_epoll_create(void) { return (int)or_errno(epoll_create1(EPOLL_CLOEXEC)); }

int vessel_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event event = {.events = events, .data.u64 = data};
    return (int)or_errno(epoll_ctl(epfd, op, fd, &event));
}

int vessel_epoll_wait(int epfd, struct vessel_epoll_event *out, int max, int timeout_ms) {
    struct epoll_event events[64];
    int n = epoll_wait(epfd, events, max < 64 ? max : 64, timeout_ms);
    if (n < 0)
        return -errno;
    for (int i = 0; i < n; i++) {
        out[i].events = events[i].events;
        out[i].data = events[i].data.u64;
    }
    return n;
}

int vessel_eventfd(void) { return (int)or_errno(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)); }

int vessel_memfd(const char *name, uint64_t size) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0)
        return -errno;
    if (ftruncate(fd, (off_t)size) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}
