/* rewriter.c - the secondary's sequence rewriter.  The two guests pick
 * their own initial sequence numbers; the client only ever sees the
 * primary's.  Each connection keeps offset = primary ISN - secondary ISN:
 * what the secondary guest sends gets seq + offset, what is injected into
 * it gets ack (and SACK edges) - offset.  The primary ISN comes from the
 * primary agent itself (a link message sent before the primary's SYN can
 * leave), not guessed from the client's first ACK as QEMU's
 * filter-rewriter does, so a lost or data-bearing first ACK changes
 * nothing.  The TCP timestamps get the same treatment (ts offset from the
 * two SYN-ACKs' TSvals, TSecr moved on the way in): Linux rejects a
 * handshake ACK whose TSecr it never sent (TSEcrRejected), which QEMU's
 * rewriter leaves to chance.  Checksums are patched incrementally, not
 * recomputed. */
#include <stdlib.h>
#include <string.h>

#include "netproxy_internal.h"

struct np_rwconn {
    struct np_entry e;
    uint8_t have_pri, have_sec, have_off;
    uint32_t pri_isn, sec_isn, offset;
    uint32_t pri_ts, sec_ts, ts_off;   /* the SYN-ACKs' TSvals (0: none) */
    uint8_t *stash;        /* the guest's SYN, until the primary's ISN is known */
    uint32_t stash_len;
};

static int rw_idle(struct np_entry *e) { return ((struct np_rwconn *)e)->stash == NULL; }

static void rw_free(struct np_entry *e, void *ctx)
{
    COLO_UNUSED(ctx);
    free(((struct np_rwconn *)e)->stash);
}

int np_rw_init(struct np_rw *r, const struct colo_np_config *cfg, struct np_rw_ops ops, void *ctx,
               struct colo_np_stats *st)
{
    memset(r, 0, sizeof(*r));
    r->keep_offsets = cfg->keep_offsets != 0;
    r->ops = ops;
    r->ctx = ctx;
    r->st = st;
    return np_table_init(&r->conns, cfg->max_conns, sizeof(struct np_rwconn), rw_idle, rw_free, r);
}

void np_rw_destroy(struct np_rw *r) { np_table_destroy(&r->conns); }

static struct np_rwconn *rw_get(struct np_rw *r, const struct np_key *k)
{
    int created;
    struct np_rwconn *c = (struct np_rwconn *)np_table_get(&r->conns, k, &created);
    if (c == NULL)
        r->st->table_full++;
    r->st->conns = r->conns.count;
    r->st->evicted = r->conns.evicted;
    return c;
}

static void learn(struct np_rwconn *c)
{
    if (c->have_pri && c->have_sec) {
        c->offset = c->pri_isn - c->sec_isn;
        c->ts_off = c->pri_ts && c->sec_ts ? c->pri_ts - c->sec_ts : 0;
        c->have_off = 1;
    }
}

static void to_primary(struct np_rw *r, struct np_rwconn *c, struct np_pkt *p)
{
    if (c != NULL && c->have_off && c->offset != 0) {
        np_tcp_set32(p, 4, p->seq + c->offset);
        r->st->rewritten++;
    }
    r->ops.emit(r->ctx, p->buf, p->len);
}

static void flush_stash(struct np_rw *r, struct np_rwconn *c)
{
    struct np_pkt p;
    uint8_t *buf = c->stash;
    c->stash = NULL;
    if (np_parse(buf, c->stash_len, 1, &p) == NP_PARSED)
        to_primary(r, c, &p);
    free(buf);
}

void np_rw_primary_isn(struct np_rw *r, const struct np_key *k, uint32_t isn, uint32_t tsval)
{
    struct np_rwconn *c = rw_get(r, k);
    if (c == NULL)
        return;
    if (c->have_pri && c->pri_isn != isn)
        c->have_sec = c->have_off = 0;   /* a new connection on the same ports */
    c->pri_isn = isn;
    c->pri_ts = tsval;
    c->have_pri = 1;
    learn(c);
    if (c->stash != NULL && c->have_off)
        flush_stash(r, c);
}

void np_rw_from_guest(struct np_rw *r, struct np_pkt *p)
{
    struct np_rwconn *c;
    if (p->proto != COLO_NP_TCP || p->frag || p->l4 == NULL) {
        r->ops.emit(r->ctx, p->buf, p->len);
        return;
    }
    if (!(p->flags & NP_TH_SYN)) {
        to_primary(r, (struct np_rwconn *)np_table_find(&r->conns, &p->key), p);
        return;
    }
    if ((c = rw_get(r, &p->key)) == NULL)
        return;
    c->sec_isn = p->seq;
    c->sec_ts = np_tcp_ts(p) ? np_rd32(np_tcp_ts(p)) : 0;
    c->have_sec = 1;
    learn(c);
    if (c->have_off) {
        to_primary(r, c, p);
        return;
    }
    free(c->stash);   /* a retransmitted SYN replaces the one kept */
    if ((c->stash = malloc(p->len)) == NULL) {
        r->st->table_full++;
        return;
    }
    memcpy(c->stash, p->buf, p->len);
    c->stash_len = p->len;
}

void np_rw_to_guest(struct np_rw *r, struct np_pkt *p)
{
    struct np_rwconn *c;
    if (p->proto != COLO_NP_TCP || p->frag || p->l4 == NULL)
        return;
    uint8_t *ts;
    c = (struct np_rwconn *)np_table_find(&r->conns, &p->key);
    if (c == NULL || !c->have_off || (c->offset == 0 && c->ts_off == 0))
        return;
    if (c->ts_off != 0 && (ts = np_tcp_ts(p)) != NULL && np_rd32(ts + 4) != 0)
        np_tcp_set_field(p, ts + 4, np_rd32(ts + 4) - c->ts_off);   /* TSecr */
    if (p->flags & NP_TH_ACK)
        np_tcp_set32(p, 8, p->ack - c->offset);
    np_tcp_sack_shift(p, c->offset);
    r->st->rewritten++;
}

void np_rw_checkpoint(struct np_rw *r)
{
    if (r->keep_offsets)
        return;   /* the guests' TCP state was not copied: the offsets still hold */
    for (struct np_entry *e = r->conns.lru; e != NULL; e = e->lnext)
        ((struct np_rwconn *)e)->offset = ((struct np_rwconn *)e)->ts_off = 0;   /* a VM checkpoint made the secondary's numbers the primary's */
}
