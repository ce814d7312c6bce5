// Test guest /init: AF_VSOCK servers for the vsock backend tests.
//  port 1024: echo.  port 1025: 'S' = sink (reply 8-byte count after EOF), 'G'+u64 = send N bytes then close.
//  On start: connects to host port 2000 (hybrid listener <path>_2000), sends "hello from guest\n", echoes what it reads
//  back until EOF; connects to host port 2001 (no listener expected) and reports the error.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <signal.h>
#include <stdint.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <dirent.h>
#include <unistd.h>

static void logf_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logf_(const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    write(1, buf, n);
}

static int writeall(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        c += w; n -= w;
    }
    return 0;
}

static int vlisten(unsigned port) {
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    if (fd < 0 || bind(fd, (void *)&a, sizeof a) < 0 || listen(fd, 64) < 0) {
        logf_("GUEST: listen %u failed: %s\n", port, strerror(errno));
        return -1;
    }
    return fd;
}

static void echo(int c) {
    static char buf[65536];
    for (;;) {
        ssize_t n = read(c, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (writeall(c, buf, n) < 0) break;
    }
}

static void sinksource(int c) {
    static char buf[65536];
    char cmd;
    if (read(c, &cmd, 1) != 1) return;
    if (cmd == 'S') {
        uint64_t total = 0;
        for (;;) {
            ssize_t n = read(c, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            total += n;
        }
        writeall(c, &total, 8);
    } else if (cmd == 'G') {
        uint64_t want = 0;
        size_t got = 0;
        while (got < 8) { ssize_t n = read(c, (char *)&want + got, 8 - got); if (n <= 0) return; got += n; }
        for (size_t i = 0; i < sizeof buf; i++) buf[i] = (char)(i * 7 + 3);
        uint64_t sent = 0;
        while (sent < want) {
            size_t n = want - sent < sizeof buf ? want - sent : sizeof buf;
            // pattern continues by absolute offset modulo 65536
            if (writeall(c, buf, n) < 0) return;
            sent += n;
        }
    }
}

static void serve(int l, void (*fn)(int)) {
    signal(SIGCHLD, SIG_IGN);
    for (;;) {
        int c = accept(l, NULL, NULL);
        if (c < 0) { if (errno == EINTR) continue; logf_("GUEST: accept: %s\n", strerror(errno)); sleep(1); continue; }
        pid_t p = fork();
        if (p == 0) { fn(c); close(c); _exit(0); }
        close(c);
    }
}

// Port 1026: answers "R\n", then unbinds and rebinds the virtio-vsock driver (a driver reload for the back-end).
static void reload(int c) {
    writeall(c, "R\n", 2);
    close(c);
    usleep(300000);
    const char *drv = "/sys/bus/virtio/drivers/vmw_vsock_virtio_transport";
    DIR *d = opendir(drv);
    struct dirent *e;
    char name[64] = "";
    while (d && (e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "virtio", 6) == 0) { snprintf(name, sizeof name, "%s", e->d_name); break; }
    }
    if (d) closedir(d);
    char path[256];
    snprintf(path, sizeof path, "%s/unbind", drv);
    int f = open(path, O_WRONLY);
    int r1 = f >= 0 ? (int)write(f, name, strlen(name)) : -1;
    if (f >= 0) close(f);
    usleep(300000);
    snprintf(path, sizeof path, "%s/bind", drv);
    f = open(path, O_WRONLY);
    int r2 = f >= 0 ? (int)write(f, name, strlen(name)) : -1;
    if (f >= 0) close(f);
    logf_("GUEST: reloaded %s %d %d\n", name, r1, r2);
}

static int vconnect(unsigned port) {
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port};
    if (connect(fd, (void *)&a, sizeof a) < 0) { int e = errno; close(fd); errno = e; return -1; }
    return fd;
}

int main(void) {
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    int con = open("/dev/console", O_RDWR);
    if (con >= 0) { dup2(con, 0); dup2(con, 1); dup2(con, 2); }
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    int l1 = vlisten(1024), l2 = vlisten(1025), l3 = vlisten(1026);
    if (fork() == 0) serve(l1, echo);
    if (fork() == 0) serve(l2, sinksource);
    if (fork() == 0) serve(l3, reload);
    int cid = -1;
    int f = open("/dev/vsock", O_RDONLY);
    unsigned int lc = 0;
    if (f >= 0 && ioctl(f, IOCTL_VM_SOCKETS_GET_LOCAL_CID, &lc) == 0) cid = (int)lc;
    logf_("GUEST: READY cid=%d\n", cid);
    if (fork() == 0) {
        // guest-initiated connections, retried: the host test creates <path>_2000 when it wants.
        for (int i = 0; i < 600; i++) {
            int c = vconnect(2000);
            if (c < 0) { usleep(100000); continue; }
            const char *m = "hello from guest\n";
            writeall(c, m, strlen(m));
            echo(c);
            close(c);
            logf_("GUEST: port 2000 done\n");
            break;
        }
        int c = vconnect(2001);
        logf_("GUEST: connect 2001: %s\n", c < 0 ? strerror(errno) : "connected?!");
        _exit(0);
    }
    for (;;) pause();
}
