/* service.c - the sim guest's key-value service, behind the sim backend's
 * guest network hooks (serve and served_seq in sim.c's ops table; the
 * contract is in internal.h): a deterministic program whose whole state
 * lives in guest pages, so a checkpoint carries it.  With a configured
 * probability a reply carries a nondeterministic field (as a real guest's
 * timestamps do), drawn from the host's random stream: that is what makes
 * a primary's and a secondary's replies diverge. */
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define SVC_MAGIC 0x31564b4f4c4f43ULL   /* "COLOKV1" */
#define SLOT_BYTES 256
#define SLOTS_PER_PAGE (COLO_PAGE_SIZE / SLOT_BYTES)
#define MAX_KEY 56
#define MAX_VALUE 192
#define MAX_REQUEST 512

/* Page 0 of the service area. */
struct svc_header {
    uint64_t magic;
    uint64_t last_seq;      /* highest request sequence number processed */
    uint64_t entries;
    uint64_t ops;
};

/* One slot; slots fill pages 1.. of the service area. */
struct svc_slot {
    uint8_t state;          /* 0 empty, 1 used, 2 deleted */
    uint8_t key_len;
    uint8_t val_len;
    uint8_t reserved[5];
    uint8_t key[MAX_KEY];
    uint8_t value[MAX_VALUE];
};

_Static_assert(sizeof(struct svc_slot) == SLOT_BYTES, "slot size");

struct request {
    const char *op, *key, *value;
    size_t op_len, key_len, value_len;
};

/* Page 0; the first request ever formats the store (zeroes every page). */
static struct svc_header *header(colo_domain *dom)
{
    struct svc_header *h = (struct svc_header *)colo_sim_page(dom, 0);
    if (h->magic != SVC_MAGIC) {
        for (uint64_t pfn = 0; pfn < colo_sim_service_pages(dom); pfn++) {
            memset(colo_sim_page(dom, pfn), 0, COLO_PAGE_SIZE);
            colo_sim_touch(dom, pfn);
        }
        h->magic = SVC_MAGIC;
    }
    colo_sim_touch(dom, 0);
    return h;
}

static uint64_t slot_count(colo_domain *dom) { return (colo_sim_service_pages(dom) - 1) * SLOTS_PER_PAGE; }

static struct svc_slot *slot_at(colo_domain *dom, uint64_t i)
{
    return (struct svc_slot *)(colo_sim_page(dom, 1 + i / SLOTS_PER_PAGE) + (i % SLOTS_PER_PAGE) * SLOT_BYTES);
}

/* The index of the slot holding key (*found = 1), or of the first free
 * slot on its probe path; -1 when the store is full. */
static int64_t find(colo_domain *dom, const struct request *rq, int *found)
{
    uint64_t n = slot_count(dom), i = colo_xxh64(rq->key, rq->key_len, 0) % n;
    int64_t free_index = -1;
    *found = 0;
    for (uint64_t probe = 0; probe < n; probe++, i = (i + 1) % n) {
        struct svc_slot *s = slot_at(dom, i);
        if (s->state == 0)
            return free_index >= 0 ? free_index : (int64_t)i;
        if (s->state == 2 && free_index < 0)
            free_index = (int64_t)i;
        if (s->state == 1 && s->key_len == rq->key_len && memcmp(s->key, rq->key, rq->key_len) == 0) {
            *found = 1;
            return (int64_t)i;
        }
    }
    return free_index;
}

static size_t word(const char **p, const char *end, const char **start)
{
    while (*p < end && **p == ' ')
        (*p)++;
    *start = *p;
    while (*p < end && **p != ' ')
        (*p)++;
    return (size_t)(*p - *start);
}

static int parse(const uint8_t *req, uint64_t len, struct request *rq)
{
    const char *p = (const char *)req, *end = p + len;
    if (len > MAX_REQUEST)
        return colo_fail(COLO_E_SERVICE, "request of %llu bytes past %d", (unsigned long long)len, MAX_REQUEST);
    while (end > p && (end[-1] == '\n' || end[-1] == '\r'))
        end--;
    for (const char *c = p; c < end; c++)
        if (*c < 0x20 || *c > 0x7e)
            return colo_fail(COLO_E_SERVICE, "request holds a non-printable byte 0x%02x", (uint8_t)*c);
    memset(rq, 0, sizeof(*rq));
    rq->op_len = word(&p, end, &rq->op);
    rq->key_len = word(&p, end, &rq->key);
    while (p < end && *p == ' ')
        p++;
    rq->value = p;  /* the rest of the line */
    rq->value_len = (size_t)(end - p);
    if (rq->key_len > MAX_KEY || rq->value_len > MAX_VALUE)
        return colo_fail(COLO_E_SERVICE, "key of at most %d and value of at most %d bytes", MAX_KEY, MAX_VALUE);
    return COLO_OK;
}

static int is_op(const struct request *rq, const char *op)
{
    return rq->op_len == strlen(op) && memcmp(rq->op, op, rq->op_len) == 0;
}

/* "WORD[ value][ t=nondeterministic]\n": the field when the dice say so. */
static int reply_line(colo_domain *dom, char *out, uint64_t cap, uint64_t *len, const char *word,
                      const char *value, size_t value_len)
{
    char nondet[24] = "";
    uint64_t ppm = colo_sim_divergence_ppm(dom);
    int n;
    if (ppm && colo_sim_random(dom) % 1000000 < ppm)
        snprintf(nondet, sizeof(nondet), " t=%016llx", (unsigned long long)colo_sim_random(dom));
    n = snprintf(out, cap, "%s%s%.*s%s\n", word, value ? " " : "", (int)value_len, value ? value : "", nondet);
    if (n < 0 || (uint64_t)n >= cap)
        return colo_fail(COLO_E_INVAL, "reply buffer of %llu bytes is too small", (unsigned long long)cap);
    *len = (uint64_t)n;
    return COLO_OK;
}

static int serve(colo_domain *dom, const struct request *rq, char *out, uint64_t cap, uint64_t *len)
{
    struct svc_header *h = header(dom);
    struct svc_slot *s;
    int64_t index;
    int found;
    char count[24];
    h->ops++;
    if (is_op(rq, "PING"))
        return reply_line(dom, out, cap, len, "PONG", NULL, 0);
    if (is_op(rq, "COUNT"))
        return reply_line(dom, out, cap, len, "COUNT", count,
                          (size_t)snprintf(count, sizeof(count), "%llu", (unsigned long long)h->entries));
    if (rq->key_len == 0 || !(is_op(rq, "SET") || is_op(rq, "GET") || is_op(rq, "DEL")))
        return reply_line(dom, out, cap, len, "ERROR", "unknown request", 15);
    index = find(dom, rq, &found);
    if (index < 0)
        return reply_line(dom, out, cap, len, "ERROR", "store full", 10);
    s = slot_at(dom, (uint64_t)index);
    if (is_op(rq, "GET"))
        return found ? reply_line(dom, out, cap, len, "VALUE", (const char *)s->value, s->val_len)
                     : reply_line(dom, out, cap, len, "NOT_FOUND", NULL, 0);
    if (is_op(rq, "DEL") && !found)
        return reply_line(dom, out, cap, len, "NOT_FOUND", NULL, 0);
    colo_sim_touch(dom, 1 + (uint64_t)index / SLOTS_PER_PAGE);
    if (is_op(rq, "DEL")) {
        s->state = 2;
        h->entries--;
        return reply_line(dom, out, cap, len, "DELETED", NULL, 0);
    }
    if (!found) {
        h->entries++;
        s->state = 1;
        s->key_len = (uint8_t)rq->key_len;
        memcpy(s->key, rq->key, rq->key_len);
    }
    s->val_len = (uint8_t)rq->value_len;
    memcpy(s->value, rq->value, rq->value_len);
    return reply_line(dom, out, cap, len, "OK", NULL, 0);
}

int colo_sim_service(colo_domain *dom, uint64_t seq, const uint8_t *req, uint64_t req_len, uint8_t *reply,
                     uint64_t cap, uint64_t *reply_len)
{
    struct request rq = {0};  /* parse fills it on success; zeroed so gcc sees no path reads it unset */
    int rc = parse(req, req_len, &rq);
    *reply_len = 0;
    if (rc)
        return rc;
    if ((rc = colo_sim_enter(dom, 1)) != COLO_OK)
        return rc;
    if (colo_sim_service_pages(dom) < COLO_SIM_SERVICE_MIN_PAGES) {  /* sim.c gives such a domain no hook */
        colo_sim_leave(dom);
        return colo_fail(COLO_E_SERVICE, "the domain has no service pages (needs 2 or more)");
    }
    if (seq && seq <= header(dom)->last_seq) {
        rc = colo_fail(COLO_E_DUPLICATE, "request %llu already processed (the guest is at %llu)",
                       (unsigned long long)seq, (unsigned long long)header(dom)->last_seq);
    } else if ((rc = serve(dom, &rq, (char *)reply, cap, reply_len)) == COLO_OK && seq) {
        header(dom)->last_seq = seq;
    }
    colo_sim_leave(dom);
    return rc;
}

int colo_sim_service_seq(colo_domain *dom, uint64_t *seq)
{
    int rc = colo_sim_enter(dom, 0);
    if (rc)
        return rc;
    *seq = colo_sim_service_pages(dom) ? header(dom)->last_seq : 0;
    colo_sim_leave(dom);
    return COLO_OK;
}
