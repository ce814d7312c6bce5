// /init of a hostile guest (HostileGuestTests.swift): takes the vhost-user-vsock PCI function away from the
// kernel, drives it from user space (virtio 1.0 over the modern PCI capabilities, rings in mlock'ed pages whose
// guest-physical addresses come from /proc/self/pagemap) and attacks the host's backend with malformed rings and
// packets. Each phase is logged as "HOSTILE: PHASE n ..."; the last line is "HOSTILE: DONE ...", then power-off.
// The host listens on <hybrid>_1025 (the agent log port, drained) and <hybrid>_1030 (accepted, never read).
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LOG_PORT 1025
#define STALLED_PORT 1030
#define HOST_CID 2
#define QMAX 128
#define NPAGES 256
#define RXBUFS 64
#define PAGE 4096

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
    char buf[600];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 1) n = sizeof buf - 1;
    write(1, buf, n);
}

static uint64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

// ---- PCI / virtio-pci modern --------------------------------------------------------------------------------

static char dev_dir[300];
static volatile uint8_t *bars[6];
static uint64_t bar_len[6];
static volatile uint8_t *common, *notify_base, *devcfg;
static uint32_t notify_mult;

static long read_hex(const char *path) {
    char b[64] = "";
    int f = open(path, O_RDONLY);
    if (f < 0) return -1;
    int n = read(f, b, sizeof b - 1);
    close(f);
    if (n <= 0) return -1;
    b[n] = 0;
    return strtol(b, NULL, 16);
}

static int write_str(const char *path, const char *s) {
    int f = open(path, O_WRONLY);
    if (f < 0) return -errno;
    int r = write(f, s, strlen(s)) < 0 ? -errno : 0;
    close(f);
    return r;
}

static int find_device(char *name, size_t len) {  // name: a PCI address
    DIR *d = opendir("/sys/bus/pci/devices");
    struct dirent *e;
    int found = 0;
    while (d && !found && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char p[300];
        snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/vendor", e->d_name);
        long v = read_hex(p);
        snprintf(p, sizeof p, "/sys/bus/pci/devices/%s/device", e->d_name);
        long dv = read_hex(p);
        if (v == 0x1af4 && dv == 0x1053) {
            snprintf(name, len, "%.63s", e->d_name);
            found = 1;
        }
    }
    if (d) closedir(d);
    return found;
}

static volatile uint8_t *map_bar(int bar) {
    if (bar < 0 || bar > 5) return NULL;
    if (bars[bar]) return bars[bar];
    char p[340];
    snprintf(p, sizeof p, "%s/resource%d", dev_dir, bar);
    int f = open(p, O_RDWR | O_SYNC);
    if (f < 0) {
        say("HOSTILE: open %s: %s\n", p, strerror(errno));
        return NULL;
    }
    struct stat st;
    fstat(f, &st);
    void *m = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
    close(f);
    if (m == MAP_FAILED) {
        say("HOSTILE: mmap %s: %s\n", p, strerror(errno));
        return NULL;
    }
    bars[bar] = m;
    bar_len[bar] = st.st_size;
    return bars[bar];
}

static uint32_t le32(const uint8_t *p) { return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }

// Unbind from virtio-pci, enable, bus master on and INTx off (we poll), then find the virtio capabilities.
static int take_device(void) {
    char name[64];
    if (!find_device(name, sizeof name)) {
        say("HOSTILE: no vsock PCI function (1af4:1053)\n");
        return -1;
    }
    snprintf(dev_dir, sizeof dev_dir, "/sys/bus/pci/devices/%s", name);
    char p[340];
    snprintf(p, sizeof p, "%s/driver/unbind", dev_dir);
    int r = write_str(p, name);
    say("HOSTILE: device %s unbound from its kernel driver (%d)\n", name, r);
    snprintf(p, sizeof p, "%s/enable", dev_dir);
    write_str(p, "1");
    snprintf(p, sizeof p, "%s/config", dev_dir);
    int f = open(p, O_RDWR);
    uint8_t cfg[256];
    if (f < 0 || pread(f, cfg, sizeof cfg, 0) != (ssize_t)sizeof cfg) {
        say("HOSTILE: config: %s\n", strerror(errno));
        return -1;
    }
    uint16_t cmd = cfg[4] | cfg[5] << 8;
    cmd |= 0x0002 | 0x0004 | 0x0400;  // memory, bus master, INTx disable
    pwrite(f, &cmd, 2, 4);
    close(f);
    if (!(cfg[6] & 0x10)) return -1;
    int ptr = cfg[0x34] & 0xfc;
    for (int guard = 0; ptr >= 0x40 && ptr < 0xfc && guard < 48; guard++) {
        if (cfg[ptr] == 0x09) {
            int type = cfg[ptr + 3], bar = cfg[ptr + 4];
            uint32_t off = le32(cfg + ptr + 8);
            volatile uint8_t *b = (type >= 1 && type <= 4) ? map_bar(bar) : NULL;
            if (b && off < bar_len[bar]) {
                if (type == 1 && !common) common = b + off;
                if (type == 2 && !notify_base) {
                    notify_base = b + off;
                    notify_mult = le32(cfg + ptr + 16);
                }
                if (type == 4 && !devcfg) devcfg = b + off;
            }
        }
        ptr = cfg[ptr + 1] & 0xfc;
    }
    if (!common || !notify_base || !devcfg) {
        say("HOSTILE: virtio capabilities missing\n");
        return -1;
    }
    return 0;
}

#define R8(o) (*(volatile uint8_t *)(common + (o)))
#define R16(o) (*(volatile uint16_t *)(common + (o)))
#define R32(o) (*(volatile uint32_t *)(common + (o)))

// ---- DMA memory --------------------------------------------------------------------------------------------

struct page { uint8_t *va; uint64_t gpa; };
static struct page pool[NPAGES];

static int alloc_pool(void) {
    size_t len = (size_t)NPAGES * PAGE;
    uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (m == MAP_FAILED || mlock(m, len) < 0) {
        say("HOSTILE: DMA pool: %s\n", strerror(errno));
        return -1;
    }
    memset(m, 0, len);
    int pm = open("/proc/self/pagemap", O_RDONLY);
    for (int i = 0; i < NPAGES; i++) {
        uint64_t e = 0;
        uint8_t *va = m + (size_t)i * PAGE;
        if (pm < 0 || pread(pm, &e, 8, ((uintptr_t)va / PAGE) * 8) != 8 || !(e >> 63) || !(e & ((1ULL << 55) - 1))) {
            say("HOSTILE: no PFN for page %d\n", i);
            return -1;
        }
        pool[i].va = va;
        pool[i].gpa = (e & ((1ULL << 55) - 1)) * PAGE;
    }
    close(pm);
    return 0;
}

// Pages: 0..2 rings (rx, tx, event), 3..66 rx buffers, 67..194 tx buffers (one per tx descriptor), rest scratch.
#define RING_PAGE(q) (q)
#define RX_PAGE(i) (3 + (i))
#define TX_PAGE(i) (3 + RXBUFS + (i))
#define SCRATCH_PAGE(i) (3 + RXBUFS + QMAX + (i))

// ---- split virtqueues ------------------------------------------------------------------------------------------

struct vq {
    int index;
    uint16_t size, notify_off, avail_idx, last_used;
    volatile uint8_t *desc, *avail, *used;
    uint64_t gpa;
};
static struct vq vqs[3];
#define RXQ (&vqs[0])
#define TXQ (&vqs[1])

static void set_desc(struct vq *q, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    volatile uint8_t *d = q->desc + 16 * (size_t)(i % QMAX);
    *(volatile uint64_t *)d = addr;
    *(volatile uint32_t *)(d + 8) = len;
    *(volatile uint16_t *)(d + 12) = flags;
    *(volatile uint16_t *)(d + 14) = next;
}

static void push_avail(struct vq *q, uint16_t head) {
    *(volatile uint16_t *)(q->avail + 4 + 2 * (q->avail_idx % q->size)) = head;
    q->avail_idx++;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    *(volatile uint16_t *)(q->avail + 2) = q->avail_idx;
}

static void kick(struct vq *q) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    *(volatile uint16_t *)(notify_base + (size_t)q->notify_off * notify_mult) = (uint16_t)q->index;
}

static uint16_t used_idx(struct vq *q) { return __atomic_load_n((volatile uint16_t *)(q->used + 2), __ATOMIC_ACQUIRE); }

static uint64_t my_cid;

static int setup_queue(int i, uint16_t force_size) {
    struct vq *q = &vqs[i];
    *(volatile uint16_t *)(common + 0x16) = i;
    uint16_t max = R16(0x18);
    if (max == 0) return -1;
    q->index = i;
    q->size = force_size ? force_size : (max > QMAX ? QMAX : max);
    q->avail_idx = q->last_used = 0;
    uint8_t *va = pool[RING_PAGE(i)].va;
    memset(va, 0, PAGE);
    q->gpa = pool[RING_PAGE(i)].gpa;
    q->desc = va;
    q->avail = va + 2048;
    q->used = va + 2560;
    *(volatile uint16_t *)q->avail = 1;  // NO_INTERRUPT: we poll
    *(volatile uint16_t *)(common + 0x18) = q->size;
    *(volatile uint16_t *)(common + 0x1a) = 0xffff;
    q->notify_off = R16(0x1e);
    uint64_t d = q->gpa, a = q->gpa + 2048, u = q->gpa + 2560;
    *(volatile uint32_t *)(common + 0x20) = (uint32_t)d;
    *(volatile uint32_t *)(common + 0x24) = (uint32_t)(d >> 32);
    *(volatile uint32_t *)(common + 0x28) = (uint32_t)a;
    *(volatile uint32_t *)(common + 0x2c) = (uint32_t)(a >> 32);
    *(volatile uint32_t *)(common + 0x30) = (uint32_t)u;
    *(volatile uint32_t *)(common + 0x34) = (uint32_t)(u >> 32);
    *(volatile uint16_t *)(common + 0x1c) = 1;
    return 0;
}

static void post_rx_all(void) {
    for (int i = 0; i < RXBUFS; i++) {
        set_desc(RXQ, i, pool[RX_PAGE(i)].gpa, PAGE, 2, 0);
        push_avail(RXQ, i);
    }
    kick(RXQ);
}

// Reset, ACKNOWLEDGE, DRIVER, VERSION_1, FEATURES_OK, queues, DRIVER_OK. `tx_size` forces the tx ring's size.
static int handshake(uint16_t tx_size) {
    R8(0x14) = 0;
    for (int i = 0; i < 1000 && R8(0x14) != 0; i++) usleep(1000);
    R8(0x14) = 1;
    R8(0x14) = 1 | 2;
    R32(0x00) = 1;
    uint32_t hi = R32(0x04);
    R32(0x00) = 0;
    uint32_t lo = R32(0x04);
    if (!(hi & 1)) {
        say("HOSTILE: no VERSION_1 (features %08x%08x)\n", hi, lo);
        return -1;
    }
    R32(0x08) = 0;
    R32(0x0c) = 0;
    R32(0x08) = 1;
    R32(0x0c) = 1;
    R8(0x14) = 1 | 2 | 8;
    if (!(R8(0x14) & 8)) {
        say("HOSTILE: FEATURES_OK refused\n");
        return -1;
    }
    *(volatile uint16_t *)(common + 0x10) = 0xffff;
    uint16_t nq = R16(0x12);
    for (int i = 0; i < 3 && i < nq; i++) {
        if (setup_queue(i, i == 1 ? tx_size : 0) < 0) return -1;
    }
    my_cid = *(volatile uint32_t *)devcfg | (uint64_t)*(volatile uint32_t *)(devcfg + 4) << 32;
    R8(0x14) = 1 | 2 | 8 | 4;
    post_rx_all();
    return 0;
}

// ---- packets ---------------------------------------------------------------------------------------------------

struct __attribute__((packed)) hdr {
    uint64_t src_cid, dst_cid;
    uint32_t src_port, dst_port, len;
    uint16_t type, op;
    uint32_t flags, buf_alloc, fwd_cnt;
};
enum { OP_REQUEST = 1, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST };

static struct hdr mk(uint16_t op, uint32_t src, uint32_t dst, uint32_t len) {
    struct hdr h = {.src_cid = my_cid, .dst_cid = HOST_CID, .src_port = src, .dst_port = dst, .len = len,
                    .type = 1, .op = op, .buf_alloc = 256 * 1024};
    return h;
}

// What came back on rx: counts per op; ports that got a RESPONSE / RST (our side's port, < 65536).
static unsigned rx_ops[8], rx_other, rx_total;
static uint8_t got_response[65536], got_rst[65536];
static int dead;  // the device stopped consuming: the remaining phases are skipped

static void rx_poll(void) {
    int reposted = 0;
    while (RXQ->last_used != used_idx(RXQ)) {
        volatile uint8_t *e = RXQ->used + 4 + 8 * (RXQ->last_used % RXQ->size);
        uint32_t id = *(volatile uint32_t *)e, len = *(volatile uint32_t *)(e + 4);
        RXQ->last_used++;
        if (id >= RXBUFS) continue;  // an attack chain: never reposted
        rx_total++;
        if (len >= sizeof(struct hdr)) {
            struct hdr h;
            memcpy(&h, pool[RX_PAGE(id)].va, sizeof h);
            if (h.op < 8) rx_ops[h.op]++; else rx_other++;
            if (h.dst_port < 65536 && h.op == OP_RESPONSE) got_response[h.dst_port] = 1;
            if (h.dst_port < 65536 && h.op == OP_RST) got_rst[h.dst_port] = 1;
        }
        set_desc(RXQ, id, pool[RX_PAGE(id)].gpa, PAGE, 2, 0);
        push_avail(RXQ, id);
        reposted = 1;
    }
    if (reposted) kick(RXQ);
}

static int txn;  // next free tx descriptor of the current batch

// Waits until the device consumed every tx chain published so far (false on timeout: a stopped device).
static int tx_wait(int ms) {
    uint64_t end = now_ms() + ms;
    while (used_idx(TXQ) != TXQ->avail_idx) {
        rx_poll();
        if (now_ms() > end) return 0;
        usleep(1000);
    }
    rx_poll();
    return 1;
}

static void tx_flush(void) {
    if (txn == 0) return;
    kick(TXQ);
    if (!dead && !tx_wait(15000)) {
        say("HOSTILE: tx ring not consumed for 15 s (used %u, avail %u): device stopped?\n", used_idx(TXQ),
            TXQ->avail_idx);
        dead = 1;
    }
    txn = 0;
}

static uint16_t tx_alloc(int n) {
    if (txn + n > TXQ->size) tx_flush();
    uint16_t r = txn;
    txn += n;
    return r;
}

// One packet in one descriptor (header + payload from the descriptor's own page, at most PAGE - 44 bytes).
static void send_pkt(struct hdr h, uint32_t payload) {
    uint16_t d = tx_alloc(1);
    memcpy(pool[TX_PAGE(d)].va, &h, sizeof h);
    set_desc(TXQ, d, pool[TX_PAGE(d)].gpa, sizeof h + payload, 0, 0);
    push_avail(TXQ, d);
}

static void raw_chain(const uint64_t *addr, const uint32_t *len, const uint16_t *flags, const uint16_t *next, int n,
                      int head_rel) {
    uint16_t base = tx_alloc(n);
    for (int i = 0; i < n; i++) set_desc(TXQ, base + i, addr[i], len[i], flags[i], next[i]);
    push_avail(TXQ, base + head_rel);
}

static void settle(int ms) {
    uint64_t end = now_ms() + ms;
    while (now_ms() < end) {
        rx_poll();
        usleep(2000);
    }
}

static unsigned phase_no;
static uint64_t phase_t0;
static unsigned snap[8], snap_total;

static void phase(const char *name) {
    phase_no++;
    phase_t0 = now_ms();
    memcpy(snap, rx_ops, sizeof snap);
    snap_total = rx_total;
    say("HOSTILE: PHASE %u %s\n", phase_no, name);
}

static void phase_end(const char *verdict) {
    tx_flush();
    kick(TXQ);
    kick(RXQ);
    settle(300);
    say("HOSTILE: PHASE %u done in %llu ms: %s; rx +%u (response %u, rst %u, request %u, shutdown %u, rw %u, "
        "credit %u), tx used %u/%u%s\n", phase_no, (unsigned long long)(now_ms() - phase_t0), verdict,
        rx_total - snap_total, rx_ops[OP_RESPONSE] - snap[OP_RESPONSE], rx_ops[OP_RST] - snap[OP_RST],
        rx_ops[OP_REQUEST] - snap[OP_REQUEST], rx_ops[OP_SHUTDOWN] - snap[OP_SHUTDOWN], rx_ops[OP_RW] - snap[OP_RW],
        rx_ops[OP_CREDIT_UPDATE] - snap[OP_CREDIT_UPDATE], used_idx(TXQ), TXQ->avail_idx,
        dead ? " [device stopped]" : "");
}

// Opens a stream from our port `src` to host port `dst`; true when the backend answered RESPONSE.
static int open_stream(uint32_t src, uint32_t dst) {
    got_response[src] = got_rst[src] = 0;
    send_pkt(mk(OP_REQUEST, src, dst, 0), 0);
    tx_flush();
    uint64_t end = now_ms() + 5000;
    while (!got_response[src] && !got_rst[src] && now_ms() < end) {
        rx_poll();
        usleep(1000);
    }
    return got_response[src];
}

static void wait_rst(uint32_t port, int ms) {
    uint64_t end = now_ms() + ms;
    while (!got_rst[port] && now_ms() < end) {
        rx_poll();
        usleep(1000);
    }
}

// ---- the attacks -----------------------------------------------------------------------------------------------

#define RAM_END (256ULL << 20)

static void attacks(void) {
    struct hdr h;
    char verdict[200];

    phase("handshake check: REQUEST to the log port");
    int ok = open_stream(100, LOG_PORT);
    send_pkt(mk(OP_RST, 100, LOG_PORT, 0), 0);
    phase_end(ok ? "RESPONSE received, user-space driver works" : "no RESPONSE");
    if (!ok) dead = 1;
    if (dead) return;

    phase("descriptors outside guest RAM (tx and rx)");
    {
        uint64_t bad[] = {0xfffffffffffff000ULL, RAM_END - 16, 0xfec00000ULL, 0xb0000000ULL, 1ULL << 40, RAM_END};
        for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++) {
            uint64_t a[1] = {bad[i]};
            uint32_t l[1] = {44};
            uint16_t f[1] = {0}, n[1] = {0};
            raw_chain(a, l, f, n, 1, 0);
        }
        // A good header followed by a payload descriptor outside RAM.
        h = mk(OP_RW, 101, LOG_PORT, 100);
        uint16_t d = tx_alloc(2);
        memcpy(pool[TX_PAGE(d)].va, &h, sizeof h);
        set_desc(TXQ, d, pool[TX_PAGE(d)].gpa, 44, 1, d + 1);
        set_desc(TXQ, d + 1, 0xfffffffff0000000ULL, 100, 0, 0);
        push_avail(TXQ, d);
        tx_flush();
        // rx buffers outside RAM (descriptors 64..69): the backend must not write there.
        for (unsigned i = 0; i < 6; i++) {
            set_desc(RXQ, RXBUFS + i, bad[i], PAGE, 2, 0);
            push_avail(RXQ, RXBUFS + i);
        }
        kick(RXQ);
        send_pkt(mk(OP_RW, 102, 4999, 0), 0);  // provokes an RST, which walks the rx ring
        send_pkt(mk(OP_RW, 103, 4999, 0), 0);
    }
    phase_end("consumed");

    phase("overlapping descriptors");
    {
        h = mk(OP_RW, 104, 4999, 0);
        uint8_t *p = pool[SCRATCH_PAGE(0)].va;
        uint64_t g = pool[SCRATCH_PAGE(0)].gpa;
        memcpy(p, &h, sizeof h);
        // 100 descriptors over the same page, header included in each; a chain whose header overlaps the
        // descriptor table itself; one pointing into the available ring.
        uint16_t base = tx_alloc(100);
        for (int i = 0; i < 100; i++) set_desc(TXQ, base + i, g, PAGE, i < 99 ? 1 : 0, base + i + 1);
        ((struct hdr *)p)->len = 99 * PAGE + PAGE - 44;
        push_avail(TXQ, base);
        tx_flush();
        uint16_t d = tx_alloc(2);
        set_desc(TXQ, d, TXQ->gpa, 16 * TXQ->size, 1, d + 1);
        set_desc(TXQ, d + 1, TXQ->gpa + 2048, 6 + 2 * TXQ->size, 0, 0);
        push_avail(TXQ, d);
        // A live stream whose payload overlaps its own header.
        if (open_stream(105, LOG_PORT)) {
            h = mk(OP_RW, 105, LOG_PORT, 40);
            d = tx_alloc(2);
            memcpy(pool[TX_PAGE(d)].va, &h, sizeof h);
            set_desc(TXQ, d, pool[TX_PAGE(d)].gpa, 44, 1, d + 1);
            set_desc(TXQ, d + 1, pool[TX_PAGE(d)].gpa + 4, 40, 0, 0);
            push_avail(TXQ, d);
        }
        // rx buffers over the tx descriptor table's tail and over another rx buffer.
        set_desc(RXQ, RXBUFS + 6, TXQ->gpa + 16 * (QMAX - 8), 128, 2, 0);
        push_avail(RXQ, RXBUFS + 6);
        set_desc(RXQ, RXBUFS + 7, pool[RX_PAGE(0)].gpa, PAGE, 2, 0);
        push_avail(RXQ, RXBUFS + 7);
        kick(RXQ);
        send_pkt(mk(OP_RW, 106, 4999, 0), 0);
        send_pkt(mk(OP_RW, 107, 4999, 0), 0);
    }
    phase_end("consumed");

    phase("descriptor chains that loop");
    {
        uint16_t d = tx_alloc(3);
        h = mk(OP_RW, 108, 4999, 0);
        memcpy(pool[TX_PAGE(d)].va, &h, sizeof h);
        set_desc(TXQ, d, pool[TX_PAGE(d)].gpa, 44, 1, d);  // self-loop
        push_avail(TXQ, d);
        set_desc(TXQ, d + 1, pool[TX_PAGE(d + 1)].gpa, 16, 1, d + 2);  // two-cycle
        set_desc(TXQ, d + 2, pool[TX_PAGE(d + 2)].gpa, 16, 1, d + 1);
        push_avail(TXQ, d + 1);
        tx_flush();
        d = tx_alloc(2);
        set_desc(TXQ, d, pool[TX_PAGE(d)].gpa, 16, 1, 500);  // next beyond the ring
        push_avail(TXQ, d);
        set_desc(TXQ, d + 1, pool[TX_PAGE(d + 1)].gpa, 16, 1, 0xffff);
        push_avail(TXQ, d + 1);
        // The whole table as one loop (every descriptor NEXT to the following, the last to the first).
        tx_flush();
        for (int i = 0; i < TXQ->size; i++) set_desc(TXQ, i, pool[TX_PAGE(i)].gpa, 8, 1, (i + 1) % TXQ->size);
        txn = TXQ->size;
        push_avail(TXQ, 0);
    }
    phase_end("consumed");

    phase("zero and huge lengths");
    {
        uint16_t d = tx_alloc(8);
        set_desc(TXQ, d, pool[TX_PAGE(d)].gpa, 0, 0, 0);  // empty descriptor
        push_avail(TXQ, d);
        set_desc(TXQ, d + 1, pool[TX_PAGE(d + 1)].gpa, 0, 1, d + 2);  // zero-length links then a header
        h = mk(OP_RW, 109, 4999, 0);
        memcpy(pool[TX_PAGE(d + 2)].va, &h, sizeof h);
        set_desc(TXQ, d + 2, pool[TX_PAGE(d + 2)].gpa, 44, 0, 0);
        push_avail(TXQ, d + 1);
        set_desc(TXQ, d + 3, 0x1000, 0xffffffffu, 0, 0);  // 4 GiB
        push_avail(TXQ, d + 3);
        set_desc(TXQ, d + 4, 0x100000, 0x80000000u, 0, 0);  // 2 GiB
        push_avail(TXQ, d + 4);
        h = mk(OP_RW, 110, 4999, 0xffffffffu);  // header claims 4 GiB of payload
        memcpy(pool[TX_PAGE(d + 5)].va, &h, sizeof h);
        set_desc(TXQ, d + 5, pool[TX_PAGE(d + 5)].gpa, PAGE, 0, 0);
        push_avail(TXQ, d + 5);
        set_desc(TXQ, d + 6, 0x1000, 0, 2, 0);  // rx-style zero-length writable
        push_avail(TXQ, d + 6);
        tx_flush();
        // A live stream, then one packet of 127 x 64 MiB descriptors over the same RAM (8 GiB, header says 4 GiB):
        // the host socket takes little of it, the rest overruns the credit.
        if (open_stream(111, STALLED_PORT)) {
            d = tx_alloc(TXQ->size);
            h = mk(OP_RW, 111, STALLED_PORT, 0xffffffffu - 44);
            memcpy(pool[TX_PAGE(d)].va, &h, sizeof h);
            set_desc(TXQ, d, pool[TX_PAGE(d)].gpa, 44, 1, d + 1);
            for (int i = 1; i < TXQ->size; i++)
                set_desc(TXQ, d + i, 0x1000000, 64u << 20, i + 1 < TXQ->size ? 1 : 0, d + i + 1);
            push_avail(TXQ, d);
            tx_flush();
            wait_rst(111, 3000);
        }
        // rx: a zero-length and a 4 GiB writable buffer.
        set_desc(RXQ, RXBUFS + 8, pool[SCRATCH_PAGE(1)].gpa, 0, 2, 0);
        push_avail(RXQ, RXBUFS + 8);
        set_desc(RXQ, RXBUFS + 9, 0x1000, 0xffffffffu, 2, 0);
        push_avail(RXQ, RXBUFS + 9);
        kick(RXQ);
        send_pkt(mk(OP_RW, 112, 4999, 0), 0);
        send_pkt(mk(OP_RW, 113, 4999, 0), 0);
        snprintf(verdict, sizeof verdict, "consumed; 8 GiB packet on a stream: %s",
                 got_rst[111] ? "stream reset" : "no reset");
    }
    phase_end(verdict);

    phase("indirect descriptors with garbage");
    {
        uint8_t *p = pool[SCRATCH_PAGE(2)].va;
        for (int i = 0; i < PAGE; i++) p[i] = (uint8_t)(i * 37 + 11);
        uint16_t d = tx_alloc(6);
        set_desc(TXQ, d, pool[SCRATCH_PAGE(2)].gpa, PAGE, 4, 0);  // a table of garbage
        push_avail(TXQ, d);
        set_desc(TXQ, d + 1, pool[SCRATCH_PAGE(2)].gpa, 17, 4, 0);  // not a multiple of 16
        push_avail(TXQ, d + 1);
        set_desc(TXQ, d + 2, 0xffffffff0000ULL, 160, 4, 0);  // outside RAM
        push_avail(TXQ, d + 2);
        set_desc(TXQ, d + 3, TXQ->gpa, 16 * TXQ->size, 4 | 1, d + 4);  // the ring itself, plus NEXT
        set_desc(TXQ, d + 4, pool[SCRATCH_PAGE(2)].gpa, 16, 4 | 2, 0);
        push_avail(TXQ, d + 3);
        set_desc(TXQ, d + 5, pool[SCRATCH_PAGE(2)].gpa, 0, 4, 0);
        push_avail(TXQ, d + 5);
        set_desc(RXQ, RXBUFS + 10, pool[SCRATCH_PAGE(2)].gpa, PAGE, 4 | 2, 0);
        push_avail(RXQ, RXBUFS + 10);
        kick(RXQ);
        send_pkt(mk(OP_RW, 114, 4999, 0), 0);
    }
    phase_end("consumed");

    phase("wrong src_cid / dst_cid");
    {
        uint64_t srcs[] = {0, 1, HOST_CID, 4, 0xffffffffULL, 0xffffffffffffffffULL, my_cid + 1};
        for (unsigned i = 0; i < sizeof srcs / sizeof srcs[0]; i++) {
            h = mk(OP_REQUEST, 200 + i, LOG_PORT, 0);
            h.src_cid = srcs[i];
            send_pkt(h, 0);
        }
        uint64_t dsts[] = {0, 1, my_cid, 4, 0xffffffffULL, 0xffffffffffffffffULL};
        for (unsigned i = 0; i < sizeof dsts / sizeof dsts[0]; i++) {
            h = mk(OP_REQUEST, 220 + i, LOG_PORT, 0);
            h.dst_cid = dsts[i];
            send_pkt(h, 0);
        }
        tx_flush();
        settle(500);
        int answered = 0;
        for (int i = 200; i < 240; i++) answered += got_response[i] + got_rst[i];
        snprintf(verdict, sizeof verdict, "%d of 13 spoofed packets answered (expect 0)", answered);
    }
    phase_end(verdict);

    phase("unknown ops and types");
    {
        uint16_t ops[] = {0, 8, 9, 99, 0x7fff, 0xffff};
        for (unsigned i = 0; i < sizeof ops / sizeof ops[0]; i++) send_pkt(mk(ops[i], 300 + i, LOG_PORT, 0), 0);
        uint16_t types[] = {0, 2, 3, 0xffff};
        for (unsigned i = 0; i < sizeof types / sizeof types[0]; i++) {
            h = mk(OP_REQUEST, 310 + i, LOG_PORT, 0);
            h.type = types[i];
            send_pkt(h, 0);
        }
        // On a live stream: an unknown op must reset it.
        int live = open_stream(320, LOG_PORT);
        send_pkt(mk(77, 320, LOG_PORT, 0), 0);
        h = mk(OP_RW, 321, LOG_PORT, 0);
        h.flags = 0xffffffffu;
        send_pkt(h, 0);
        tx_flush();
        wait_rst(320, 2000);
        snprintf(verdict, sizeof verdict, "live stream %s", live ? (got_rst[320] ? "reset" : "not reset") : "?");
    }
    phase_end(verdict);

    phase("credit overruns (more than buf_alloc, stalled host reader)");
    {
        int resets = 0;
        for (uint32_t s = 400; s < 403; s++) {
            if (!open_stream(s, STALLED_PORT)) continue;
            for (int k = 0; k < 400 && !got_rst[s] && !dead; k++) {
                h = mk(OP_RW, s, STALLED_PORT, PAGE - 44);
                h.buf_alloc = 1 << 20;
                send_pkt(h, PAGE - 44);
                if (k % 64 == 63) tx_flush();
            }
            tx_flush();
            wait_rst(s, 2000);
            resets += got_rst[s];
        }
        // Also one packet far larger than the credit on a fresh stream.
        if (open_stream(403, STALLED_PORT)) {
            tx_flush();
            uint16_t d = tx_alloc(TXQ->size);
            h = mk(OP_RW, 403, STALLED_PORT, (TXQ->size - 1) * PAGE);
            memcpy(pool[TX_PAGE(d)].va, &h, sizeof h);
            set_desc(TXQ, d, pool[TX_PAGE(d)].gpa, 44, 1, d + 1);
            for (int i = 1; i < TXQ->size; i++)
                set_desc(TXQ, d + i, pool[TX_PAGE(i)].gpa, PAGE, i + 1 < TXQ->size ? 1 : 0, d + i + 1);
            push_avail(TXQ, d);
            tx_flush();
            wait_rst(403, 3000);
            resets += got_rst[403];
        }
        snprintf(verdict, sizeof verdict, "%d of 4 overrunning streams reset", resets);
    }
    phase_end(verdict);

    phase("flood on the agent log port");
    {
        int open = 0;
        uint64_t bytes = 0;
        for (uint32_t s = 500; s < 504; s++) open += open_stream(s, LOG_PORT);
        for (int k = 0; k < 2048 && !dead; k++) {
            uint32_t s = 500 + k % 4;
            if (got_rst[s]) continue;
            send_pkt(mk(OP_RW, s, LOG_PORT, PAGE - 44), PAGE - 44);
            bytes += PAGE - 44;
        }
        tx_flush();
        for (uint32_t s = 500; s < 504; s++) {
            h = mk(OP_SHUTDOWN, s, LOG_PORT, 0);
            h.flags = 3;
            send_pkt(h, 0);
        }
        int resets = 0;
        settle(500);
        for (uint32_t s = 500; s < 504; s++) resets += got_rst[s];
        snprintf(verdict, sizeof verdict, "%d streams, %llu bytes sent, %d reset", open,
                 (unsigned long long)bytes, resets);
    }
    phase_end(verdict);

    phase("many streams filling their credit towards a host reader that never reads");
    {
        int streams = 0, resets = 0;
        for (uint32_t s = 1000; s < 1300 && !dead; s++) {
            if (!open_stream(s, STALLED_PORT)) continue;
            streams++;
            for (int k = 0; k < 100; k++) send_pkt(mk(OP_RW, s, STALLED_PORT, PAGE - 44), PAGE - 44);
        }
        tx_flush();
        settle(1000);
        for (uint32_t s = 1000; s < 1300; s++) resets += got_rst[s];
        snprintf(verdict, sizeof verdict, "%d streams of %d KiB each, %d reset", streams, 100 * (PAGE - 44) / 1024,
                 resets);
    }
    phase_end(verdict);

    phase("thousands of connection requests, left half-open");
    {
        unsigned before = rx_ops[OP_RESPONSE], rst0 = rx_ops[OP_RST];
        for (uint32_t s = 20000; s < 25000 && !dead; s++) {
            send_pkt(mk(OP_REQUEST, s, LOG_PORT, 0), 0);
            if (s % 100 == 99) {
                tx_flush();
                rx_poll();
            }
        }
        for (uint32_t s = 30000; s < 31000 && !dead; s++) {  // ports without a host listener
            send_pkt(mk(OP_REQUEST, s, 1100 + s % 500, 0), 0);
            if (s % 100 == 99) tx_flush();
        }
        tx_flush();
        settle(2000);
        snprintf(verdict, sizeof verdict, "%u responses, %u resets; none of them finished",
                 rx_ops[OP_RESPONSE] - before, rx_ops[OP_RST] - rst0);
    }
    phase_end(verdict);

    phase("half-open variants: host CONNECTs ignored, SHUTDOWN without close, stray RESPONSEs");
    {
        for (uint32_t s = 20000; s < 20100; s++) {
            h = mk(OP_SHUTDOWN, s, LOG_PORT, 0);
            h.flags = 1;  // "I will receive no more", and then nothing: never finished
            send_pkt(h, 0);
        }
        for (uint32_t p = 0; p < 50; p++) send_pkt(mk(OP_RESPONSE, 600 + p, (1u << 30) + p, 0), 0);
        for (uint32_t p = 0; p < 50; p++) send_pkt(mk(OP_CREDIT_REQUEST, 700 + p, LOG_PORT, 0), 0);
        tx_flush();
        settle(3000);  // host CONNECTs arrive as REQUESTs and are never answered
    }
    phase_end("consumed");

    phase("refilling the tx ring as fast as the backend drains it, for 12 s");
    {
        tx_flush();
        h = mk(OP_RW, 1, 2, 0);
        h.src_cid = 99;  // dropped at once: all the backend does is walk the ring
        memcpy(pool[TX_PAGE(0)].va, &h, sizeof h);
        set_desc(TXQ, 0, pool[TX_PAGE(0)].gpa, 44, 0, 0);
        for (int i = 0; i < TXQ->size; i++) *(volatile uint16_t *)(TXQ->avail + 4 + 2 * i) = 0;
        unsigned long pushed = 0;
        uint64_t end = now_ms() + 12000;
        while (now_ms() < end) {
            for (int j = 0; j < 1000; j++) {
                if ((uint16_t)(TXQ->avail_idx - used_idx(TXQ)) < TXQ->size) {
                    TXQ->avail_idx++;
                    __atomic_store_n((volatile uint16_t *)(TXQ->avail + 2), TXQ->avail_idx, __ATOMIC_RELEASE);
                    if (++pushed % 32 == 0) kick(TXQ);
                }
            }
        }
        kick(TXQ);
        int drained = tx_wait(5000);
        snprintf(verdict, sizeof verdict, "%lu packets pushed, ring %s", pushed, drained ? "drained" : "NOT drained");
        if (!drained) dead = 1;
    }
    phase_end(verdict);

    phase("avail/used indexes that jump by thousands");
    {
        // The used index belongs to the device: scribbling on it must not matter.
        *(volatile uint16_t *)(TXQ->used + 2) = used_idx(TXQ) + 3000;
        send_pkt(mk(OP_RW, 800, 4999, 0), 0);
        kick(TXQ);
        usleep(300000);
        uint16_t after_used = used_idx(TXQ);
        int used_ok = after_used == TXQ->avail_idx;
        // The available index jumps 5000 ahead on both rings.
        uint16_t tx_used0 = used_idx(TXQ);
        TXQ->avail_idx += 5000;
        *(volatile uint16_t *)(TXQ->avail + 2) = TXQ->avail_idx;
        kick(TXQ);
        RXQ->avail_idx += 5000;
        *(volatile uint16_t *)(RXQ->avail + 2) = RXQ->avail_idx;
        kick(RXQ);
        usleep(2000000);
        uint16_t consumed = used_idx(TXQ) - tx_used0;
        snprintf(verdict, sizeof verdict, "used-index scribble %s; after the avail jump the device consumed %u "
                 "bogus tx entries (%s)", used_ok ? "ignored" : "NOT ignored", consumed,
                 consumed == 0 ? "queue refused" : consumed >= 5000 ? "walked them all" : "some");
        txn = 0;
        dead = 1;  // the rings are garbage now; only a reset helps
    }
    phase_end(verdict);

    phase("reset and restart the device");
    {
        dead = 0;
        memset(got_response, 0, sizeof got_response);
        int r = handshake(0);
        txn = 0;
        int ok2 = r == 0 && open_stream(900, LOG_PORT);
        snprintf(verdict, sizeof verdict, "%s", ok2 ? "device works again after reset" : "device does not answer");
    }
    phase_end(verdict);

    phase("queue size 1000 (not a power of two, above the device maximum)");
    {
        int r = handshake(1000);
        dead = 0;
        int ok3 = r == 0 && open_stream(901, LOG_PORT);
        snprintf(verdict, sizeof verdict, "%s", ok3 ? "device still answers" : "device does not answer");
    }
    phase_end(verdict);
}

int main(void) {
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
    int con = open("/dev/console", O_RDWR);
    if (con >= 0) {
        dup2(con, 0);
        dup2(con, 1);
        dup2(con, 2);
    }
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    uint64_t t0 = now_ms();
    if (alloc_pool() == 0 && take_device() == 0 && handshake(0) == 0) {
        say("HOSTILE: READY cid=%llu queues rx %u tx %u, notify x%u\n", (unsigned long long)my_cid, RXQ->size,
            TXQ->size, notify_mult);
        attacks();
    } else {
        say("HOSTILE: could not take the device\n");
    }
    say("HOSTILE: DONE phases=%u in %llu ms, rx packets %u\n", phase_no, (unsigned long long)(now_ms() - t0),
        rx_total);
    sync();
    reboot(RB_POWER_OFF);
    for (;;) pause();
}
