/* tcpcompare.c - the primary's output comparer.  TCP is compared as two
 * byte streams a connection, in sequence order, so the two guests may cut
 * their segments differently (QEMU's colo-compare compares segment by
 * segment and checkpoints whenever they do); UDP and ICMP datagram by
 * datagram a flow.  A primary frame leaves once the secondary has sent the
 * same bytes up to its end; each connection's frames leave in order. */
#include <stdlib.h>
#include <string.h>

#include "netproxy_internal.h"

struct np_bytes {
    uint8_t *buf;
    uint32_t head, len, cap;
};

struct np_frame {
    struct np_frame *next;             /* the connection's queue */
    struct np_frame *pprev, *pnext;    /* the pending list (waiting for the secondary) */
    struct np_conn *conn;
    uint64_t tag, t_ns;
    uint32_t end;                      /* TCP: the sequence number past its payload */
    uint32_t poff, plen;               /* the compared bytes within data */
    uint8_t syn, fin, pending;
    uint32_t len;
    uint8_t data[];
};

struct np_conn {
    struct np_entry e;
    struct np_conn *bprev, *bnext;     /* the busy list: frames queued */
    struct np_frame *qhead, *qtail;
    uint32_t proto;                    /* enum colo_np_proto */
    uint8_t busy, diverged, have_base, sec_syn, pri_fin_set, sec_fin_set, rst, fin_out;
    uint8_t reported;                  /* the divergence was reported (and is owed a release) */
    uint32_t base;                     /* TCP: the first sequence number not matched yet */
    uint32_t pri_next;                 /* TCP: past the primary's highest byte, held or not */
    uint32_t pri_fin, sec_fin;
    struct np_bytes pri, sec;          /* TCP: unmatched bytes from base; DGRAM sec: records */
};

/* ---- byte buffers ----------------------------------------------------------- */

static int bytes_append(struct np_bytes *b, const uint8_t *d, uint32_t n)
{
    if (b->head + b->len + n > b->cap) {
        if (b->head > 0) {
            memmove(b->buf, b->buf + b->head, b->len);
            b->head = 0;
        }
        if (b->len + n > b->cap) {
            uint32_t cap = b->cap ? b->cap : 4096;
            uint8_t *nb;
            while (cap < b->len + n)
                cap *= 2;
            if ((nb = realloc(b->buf, cap)) == NULL)
                return -1;
            b->buf = nb;
            b->cap = cap;
        }
    }
    memcpy(b->buf + b->head + b->len, d, n);
    b->len += n;
    return 0;
}

static void bytes_consume(struct np_bytes *b, uint32_t n)
{
    b->head += n;
    b->len -= n;
    if (b->len == 0)
        b->head = 0;
}

static void bytes_free(struct np_bytes *b)
{
    free(b->buf);
    memset(b, 0, sizeof(*b));
}

static const uint8_t *bytes_at(const struct np_bytes *b) { return b->buf + b->head; }

/* ---- queues ------------------------------------------------------------------ */

static void pend_unlink(struct np_cmp *c, struct np_frame *f)
{
    if (!f->pending)
        return;
    if (f->pprev) f->pprev->pnext = f->pnext; else c->pend_head = f->pnext;
    if (f->pnext) f->pnext->pprev = f->pprev; else c->pend_tail = f->pprev;
    f->pprev = f->pnext = NULL;
    f->pending = 0;
}

static void busy_set(struct np_cmp *c, struct np_conn *k, int busy)
{
    if (k->busy == busy)
        return;
    if (busy) {
        k->bprev = NULL;
        k->bnext = c->busy;
        if (c->busy) c->busy->bprev = k;
        c->busy = k;
    } else {
        if (k->bprev) k->bprev->bnext = k->bnext; else c->busy = k->bnext;
        if (k->bnext) k->bnext->bprev = k->bprev;
        k->bprev = k->bnext = NULL;
    }
    k->busy = (uint8_t)busy;
}

static void enqueue(struct np_cmp *c, struct np_conn *k, struct np_frame *f)
{
    f->conn = k;
    if (k->qtail) k->qtail->next = f; else k->qhead = f;
    k->qtail = f;
    c->held++;
    c->held_bytes += f->len;
    busy_set(c, k, 1);
    if (c->no_compare)
        k->diverged = 1;   /* no link: held, the loss was reported once */
    if (!k->diverged) {
        f->pending = 1;
        f->pprev = c->pend_tail;
        if (c->pend_tail) c->pend_tail->pnext = f; else c->pend_head = f;
        c->pend_tail = f;
    }
}

/* Sends the connection's first frame on and frees it. */
static void pop_release(struct np_cmp *c, struct np_conn *k)
{
    struct np_frame *f = k->qhead;
    k->qhead = f->next;
    if (k->qhead == NULL) {
        k->qtail = NULL;
        busy_set(c, k, 0);
    }
    pend_unlink(c, f);
    c->held--;
    c->held_bytes -= f->len;
    c->ops.release(c->ctx, f->data, f->len);
    c->st->released++;
    if (f->fin)
        k->fin_out = 1;
    free(f);
}

static int conn_idle(struct np_entry *e)
{
    return ((struct np_conn *)e)->qhead == NULL;
}

/* The end of a divergence: what reported it is told it is over. */
static void undiverge(struct np_cmp *c, struct np_conn *k)
{
    if (k->reported)
        c->ops.undiverged(c->ctx);
    k->diverged = k->reported = 0;
}

static void conn_free(struct np_entry *e, void *ctx)
{
    struct np_cmp *c = ctx;
    struct np_conn *k = (struct np_conn *)e;
    while (k->qhead != NULL) {   /* only at destroy: a conn with frames is never evicted */
        struct np_frame *f = k->qhead;
        k->qhead = f->next;
        pend_unlink(c, f);
        c->held--;
        c->held_bytes -= f->len;
        free(f);
    }
    busy_set(c, k, 0);
    undiverge(c, k);
    c->sec_bytes -= k->sec.len;
    bytes_free(&k->pri);
    bytes_free(&k->sec);
}

int np_cmp_init(struct np_cmp *c, const struct colo_np_config *cfg, struct np_cmp_ops ops,
                void *ctx, struct colo_np_stats *st)
{
    memset(c, 0, sizeof(*c));
    c->ops = ops;
    c->ctx = ctx;
    c->st = st;
    c->max_held_bytes = cfg->max_held_bytes;
    c->conn_buf_max = cfg->conn_buf_max;
    c->timeout_ns = (uint64_t)cfg->compare_timeout_ms * 1000000u;
    c->passthrough = 1;   /* unattached: unprotected */
    return np_table_init(&c->conns, cfg->max_conns, sizeof(struct np_conn), conn_idle, conn_free, c);
}

void np_cmp_destroy(struct np_cmp *c)
{
    np_table_destroy(&c->conns);
}

/* ---- divergence ------------------------------------------------------------- */

static void diverge(struct np_cmp *c, struct np_conn *k, uint32_t reason)
{
    uint64_t tag = 0;
    if (k->diverged)
        return;
    k->diverged = k->reported = 1;
    busy_set(c, k, 1);   /* even with nothing held yet: a checkpoint must clear it */
    for (struct np_frame *f = k->qhead; f != NULL; f = f->next) {
        pend_unlink(c, f);
        tag = f->tag;
    }
    if (reason == COLO_NP_TIMEOUT)
        c->st->timeout[k->proto]++;
    else if (reason == COLO_NP_MISMATCH)
        c->st->mismatch[k->proto]++;
    else if (reason == COLO_NP_UNCOMPARABLE)
        c->st->uncomparable[k->proto]++;
    c->st->divergences++;
    c->ops.diverged(c->ctx, tag, k->proto, reason);
}

/* ---- TCP ---------------------------------------------------------------------- */

static int tcp_releasable(const struct np_conn *k, const struct np_frame *f)
{
    if (!np_seq_le(f->end, k->base))
        return 0;
    if (f->syn && !k->sec_syn)
        return 0;
    return !f->fin || (k->sec_fin_set && k->sec_fin == k->pri_fin && k->base == k->pri_fin);
}

static void tcp_match(struct np_cmp *c, struct np_conn *k)
{
    uint32_t n = k->pri.len < k->sec.len ? k->pri.len : k->sec.len;
    if (k->diverged)
        return;
    if (n > 0) {
        if (memcmp(bytes_at(&k->pri), bytes_at(&k->sec), n) != 0) {
            diverge(c, k, COLO_NP_MISMATCH);
            return;
        }
        bytes_consume(&k->pri, n);
        bytes_consume(&k->sec, n);
        c->sec_bytes -= n;
        k->base += n;
    }
    if (k->pri_fin_set && k->sec_fin_set && k->pri_fin != k->sec_fin)
        diverge(c, k, COLO_NP_MISMATCH);
}

static void drain(struct np_cmp *c, struct np_conn *k)
{
    while (k->qhead != NULL && !k->diverged) {
        struct np_frame *f = k->qhead;
        if (k->proto == COLO_NP_TCP && !tcp_releasable(k, f))
            break;
        if (k->proto != COLO_NP_TCP)
            break;   /* datagrams leave from dgram_match */
        c->st->equal[k->proto]++;
        pop_release(c, k);
    }
    if (k->qhead == NULL && (k->rst || k->fin_out))
        np_table_remove(&c->conns, &k->e);   /* closed: its late ACKs pass uncompared */
}

/* Appends [start, start+n) of a stream whose next expected byte is at end. */
static int stream_take(struct np_bytes *b, uint32_t end, uint32_t start, const uint8_t *d,
                       uint32_t n, uint32_t *added)
{
    *added = 0;
    if (n == 0 || np_seq_le(start + n, end))
        return 0;            /* nothing new: a retransmission */
    if (np_seq_lt(end, start))
        return -1;           /* a hole */
    *added = start + n - end;
    return bytes_append(b, d + (end - start), *added);
}

static struct np_frame *frame_new(struct np_pkt *p, uint64_t tag, uint64_t now)
{
    struct np_frame *f = malloc(sizeof(*f) + p->len);
    if (f == NULL)
        return NULL;
    memset(f, 0, sizeof(*f));
    memcpy(f->data, p->buf, p->len);
    f->len = p->len;
    f->tag = tag;
    f->t_ns = now;
    f->poff = (uint32_t)(p->payload - p->buf);
    f->plen = p->payload_len;
    return f;
}

static void tcp_primary(struct np_cmp *c, struct np_conn *k, struct np_pkt *p, struct np_frame *f)
{
    uint32_t start = p->seq + ((p->flags & NP_TH_SYN) ? 1 : 0), added;
    if (p->flags & NP_TH_SYN) {
        if (!k->have_base) {
            uint8_t *ts = np_tcp_ts(p);
            c->ops.isn(c->ctx, &k->e.key, p->seq, ts ? np_rd32(ts) : 0);
        }
        if (!k->have_base || k->base != start) {
            k->base = k->pri_next = start;
            k->have_base = 1;
        }
        f->syn = 1;
    } else if (!k->have_base) {   /* first seen mid-stream (evicted, or older than the proxy) */
        k->base = k->pri_next = p->seq;
        k->have_base = 1;
    }
    f->end = start + p->payload_len;
    if (np_seq_lt(k->pri_next, f->end))
        k->pri_next = f->end;
    if (p->flags & NP_TH_FIN) {
        f->fin = 1;
        k->pri_fin = f->end;
        k->pri_fin_set = 1;
    }
    if (p->flags & NP_TH_RST)
        k->rst = 1;
    enqueue(c, k, f);
    /* Diverged, the streams are still followed (no compare), so that a
     * checkpoint restarts the compare where both guests are. */
    if (k->diverged && k->pri.len + p->payload_len > c->conn_buf_max)
        return;
    if (stream_take(&k->pri, k->base + k->pri.len, start, p->payload, p->payload_len, &added) != 0)
        diverge(c, k, COLO_NP_MISMATCH);   /* a guest sends in order: a hole is not comparable */
    if (k->diverged)
        return;
    tcp_match(c, k);
    drain(c, k);
}

static void tcp_secondary(struct np_cmp *c, struct np_conn *k, struct np_pkt *p)
{
    uint32_t start = p->seq + ((p->flags & NP_TH_SYN) ? 1 : 0), added;
    if (p->flags & NP_TH_SYN)
        k->sec_syn = 1;
    if (!k->have_base) {
        k->base = k->pri_next = start;
        k->have_base = 1;
    }
    if (p->payload_len > 0 && k->sec.len + p->payload_len > c->conn_buf_max) {
        c->st->drop_held_full++;
        return;
    }
    if (stream_take(&k->sec, k->base + k->sec.len, start, p->payload, p->payload_len, &added) != 0) {
        /* A hole: some of the secondary's output was lost on the way (its
         * stack will not send it again, the client acks the primary's). */
        diverge(c, k, COLO_NP_TIMEOUT);
        return;
    }
    c->sec_bytes += added;
    if (p->flags & NP_TH_FIN) {
        k->sec_fin = start + p->payload_len;
        k->sec_fin_set = 1;
    }
    tcp_match(c, k);
    drain(c, k);
}

/* ---- datagrams ------------------------------------------------------------------ */

static void dgram_match(struct np_cmp *c, struct np_conn *k)
{
    while (!k->diverged && k->qhead != NULL && k->sec.len >= 4) {
        struct np_frame *f = k->qhead;
        uint32_t n;
        memcpy(&n, bytes_at(&k->sec), 4);
        if (n != f->plen || memcmp(bytes_at(&k->sec) + 4, f->data + f->poff, n) != 0) {
            diverge(c, k, COLO_NP_MISMATCH);
            return;
        }
        bytes_consume(&k->sec, 4 + n);
        c->sec_bytes -= 4 + n;
        c->st->equal[k->proto]++;
        pop_release(c, k);
    }
}

static void dgram_secondary(struct np_cmp *c, struct np_conn *k, struct np_pkt *p)
{
    uint32_t n = p->payload_len;
    if (k->sec.len + 4 + n > c->conn_buf_max || bytes_append(&k->sec, (uint8_t *)&n, 4) != 0) {
        c->st->drop_held_full++;
        return;
    }
    if (bytes_append(&k->sec, p->payload, n) != 0) {
        k->sec.len -= 4;
        c->st->drop_held_full++;
        return;
    }
    c->sec_bytes += 4 + n;
    dgram_match(c, k);
}

/* ---- what comes in ------------------------------------------------------------------ */

static struct np_conn *conn_get(struct np_cmp *c, const struct np_pkt *p)
{
    int created;
    struct np_conn *k = (struct np_conn *)np_table_get(&c->conns, &p->key, &created);
    if (k == NULL) {
        c->st->table_full++;
        return NULL;
    }
    if (created) {
        k->proto = (uint32_t)p->proto;
        if (c->no_compare)
            k->diverged = 1;
    }
    c->st->evicted = c->conns.evicted;
    c->st->conns = c->conns.count;
    return k;
}

void np_cmp_primary(struct np_cmp *c, struct np_pkt *p, uint64_t tag, uint64_t now)
{
    struct np_conn *k;
    struct np_frame *f;
    int control = p->proto == COLO_NP_TCP && !p->frag && p->payload_len == 0 &&
                  !(p->flags & (NP_TH_SYN | NP_TH_FIN));
    if (c->passthrough || p->proto == COLO_NP_OTHER ||
        (control && np_table_find(&c->conns, &p->key) == NULL)) {
        /* unprotected; ARP and the rest; an ACK or RST of no tracked connection */
        c->st->passed[p->proto]++;
        c->st->released++;
        c->ops.release(c->ctx, p->buf, p->len);
        return;
    }
    if (c->held_bytes + p->len > c->max_held_bytes ||
        p->payload_len > c->conn_buf_max) {
        c->st->drop_held_full++;   /* the guest retransmits what the bound dropped */
        return;
    }
    if ((k = conn_get(c, p)) == NULL || (f = frame_new(p, tag, now)) == NULL)
        return;
    if (p->frag) {
        enqueue(c, k, f);
        diverge(c, k, COLO_NP_UNCOMPARABLE);
    } else if (p->proto == COLO_NP_TCP) {
        tcp_primary(c, k, p, f);
    } else {
        enqueue(c, k, f);
        dgram_match(c, k);
    }
}

void np_cmp_secondary(struct np_cmp *c, struct np_pkt *p)
{
    struct np_conn *k;
    if (c->passthrough || c->no_compare || p->proto == COLO_NP_OTHER || p->frag)
        return;   /* nothing of it leaves: the primary's own frames do */
    if (p->proto == COLO_NP_TCP && p->payload_len == 0 && !(p->flags & (NP_TH_SYN | NP_TH_FIN))) {
        if ((k = (struct np_conn *)np_table_find(&c->conns, &p->key)) == NULL)
            return;   /* a bare ACK says nothing to compare */
    } else if (c->sec_bytes + p->payload_len > c->max_held_bytes ||
               (k = conn_get(c, p)) == NULL) {
        c->st->drop_held_full += k == NULL ? 0 : 1;
        return;
    }
    if (p->proto == COLO_NP_TCP)
        tcp_secondary(c, k, p);   /* diverged too: followed, not compared */
    else
        dgram_secondary(c, k, p);
}

uint64_t np_cmp_expire(struct np_cmp *c, uint64_t now)
{
    while (c->pend_head != NULL && now - c->pend_head->t_ns >= c->timeout_ns)
        diverge(c, c->pend_head->conn, COLO_NP_TIMEOUT);
    return c->pend_head ? c->timeout_ns - (now - c->pend_head->t_ns) : c->timeout_ns;
}

/* After a checkpoint both guests are the primary's state: the streams
 * start again from what the primary sent. */
static void resync(struct np_cmp *c, struct np_conn *k)
{
    undiverge(c, k);
    busy_set(c, k, 0);
    if (k->proto == COLO_NP_TCP) {
        uint32_t ahead = np_seq_lt(k->base, k->pri_next) ? k->pri_next - k->base : 0;
        uint32_t skip = ahead < k->sec.len ? ahead : k->sec.len;
        k->base = k->pri_next;
        bytes_consume(&k->sec, skip);
        c->sec_bytes -= skip;
        k->pri.len = k->pri.head = 0;
        k->sec_syn = 1;
        if (k->pri_fin_set) {
            k->sec_fin = k->pri_fin;
            k->sec_fin_set = 1;
        }
    } else {
        c->sec_bytes -= k->sec.len;
        k->sec.len = k->sec.head = 0;
    }
}

void np_cmp_covered(struct np_cmp *c, uint64_t last_seq)
{
    struct np_conn *k = c->busy, *next;
    for (; k != NULL; k = next) {
        next = k->bnext;
        while (k->qhead != NULL && k->qhead->tag <= last_seq) {
            c->st->ckpt_released++;
            pop_release(c, k);
        }
        if (k->qhead == NULL) {
            resync(c, k);
            if (k->rst || k->fin_out)
                np_table_remove(&c->conns, &k->e);
        } else if (k->diverged) {
            /* still held: the next checkpoint must come too (the arm
             * still counts it; reason 0 only wakes the event fd) */
            c->ops.diverged(c->ctx, k->qtail->tag, k->proto, 0);
        }
    }
}

void np_cmp_hold_all(struct np_cmp *c, uint32_t reason)
{
    c->no_compare = 1;
    for (struct np_conn *k = c->busy; k != NULL; k = k->bnext)
        diverge(c, k, reason);
}

uint64_t np_cmp_release_all(struct np_cmp *c)
{
    uint64_t n = 0;
    while (c->busy != NULL) {
        struct np_conn *k = c->busy;
        while (k->qhead != NULL) {
            pop_release(c, k);
            n++;
        }
        resync(c, k);   /* off the busy list, even if it held nothing */
    }
    c->passthrough = 1;
    c->no_compare = 0;
    return n;
}
