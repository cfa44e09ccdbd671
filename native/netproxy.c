/* netproxy.c - the NIC proxy's thread, its link to the peer and its API
 * (colo.h has the contract).  One thread a proxy polls the guest port, the
 * uplink port and the link; the comparer (tcpcompare.c) and the rewriter
 * (rewriter.c) run on it under the proxy's mutex, which
 * colo_np_checkpoint_done also takes. */
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include "netproxy_internal.h"

#define NP_BATCH 32
#define NP_LINK_HEAD 16              /* u8 type, u8 0, u16 0, u32 length, u64 seq; big-endian */
#define NP_LINK_OUT_MAX (16u << 20)  /* the link's unsent bytes */
#define NP_LINK_OUT_PAUSE (4u << 20) /* past it the side that feeds the link is not read */
#define NP_LINK_IN_CAP (NP_LINK_HEAD + NP_BUF_MAX + (256u << 10))
#define NP_ISN_LEN 16                /* the key (a_ip, b_ip, ports, proto, 0 0 0), then isn, tsval */
#define NP_TICK_MS 100

enum np_link_type {
    NP_LINK_INGRESS = 1,   /* primary -> secondary: a frame for the guest, seq = its ingress seq */
    NP_LINK_EGRESS = 2,    /* secondary -> primary: a frame its guest sent, rewritten */
    NP_LINK_ISN = 3        /* primary -> secondary: the primary guest opened a connection */
};

struct colo_np {
    struct colo_np_config cfg;
    colo_arm *arm;             /* primary: where divergences are reported (NULL: none) */
    int guest_fd, uplink_fd, link_fd;
    int wake_fd, event_fd;
    pthread_t thread;
    int started;
    atomic_int stop;
    pthread_mutex_t mu;
    int promoted;              /* secondary: bridging guest and uplink now */
    _Atomic uint64_t ingress_seq;
    uint64_t link_seq;         /* secondary: the last forwarded frame's seq */
    uint64_t floor;            /* secondary: frames at or below it a checkpoint covered */
    struct np_cmp cmp;
    struct np_rw rw;
    struct colo_np_stats st;
    uint8_t *in;               /* the link's read buffer */
    uint32_t in_len;
    uint8_t *out;              /* the link's unsent bytes */
    uint32_t out_head, out_len;
    uint8_t *rx[NP_BATCH];
    struct mmsghdr msgs[NP_BATCH];
    struct iovec iov[NP_BATCH];
};

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---- divergence: the one place a divergence is reported ------------------------ */

static void signal_fd(int fd)
{
    uint64_t one = 1;
    /* an eventfd only fails when its counter is full: it is readable anyway */
    if (write(fd, &one, sizeof(one)) < 0)
        return;
}

/* Every diverged output is told here and only here: the checkpoint side's
 * arm (arm.c) starts the armed checkpoint; the event fd wakes anyone
 * else.  A connection's divergence is one held output to the arm, until
 * np_report_released.  reason 0: still held after a checkpoint (the arm
 * counts it already). */
static void np_report_divergence(colo_np *np, uint64_t tag, uint32_t proto, uint32_t reason)
{
    COLO_UNUSED(proto);
    if (np->arm != NULL && reason != 0 && reason != COLO_NP_LINK)
        colo_arm_diverged(np->arm, tag, reason == COLO_NP_TIMEOUT ? COLO_PX_TIMEOUT : COLO_PX_MISMATCH);
    signal_fd(np->event_fd);
}

static void np_report_released(colo_np *np)
{
    if (np->arm != NULL)
        colo_arm_released(np->arm, 1);
}

/* Whether divergences can come (NULL: a secondary is attached). */
static void np_report_comparing(colo_np *np, const char *stopped)
{
    if (np->arm != NULL)
        colo_arm_comparing(np->arm, stopped);
}

/* ---- the link ----------------------------------------------------------------- */

static void link_close(colo_np *np, const char *why)
{
    COLO_UNUSED(why);
    if (np->link_fd < 0)
        return;
    close(np->link_fd);
    np->link_fd = -1;
    np->out_head = np->out_len = 0;
    np->in_len = 0;
    np->st.link_lost++;
    if (np->cfg.role == COLO_NP_PRIMARY) {
        np_cmp_hold_all(&np->cmp, COLO_NP_LINK);
        np_report_comparing(np, "the NIC proxy's link to the secondary was lost");
    }
    signal_fd(np->event_fd);
}

static void link_put(colo_np *np, uint32_t type, uint64_t seq, const uint8_t *a, uint32_t alen,
                     const uint8_t *b, uint32_t blen)
{
    uint8_t *h;
    if (np->link_fd < 0 || np->out_head + np->out_len + NP_LINK_HEAD + alen + blen > NP_LINK_OUT_MAX) {
        if (np->out_head > 0 && np->link_fd >= 0) {
            memmove(np->out, np->out + np->out_head, np->out_len);
            np->out_head = 0;
        }
        if (np->link_fd < 0 || np->out_len + NP_LINK_HEAD + alen + blen > NP_LINK_OUT_MAX) {
            np->st.drop_link++;
            return;
        }
    }
    h = np->out + np->out_head + np->out_len;
    memset(h, 0, NP_LINK_HEAD);
    h[0] = (uint8_t)type;
    put32(h + 4, alen + blen);
    put32(h + 8, (uint32_t)(seq >> 32));
    put32(h + 12, (uint32_t)seq);
    memcpy(h + NP_LINK_HEAD, a, alen);
    if (blen)
        memcpy(h + NP_LINK_HEAD + alen, b, blen);
    np->out_len += NP_LINK_HEAD + alen + blen;
}

static void link_flush(colo_np *np)
{
    while (np->link_fd >= 0 && np->out_len > 0) {
        ssize_t n = send(np->link_fd, np->out + np->out_head, np->out_len, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR)
                link_close(np, "write");
            return;
        }
        np->out_head += (uint32_t)n;
        np->out_len -= (uint32_t)n;
    }
    if (np->out_len == 0)
        np->out_head = 0;
}

static void send_port(colo_np *np, int fd, const uint8_t *buf, uint32_t len)
{
    if (fd < 0 || send(fd, buf, len, MSG_NOSIGNAL) < 0)
        np->st.drop_ring++;
}

/* ---- what the comparer and rewriter call ---------------------------------------- */

static void cb_release(void *ctx, const uint8_t *buf, uint32_t len)
{
    colo_np *np = ctx;
    send_port(np, np->uplink_fd, buf, len);
}

static void cb_diverged(void *ctx, uint64_t tag, uint32_t proto, uint32_t reason)
{
    np_report_divergence(ctx, tag, proto, reason);
}

static void cb_undiverged(void *ctx)
{
    np_report_released(ctx);
}

static void cb_isn(void *ctx, const struct np_key *k, uint32_t isn, uint32_t tsval)
{
    uint8_t b[NP_ISN_LEN + 8];
    memset(b, 0, sizeof(b));
    put32(b, k->a_ip);
    put32(b + 4, k->b_ip);
    put32(b + 8, (uint32_t)k->a_port << 16 | k->b_port);
    b[12] = k->proto;
    put32(b + NP_ISN_LEN, isn);
    put32(b + NP_ISN_LEN + 4, tsval);
    link_put(ctx, NP_LINK_ISN, 0, b, sizeof(b), NULL, 0);
}

static void cb_emit(void *ctx, const uint8_t *buf, uint32_t len)
{
    colo_np *np = ctx;
    if (np->promoted)
        send_port(np, np->uplink_fd, buf, len);
    else
        link_put(np, NP_LINK_EGRESS, 0, buf, len, NULL, 0);
}

/* ---- frames in ---------------------------------------------------------------- */

static int parse_counted(colo_np *np, uint8_t *buf, uint32_t len, int from_guest, struct np_pkt *p)
{
    int rc = np_parse(buf, len, from_guest, p);
    if (rc == NP_RUNT)
        np->st.drop_runt++;
    else if (rc == NP_MALFORMED)
        np->st.drop_malformed++;
    return rc;
}

/* The primary: a frame from the network, for the guest and the secondary. */
static void primary_ingress(colo_np *np, uint8_t *buf, uint32_t len)
{
    uint64_t seq;
    if (len < NP_VNET_LEN + 14) {
        np->st.drop_runt++;   /* the rest pass as they are: each guest's stack judges them alike */
        return;
    }
    send_port(np, np->guest_fd, buf, len);
    seq = atomic_load(&np->ingress_seq) + 1;
    atomic_store(&np->ingress_seq, seq);
    np->st.ingress++;
    if (!np->cmp.passthrough)
        link_put(np, NP_LINK_INGRESS, seq, buf, len, NULL, 0);
}

static void primary_egress(colo_np *np, uint8_t *buf, uint32_t len)
{
    struct np_pkt p;
    np->st.egress++;
    if (parse_counted(np, buf, len, 1, &p) == NP_PARSED)
        np_cmp_primary(&np->cmp, &p, atomic_load(&np->ingress_seq), colo_now_ns());
}

/* The secondary (or the promoted one): a frame for its guest. */
static void secondary_ingress(colo_np *np, uint8_t *buf, uint32_t len)
{
    struct np_pkt p;
    int rc = np_parse(buf, len, 0, &p);
    if (rc == NP_RUNT) {
        np->st.drop_runt++;
        return;
    }
    if (rc == NP_PARSED)
        np_rw_to_guest(&np->rw, &p);
    send_port(np, np->guest_fd, buf, len);
    np->st.ingress++;
}

static void secondary_egress(colo_np *np, uint8_t *buf, uint32_t len)
{
    struct np_pkt p;
    np->st.egress++;
    if (parse_counted(np, buf, len, 1, &p) == NP_PARSED)
        np_rw_from_guest(&np->rw, &p);
}

/* One link message; nonzero: malformed, the link is dropped. */
static int link_message(colo_np *np, uint32_t type, uint64_t seq, uint8_t *body, uint32_t len)
{
    struct np_key k;
    struct np_pkt p;
    int primary = np->cfg.role == COLO_NP_PRIMARY && !np->promoted;
    if (type == NP_LINK_EGRESS && primary) {
        if (len < NP_VNET_LEN + 14)
            return -1;
        if (parse_counted(np, body, len, 1, &p) == NP_PARSED)
            np_cmp_secondary(&np->cmp, &p);
        return 0;
    }
    if (primary || np->promoted)
        return -1;
    if (type == NP_LINK_INGRESS) {
        if (len < NP_VNET_LEN + 14 || seq <= np->link_seq)
            return -1;   /* runts never leave the primary; the order is strict */
        np->link_seq = seq;
        if (seq <= np->floor) {
            np->st.drop_covered++;
            return 0;
        }
        secondary_ingress(np, body, len);
        return 0;
    }
    if (type != NP_LINK_ISN || len != NP_ISN_LEN + 8)
        return -1;
    memset(&k, 0, sizeof(k));
    k.a_ip = get32(body);
    k.b_ip = get32(body + 4);
    k.a_port = (uint16_t)(get32(body + 8) >> 16);
    k.b_port = (uint16_t)get32(body + 8);
    k.proto = body[12];
    np_rw_primary_isn(&np->rw, &k, get32(body + NP_ISN_LEN), get32(body + NP_ISN_LEN + 4));
    return 0;
}

static void link_read(colo_np *np)
{
    uint32_t off = 0;
    ssize_t n = recv(np->link_fd, np->in + np->in_len, NP_LINK_IN_CAP - np->in_len, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        link_close(np, n == 0 ? "closed by the peer" : "read");
        return;
    }
    if (n < 0)
        return;
    np->in_len += (uint32_t)n;
    while (np->in_len - off >= NP_LINK_HEAD) {
        uint8_t *h = np->in + off;
        uint32_t len = get32(h + 4);
        uint64_t seq = (uint64_t)get32(h + 8) << 32 | get32(h + 12);
        if (h[1] != 0 || h[2] != 0 || h[3] != 0 || len > NP_BUF_MAX) {
            link_close(np, "malformed frame");
            return;
        }
        if (np->in_len - off < NP_LINK_HEAD + len)
            break;
        if (link_message(np, h[0], seq, h + NP_LINK_HEAD, len) != 0) {
            link_close(np, "malformed frame");
            return;
        }
        off += NP_LINK_HEAD + len;
    }
    memmove(np->in, np->in + off, np->in_len - off);
    np->in_len -= off;
}

typedef void (*frame_fn)(colo_np *np, uint8_t *buf, uint32_t len);

static void port_read(colo_np *np, int fd, frame_fn fn)
{
    int n = recvmmsg(fd, np->msgs, NP_BATCH, MSG_DONTWAIT, NULL);
    for (int i = 0; i < n; i++) {
        if (np->msgs[i].msg_hdr.msg_flags & MSG_TRUNC)
            np->st.drop_malformed++;   /* past the largest frame */
        else
            fn(np, np->rx[i], np->msgs[i].msg_len);
        np->msgs[i].msg_hdr.msg_flags = 0;
    }
}

/* ---- the thread ------------------------------------------------------------------- */

static int poll_timeout(colo_np *np)
{
    uint64_t ns;
    if (np->cfg.role != COLO_NP_PRIMARY || np->promoted)
        return NP_TICK_MS;
    ns = np_cmp_expire(&np->cmp, colo_now_ns());
    return ns / 1000000u < NP_TICK_MS ? (int)(ns / 1000000u) + 1 : NP_TICK_MS;
}

static void loop_once(colo_np *np)
{
    struct pollfd pf[4];
    int primary, feeds_link_paused, n = 0, to;
    uint64_t drain;
    pthread_mutex_lock(&np->mu);
    primary = np->cfg.role == COLO_NP_PRIMARY;
    feeds_link_paused = np->out_len > NP_LINK_OUT_PAUSE;   /* backpressure: the kernel queue absorbs it */
    to = poll_timeout(np);
    pf[n++] = (struct pollfd){.fd = np->wake_fd, .events = POLLIN};
    /* The secondary's guest is always read: what it sends and is lost here
     * its stack never sends again (the link's bound drops and counts). */
    pf[n++] = (struct pollfd){.fd = np->guest_fd, .events = POLLIN};
    pf[n++] = (struct pollfd){.fd = (primary && feeds_link_paused) ? -1 : np->uplink_fd, .events = POLLIN};
    pf[n++] = (struct pollfd){.fd = np->link_fd,
                              .events = (short)(POLLIN | (np->out_len ? POLLOUT : 0))};
    pthread_mutex_unlock(&np->mu);
    if (poll(pf, (nfds_t)n, to) < 0)
        return;
    pthread_mutex_lock(&np->mu);
    if (pf[0].revents & POLLIN && read(np->wake_fd, &drain, sizeof(drain)) < 0)
        drain = 0;
    if (pf[2].revents & POLLIN && pf[2].fd == np->uplink_fd)
        port_read(np, np->uplink_fd, primary && !np->promoted ? primary_ingress : secondary_ingress);
    if (pf[1].revents & POLLIN && pf[1].fd == np->guest_fd)
        port_read(np, np->guest_fd, primary ? primary_egress : secondary_egress);
    if (pf[3].revents & (POLLIN | POLLHUP | POLLERR) && pf[3].fd == np->link_fd && np->link_fd >= 0)
        link_read(np);
    link_flush(np);
    pthread_mutex_unlock(&np->mu);
}

static void *np_thread(void *arg)
{
    colo_np *np = arg;
    while (!atomic_load(&np->stop))
        loop_once(np);
    return NULL;
}

/* ---- the API ------------------------------------------------------------------- */

static int check_config(const struct colo_np_config *cfg)
{
    if (cfg->role != COLO_NP_PRIMARY && cfg->role != COLO_NP_SECONDARY)
        return colo_fail(COLO_E_INVAL, "netproxy: role must be primary or secondary");
    if (cfg->compare_timeout_ms == 0 || cfg->max_conns == 0 || cfg->max_held_bytes < NP_BUF_MAX ||
        cfg->conn_buf_max < NP_BUF_MAX)
        return colo_fail(COLO_E_INVAL, "netproxy: timeout, table bound and byte bounds (>= %u) "
                         "must be set", (unsigned)NP_BUF_MAX);
    return COLO_OK;
}

static int alloc_buffers(colo_np *np)
{
    if ((np->in = malloc(NP_LINK_IN_CAP)) == NULL || (np->out = malloc(NP_LINK_OUT_MAX)) == NULL)
        return colo_fail(COLO_E_NOMEM, "netproxy: link buffers");
    for (int i = 0; i < NP_BATCH; i++) {
        if ((np->rx[i] = malloc(NP_BUF_MAX)) == NULL)
            return colo_fail(COLO_E_NOMEM, "netproxy: frame buffers");
        np->iov[i] = (struct iovec){.iov_base = np->rx[i], .iov_len = NP_BUF_MAX};
        np->msgs[i].msg_hdr.msg_iov = &np->iov[i];
        np->msgs[i].msg_hdr.msg_iovlen = 1;
    }
    return COLO_OK;
}

static int np_init(colo_np *np, const struct colo_np_config *cfg)
{
    int rc;
    struct np_cmp_ops cops = {cb_release, cb_diverged, cb_isn, cb_undiverged};
    struct np_rw_ops rops = {cb_emit};
    np->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    np->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (np->wake_fd < 0 || np->event_fd < 0)
        return colo_fail_errno(COLO_E_IO, errno, "netproxy: eventfd");
    if ((rc = alloc_buffers(np)) != COLO_OK)
        return rc;
    if (cfg->role == COLO_NP_PRIMARY)
        return np_cmp_init(&np->cmp, cfg, cops, np, &np->st);
    return np_rw_init(&np->rw, cfg, rops, np, &np->st);
}

int colo_np_new(const struct colo_np_config *cfg, int guest_fd, int uplink_fd, colo_np **out)
{
    colo_np *np;
    int rc;
    *out = NULL;
    if ((rc = check_config(cfg)) != COLO_OK)
        return rc;
    if (guest_fd < 0 || (cfg->role == COLO_NP_PRIMARY && uplink_fd < 0))
        return colo_fail(COLO_E_INVAL, "netproxy: a guest port (and, primary, an uplink port)");
    if ((np = calloc(1, sizeof(*np))) == NULL)
        return colo_fail(COLO_E_NOMEM, "netproxy");
    np->cfg = *cfg;
    np->guest_fd = guest_fd;
    np->uplink_fd = uplink_fd;
    np->link_fd = np->wake_fd = np->event_fd = -1;
    pthread_mutex_init(&np->mu, NULL);
    if ((rc = np_init(np, cfg)) != COLO_OK ||
        (rc = pthread_create(&np->thread, NULL, np_thread, np)) != 0) {
        if (rc > 0 && rc != COLO_OK)
            rc = colo_fail_errno(COLO_E_NOMEM, rc, "netproxy thread");
        np->guest_fd = np->uplink_fd = -1;   /* the caller keeps its fds on failure */
        colo_np_free(np);
        return rc;
    }
    np->started = 1;
    *out = np;
    return COLO_OK;
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

void colo_np_free(colo_np *np)
{
    if (np == NULL)
        return;
    if (np->started) {
        atomic_store(&np->stop, 1);
        signal_fd(np->wake_fd);
        pthread_join(np->thread, NULL);
    }
    if (np->cfg.role == COLO_NP_PRIMARY) {
        np_cmp_destroy(&np->cmp);   /* what it held is released to the arm */
        np_report_comparing(np, "the NIC proxy is closed");
    } else
        np_rw_destroy(&np->rw);
    close_fd(&np->guest_fd);
    close_fd(&np->uplink_fd);
    close_fd(&np->link_fd);
    close_fd(&np->wake_fd);
    close_fd(&np->event_fd);
    for (int i = 0; i < NP_BATCH; i++)
        free(np->rx[i]);
    free(np->in);
    free(np->out);
    pthread_mutex_destroy(&np->mu);
    free(np);
}

int colo_np_attach(colo_np *np, int link_fd)
{
    if (link_fd < 0)
        return colo_fail(COLO_E_INVAL, "netproxy: a link socket");
    pthread_mutex_lock(&np->mu);
    if (np->link_fd >= 0 || np->promoted) {
        pthread_mutex_unlock(&np->mu);
        return colo_fail(COLO_E_INVAL, "netproxy: a link is attached already, or promoted");
    }
    np->link_fd = link_fd;
    np->in_len = np->out_len = np->out_head = 0;
    np->link_seq = 0;
    if (np->cfg.role == COLO_NP_PRIMARY) {
        np->cmp.passthrough = 0;
        np->cmp.no_compare = 0;
        np_report_comparing(np, NULL);
    }
    pthread_mutex_unlock(&np->mu);
    signal_fd(np->wake_fd);
    return COLO_OK;
}

int colo_np_set_arm(colo_np *np, colo_arm *arm)
{
    if (np->cfg.role != COLO_NP_PRIMARY)
        return colo_fail(COLO_E_INVAL, "netproxy: only a primary reports into an arm");
    pthread_mutex_lock(&np->mu);
    np->arm = arm;
    np_report_comparing(np, np->link_fd >= 0 && !np->cmp.passthrough ? NULL
                        : "the NIC proxy has no secondary attached");
    pthread_mutex_unlock(&np->mu);
    return COLO_OK;
}

int colo_np_event_fd(const colo_np *np) { return np->event_fd; }

uint64_t colo_np_last_seq(colo_np *np) { return atomic_load(&np->ingress_seq); }

void colo_np_checkpoint_done(colo_np *np, uint64_t epoch, uint64_t last_seq)
{
    COLO_UNUSED(epoch);
    pthread_mutex_lock(&np->mu);
    np->st.checkpoints++;
    if (np->cfg.role == COLO_NP_PRIMARY) {
        np_cmp_covered(&np->cmp, last_seq);
    } else {
        /* A checkpoint that copies the guest's state carried every frame up
         * to last_seq; one of the namespace stand-ins (keep_offsets) carried none. */
        if (!np->cfg.keep_offsets && last_seq > np->floor)
            np->floor = last_seq;
        np_rw_checkpoint(&np->rw);
    }
    pthread_mutex_unlock(&np->mu);
}

void colo_np_unprotect(colo_np *np, uint64_t *released)
{
    uint64_t n = 0;
    pthread_mutex_lock(&np->mu);
    if (np->cfg.role == COLO_NP_PRIMARY) {
        n = np_cmp_release_all(&np->cmp);
        np_report_comparing(np, "the NIC proxy is unprotected");
    }
    pthread_mutex_unlock(&np->mu);
    if (released)
        *released = n;
}

int colo_np_promote(colo_np *np, int uplink_fd)
{
    if (np->cfg.role != COLO_NP_SECONDARY || uplink_fd < 0)
        return colo_fail(COLO_E_INVAL, "netproxy: only a secondary is promoted, onto an uplink port");
    pthread_mutex_lock(&np->mu);
    if (np->promoted) {
        pthread_mutex_unlock(&np->mu);
        return colo_fail(COLO_E_INVAL, "netproxy: promoted already");
    }
    close_fd(&np->link_fd);
    np->out_len = np->out_head = np->in_len = 0;
    np->uplink_fd = uplink_fd;
    np->promoted = 1;
    pthread_mutex_unlock(&np->mu);
    signal_fd(np->wake_fd);
    return COLO_OK;
}

void colo_np_stats(colo_np *np, struct colo_np_stats *out)
{
    pthread_mutex_lock(&np->mu);
    np->st.drop_ring += np_port_drops(np->guest_fd) + np_port_drops(np->uplink_fd);
    if (np->cfg.role == COLO_NP_PRIMARY) {
        np->st.held = np->cmp.held;
        np->st.held_bytes = np->cmp.held_bytes;
    }
    *out = np->st;
    pthread_mutex_unlock(&np->mu);
}
