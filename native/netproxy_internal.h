/*
 * netproxy_internal.h - what the NIC proxy's files share (colo.h has the
 * contract): the parsed view of a frame, the bounded connection table, the
 * primary's comparer and the secondary's rewriter.
 */
#ifndef COLO_NETPROXY_INTERNAL_H
#define COLO_NETPROXY_INTERNAL_H

#include <stdint.h>

#include "internal.h"

/* Every frame on a port and on the link starts with a virtio-net header
 * (PACKET_VNET_HDR): GSO super-frames and partial checksums then pass as
 * the guest made them, and the kernel finishes them on the way out. */
#define NP_VNET_LEN 10
#define NP_VNET_F_NEEDS_CSUM 1
#define NP_BUF_MAX (NP_VNET_LEN + COLO_NP_MAX_FRAME)

/* ---- ports (netport.c) -------------------------------------------------- */

/* Frames the kernel dropped on fd since the last call (PACKET_STATISTICS). */
uint64_t np_port_drops(int fd);

/* ---- frames (netframe.c) ------------------------------------------------ */

/* A flow, seen from the guest: a = the guest's address and port. */
struct np_key {
    uint32_t a_ip, b_ip;
    uint16_t a_port, b_port;   /* ICMP: a_port = the echo id */
    uint8_t proto;             /* IPPROTO_* */
    uint8_t pad[3];
};

enum np_parse {
    NP_PARSED = 0,
    NP_RUNT = 1,         /* shorter than an Ethernet header */
    NP_MALFORMED = 2     /* IPv4 with a bad header, lengths or checksum */
};

struct np_pkt {
    uint8_t *buf;              /* the vnet header, then the frame */
    uint32_t len;              /* both */
    int proto;                 /* enum colo_np_proto */
    int frag;                  /* an IPv4 fragment: no transport header to trust */
    int needs_csum;            /* the checksum is partial: the kernel finishes it */
    uint8_t *ip, *l4, *payload;
    uint32_t payload_len;
    uint32_t seq, ack;         /* TCP */
    uint8_t flags;             /* TCP */
    uint32_t l4_len;           /* transport header + payload */
    struct np_key key;
};

#define NP_TH_FIN 0x01
#define NP_TH_SYN 0x02
#define NP_TH_RST 0x04
#define NP_TH_ACK 0x10

/* Parses buf (len bytes, vnet header first).  from_guest: the guest sent
 * it (key.a = source), else it is for the guest (key.a = destination). */
int np_parse(uint8_t *buf, uint32_t len, int from_guest, struct np_pkt *p);
/* Replaces a 32-bit field of the TCP header at off (4: seq, 8: ack),
 * keeping its checksum right (incrementally; none to fix when partial). */
void np_tcp_set32(struct np_pkt *p, uint32_t off, uint32_t value);
/* The TCP timestamp option's TSval field, or NULL (TSecr follows it). */
uint8_t *np_tcp_ts(struct np_pkt *p);
uint32_t np_rd32(const uint8_t *p);
/* Replaces the 32-bit field at field (inside the TCP header), checksum kept. */
void np_tcp_set_field(struct np_pkt *p, uint8_t *field, uint32_t value);
/* Moves every SACK block edge of the TCP options by -delta. */
void np_tcp_sack_shift(struct np_pkt *p, uint32_t delta);
uint32_t np_key_hash(const struct np_key *k);
int np_key_eq(const struct np_key *a, const struct np_key *b);
/* seq comparisons modulo 2^32 */
static inline int np_seq_lt(uint32_t a, uint32_t b) { return (int32_t)(a - b) < 0; }
static inline int np_seq_le(uint32_t a, uint32_t b) { return (int32_t)(a - b) <= 0; }

/* ---- the bounded table (nettable.c) ------------------------------------- */

/* Entries embed np_entry first.  At the bound the least recently used
 * entry the idle callback calls idle is evicted; none within a few looks:
 * the new entry is refused (counted by the caller). */
struct np_entry {
    struct np_key key;
    struct np_entry *hnext;
    struct np_entry *lprev, *lnext;   /* lprev: less recently used */
};

typedef int (*np_idle_fn)(struct np_entry *e);
typedef void (*np_free_fn)(struct np_entry *e, void *ctx);

struct np_table {
    struct np_entry **buckets;
    uint32_t nbuckets;             /* a power of two */
    uint32_t count, max;
    uint32_t entry_size;
    struct np_entry *lru, *mru;    /* the use order's two ends */
    np_idle_fn idle;
    np_free_fn on_free;
    void *ctx;
    uint64_t evicted;
};

int np_table_init(struct np_table *t, uint32_t max, uint32_t entry_size, np_idle_fn idle,
                  np_free_fn on_free, void *ctx);
void np_table_destroy(struct np_table *t);
struct np_entry *np_table_find(struct np_table *t, const struct np_key *k);
/* Finds or makes (zeroed but for the key) the entry of k; NULL: refused. */
struct np_entry *np_table_get(struct np_table *t, const struct np_key *k, int *created);
void np_table_remove(struct np_table *t, struct np_entry *e);

/* ---- the primary's comparer (tcpcompare.c) ------------------------------ */

struct np_frame;
struct np_conn;

/* Where released frames go (the uplink) and where divergences are told. */
struct np_cmp_ops {
    void (*release)(void *ctx, const uint8_t *buf, uint32_t len);
    void (*diverged)(void *ctx, uint64_t tag, uint32_t proto, uint32_t reason);
    void (*isn)(void *ctx, const struct np_key *k, uint32_t isn, uint32_t tsval);   /* the guest opened a connection */
    void (*undiverged)(void *ctx);   /* a reported divergence is over (its output left) */
};

struct np_cmp {
    struct np_table conns;
    struct np_frame *pend_head, *pend_tail;   /* frames waiting for the secondary, oldest first */
    struct np_conn *busy;                     /* connections with frames queued */
    uint64_t held, held_bytes;
    uint64_t sec_bytes;                       /* the secondary's unmatched bytes, all flows */
    uint64_t max_held_bytes;
    int passthrough;                          /* unprotected: output goes straight out */
    int no_compare;                           /* no link: output is held */
    uint32_t conn_buf_max;
    uint64_t timeout_ns;
    struct np_cmp_ops ops;
    void *ctx;
    struct colo_np_stats *st;
};

int np_cmp_init(struct np_cmp *c, const struct colo_np_config *cfg, struct np_cmp_ops ops,
                void *ctx, struct colo_np_stats *st);
void np_cmp_destroy(struct np_cmp *c);
/* The primary guest's frame, read after `tag` ingress frames. */
void np_cmp_primary(struct np_cmp *c, struct np_pkt *p, uint64_t tag, uint64_t now);
/* The secondary guest's frame (rewritten into the primary's numbers). */
void np_cmp_secondary(struct np_cmp *c, struct np_pkt *p);
/* Diverges what waited past the timeout; returns ns until the next check. */
uint64_t np_cmp_expire(struct np_cmp *c, uint64_t now);
/* A checkpoint covering every ingress frame <= last_seq resumed. */
void np_cmp_covered(struct np_cmp *c, uint64_t last_seq);
/* Nothing can be compared any more (the link is gone): hold everything. */
void np_cmp_hold_all(struct np_cmp *c, uint32_t reason);
/* Unprotect: everything released, and so is all further output. */
uint64_t np_cmp_release_all(struct np_cmp *c);

/* ---- the secondary's rewriter (rewriter.c) ------------------------------ */

struct np_rw_ops {
    void (*emit)(void *ctx, const uint8_t *buf, uint32_t len);   /* a frame the guest sent, rewritten */
};

struct np_rw {
    struct np_table conns;
    int keep_offsets;
    struct np_rw_ops ops;
    void *ctx;
    struct colo_np_stats *st;
};

int np_rw_init(struct np_rw *r, const struct colo_np_config *cfg, struct np_rw_ops ops, void *ctx,
               struct colo_np_stats *st);
void np_rw_destroy(struct np_rw *r);
/* The primary guest's initial sequence number of a connection. */
void np_rw_primary_isn(struct np_rw *r, const struct np_key *k, uint32_t isn, uint32_t tsval);
/* A frame for the guest: acks (and SACK edges) moved into its numbers. */
void np_rw_to_guest(struct np_rw *r, struct np_pkt *p);
/* A frame from the guest: seq moved into the primary's numbers, then
 * emitted (a SYN is kept until the primary's ISN is known). */
void np_rw_from_guest(struct np_rw *r, struct np_pkt *p);
void np_rw_checkpoint(struct np_rw *r);

#endif
