#ifndef CVESSELVSOCK_H
#define CVESSELVSOCK_H
// C helpers for the vhost-user-vsock backend: fd passing (SCM_RIGHTS), Unix sockets, epoll, eventfd, mmap,
// and acquire/release loads and stores on guest memory (virtqueue indices shared with another process).

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

// Ring index accesses. The driver (guest) publishes avail->idx with a release store after writing descriptors
// and ring entries; we read it with acquire. We publish used->idx with release after writing used elements.
static inline uint16_t cvv_load_acquire_u16(const void *p) { return __atomic_load_n((const uint16_t *)p, __ATOMIC_ACQUIRE); }
static inline uint16_t cvv_load_relaxed_u16(const void *p) { return __atomic_load_n((const uint16_t *)p, __ATOMIC_RELAXED); }
static inline void cvv_store_release_u16(void *p, uint16_t v) { __atomic_store_n((uint16_t *)p, v, __ATOMIC_RELEASE); }
/// Full barrier: orders our used->idx store before the following load of avail->flags (store-load).
static inline void cvv_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

#define CVV_EV_IN 0x001u
#define CVV_EV_OUT 0x004u
#define CVV_EV_ERR 0x008u
#define CVV_EV_HUP 0x010u
#define CVV_EV_RDHUP 0x2000u
#define CVV_EV_ET 0x80000000u

#define CVV_CTL_ADD 1
#define CVV_CTL_DEL 2
#define CVV_CTL_MOD 3

struct cvv_event {
    uint32_t events;
    uint64_t data;
};

/// recvmsg up to `len` bytes; SCM_RIGHTS fds are received close-on-exec into `fds` (at most `maxfds`; further
/// ones are closed but counted in *nfds). *ctrunc is set when the kernel truncated control data.
/// Returns bytes read (0 = EOF) or -errno.
ssize_t cvv_recv_with_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int *ctrunc);
/// sendmsg with optional fds (MSG_NOSIGNAL). Returns bytes sent or -errno.
ssize_t cvv_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);
/// writev without SIGPIPE (sendmsg MSG_NOSIGNAL|MSG_DONTWAIT) for sockets. Returns bytes or -errno.
ssize_t cvv_sendv(int sock, const struct iovec *iov, int iovcnt);
/// readv. Returns bytes or -errno.
ssize_t cvv_readv(int fd, const struct iovec *iov, int iovcnt);
/// recv with MSG_PEEK|MSG_DONTWAIT. Returns bytes or -errno.
ssize_t cvv_peek(int fd, void *buf, size_t len);
ssize_t cvv_read(int fd, void *buf, size_t len);

/// A listening non-blocking close-on-exec Unix stream socket at `path` (a stale socket file is removed).
int cvv_unix_listen(const char *path, int backlog);
/// Connects a non-blocking close-on-exec Unix stream socket. Returns fd or -errno (-EAGAIN: backlog full).
int cvv_unix_connect(const char *path);
/// Blocking client connect (tests, tools). Returns fd or -errno.
int cvv_unix_connect_blocking(const char *path);
int cvv_accept(int listener);
int cvv_socketpair(int fds[2]);
int cvv_shutdown_write(int fd);

void *cvv_mmap_shared(int fd, uint64_t len);
int cvv_munmap(void *p, uint64_t len);

int cvv_epoll_create(void);
int cvv_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);
int cvv_epoll_wait(int epfd, struct cvv_event *out, int max, int timeout_ms);

int cvv_eventfd(void);
int cvv_eventfd_signal(int fd);
void cvv_eventfd_drain(int fd);

int cvv_close(int fd);
/// A sealed-size memfd of `size` bytes (guest RAM in tests). Returns fd or -errno.
int cvv_memfd(uint64_t size);
uint64_t cvv_monotonic_ns(void);
int cvv_errno(void);

#ifdef __cplusplus
}
#endif
#endif
