/* netframe.c - the NIC proxy's view of a frame: Ethernet, IPv4 and its
 * transports parsed with every length checked against the bytes there,
 * and the TCP header edits the rewriter makes, checksums kept right. */
#include <string.h>

#include "netproxy_internal.h"

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void wr32(uint8_t *p, uint32_t v)
{
    wr16(p, (uint16_t)(v >> 16));
    wr16(p + 2, (uint16_t)v);
}

/* The IPv4 header checksum: one's complement sum over ihl bytes. */
static int ip_csum_ok(const uint8_t *ip, uint32_t ihl)
{
    uint32_t sum = 0;
    for (uint32_t i = 0; i < ihl; i += 2)
        sum += rd16(ip + i);
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return sum == 0xffff;
}

static void set_key(struct np_pkt *p, int from_guest, uint16_t sport, uint16_t dport)
{
    uint32_t src = rd32(p->ip + 12), dst = rd32(p->ip + 16);
    memset(&p->key, 0, sizeof(p->key));
    p->key.proto = p->ip[9];
    p->key.a_ip = from_guest ? src : dst;
    p->key.b_ip = from_guest ? dst : src;
    p->key.a_port = from_guest ? sport : dport;
    p->key.b_port = from_guest ? dport : sport;
}

static int parse_tcp(struct np_pkt *p, int from_guest)
{
    uint32_t doff;
    if (p->l4_len < 20 || (doff = (uint32_t)(p->l4[12] >> 4) * 4) < 20 || doff > p->l4_len)
        return NP_MALFORMED;
    p->proto = COLO_NP_TCP;
    p->seq = rd32(p->l4 + 4);
    p->ack = rd32(p->l4 + 8);
    p->flags = p->l4[13];
    p->payload = p->l4 + doff;
    p->payload_len = p->l4_len - doff;
    set_key(p, from_guest, rd16(p->l4), rd16(p->l4 + 2));
    return NP_PARSED;
}

static int parse_udp(struct np_pkt *p, int from_guest)
{
    uint32_t ulen;
    if (p->l4_len < 8 || (ulen = rd16(p->l4 + 4)) < 8 || ulen > p->l4_len)
        return NP_MALFORMED;
    p->proto = COLO_NP_UDP;
    p->payload = p->l4 + 8;
    p->payload_len = ulen - 8;
    set_key(p, from_guest, rd16(p->l4), rd16(p->l4 + 2));
    return NP_PARSED;
}

static int parse_icmp(struct np_pkt *p, int from_guest)
{
    int echo;
    if (p->l4_len < 8)
        return NP_MALFORMED;
    /* The whole message is compared (its checksum follows from it);
     * echoes are told apart by their id, the rest share a flow. */
    echo = p->l4[0] == 0 || p->l4[0] == 8;
    p->proto = COLO_NP_ICMP;
    p->payload = p->l4;
    p->payload_len = p->l4_len;
    set_key(p, from_guest, echo ? rd16(p->l4 + 4) : 0, 0);
    return NP_PARSED;
}

static int parse_ipv4(struct np_pkt *p, uint32_t avail, int from_guest)
{
    uint32_t ihl, tot;
    if (avail < 20 || (p->ip[0] >> 4) != 4 || (ihl = (uint32_t)(p->ip[0] & 15) * 4) < 20 ||
        ihl > avail)
        return NP_MALFORMED;
    tot = rd16(p->ip + 2);
    if (tot == 0 && p->buf[1] != 0)
        tot = avail;   /* a GSO super-frame past 64 KiB says 0 */
    if (tot < ihl || tot > avail || !ip_csum_ok(p->ip, ihl))
        return NP_MALFORMED;
    p->l4 = p->ip + ihl;
    p->l4_len = tot - ihl;
    if ((rd16(p->ip + 6) & 0x3fff) != 0) {   /* MF or an offset: a fragment */
        p->frag = 1;
        p->proto = p->ip[9] == 6 ? COLO_NP_TCP : p->ip[9] == 17 ? COLO_NP_UDP
                 : p->ip[9] == 1 ? COLO_NP_ICMP : COLO_NP_OTHER;
        set_key(p, from_guest, 0, 0);
        return NP_PARSED;
    }
    switch (p->ip[9]) {
    case 6: return parse_tcp(p, from_guest);
    case 17: return parse_udp(p, from_guest);
    case 1: return parse_icmp(p, from_guest);
    default:
        set_key(p, from_guest, 0, 0);
        return NP_PARSED;   /* another IPv4 protocol: OTHER */
    }
}

int np_parse(uint8_t *buf, uint32_t len, int from_guest, struct np_pkt *p)
{
    memset(p, 0, sizeof(*p));
    p->buf = buf;
    p->len = len;
    p->proto = COLO_NP_OTHER;
    if (len < NP_VNET_LEN + 14)
        return NP_RUNT;
    p->needs_csum = buf[0] & NP_VNET_F_NEEDS_CSUM;
    if (rd16(buf + NP_VNET_LEN + 12) != 0x0800)
        return NP_PARSED;   /* ARP, IPv6, VLAN-tagged: OTHER */
    p->ip = buf + NP_VNET_LEN + 14;
    return parse_ipv4(p, len - NP_VNET_LEN - 14, from_guest);
}

/* RFC 1624: HC' = ~(~HC + ~m + m') for each 16-bit word changed. */
static void csum_replace16(uint8_t *csum, uint16_t old, uint16_t new)
{
    uint32_t sum = (uint16_t)~rd16(csum);
    sum += (uint16_t)~old;
    sum += new;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    wr16(csum, (uint16_t)~sum);
}

static void set32_at(struct np_pkt *p, uint8_t *field, uint32_t value)
{
    uint32_t old = rd32(field);
    if (!p->needs_csum) {   /* a partial checksum covers no header word: the kernel finishes it */
        csum_replace16(p->l4 + 16, (uint16_t)(old >> 16), (uint16_t)(value >> 16));
        csum_replace16(p->l4 + 16, (uint16_t)old, (uint16_t)value);
    }
    wr32(field, value);
}

void np_tcp_set32(struct np_pkt *p, uint32_t off, uint32_t value)
{
    set32_at(p, p->l4 + off, value);
    if (off == 4)
        p->seq = value;
    else if (off == 8)
        p->ack = value;
}

uint32_t np_rd32(const uint8_t *p) { return rd32(p); }

void np_tcp_set_field(struct np_pkt *p, uint8_t *field, uint32_t value)
{
    set32_at(p, field, value);
}

uint8_t *np_tcp_ts(struct np_pkt *p)
{
    uint8_t *o = p->l4 + 20, *end = p->payload;
    while (o < end && *o != 0) {
        uint32_t olen;
        if (*o == 1) {
            o++;
            continue;
        }
        if (o + 1 >= end || (olen = o[1]) < 2 || o + olen > end)
            return NULL;
        if (*o == 8 && olen == 10)
            return o + 2;
        o += olen;
    }
    return NULL;
}

void np_tcp_sack_shift(struct np_pkt *p, uint32_t delta)
{
    uint8_t *o = p->l4 + 20, *end = p->payload;
    while (o < end && *o != 0) {
        uint32_t olen;
        if (*o == 1) {   /* NOP */
            o++;
            continue;
        }
        if (o + 1 >= end || (olen = o[1]) < 2 || o + olen > end)
            return;   /* a broken option list: leave the rest as it is */
        if (*o == 5 && olen >= 10 && (olen - 2) % 8 == 0)
            for (uint8_t *e = o + 2; e < o + olen; e += 4)
                set32_at(p, e, rd32(e) - delta);
        o += olen;
    }
}

uint32_t np_key_hash(const struct np_key *k)
{
    uint64_t h = colo_xxh64(k, sizeof(*k), 0x6e70);
    return (uint32_t)(h ^ (h >> 32));
}

int np_key_eq(const struct np_key *a, const struct np_key *b)
{
    return memcmp(a, b, sizeof(*a)) == 0;
}
