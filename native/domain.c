/* domain.c - what every backend shares: page memory, staging of a received
 * checkpoint and its one-step commit, hashing, page copy-in/out, and the
 * door to the guest's network endpoint (the backend's optional hooks). */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

#define STAGE_GROW_PAGES 1024

int colo_domain_init(colo_domain *dom, const struct colo_backend_ops *ops, uint64_t pages, void *priv)
{
    memset(dom, 0, sizeof(*dom));
    dom->ops = ops;
    dom->type = ops->type;
    dom->pages = pages;
    dom->priv = priv;
    dom->staging.slot_of_pfn = calloc(pages, sizeof(uint32_t));
    if (dom->staging.slot_of_pfn == NULL)
        return colo_fail(COLO_E_NOMEM, "staging index for %llu pages", (unsigned long long)pages);
    return COLO_OK;
}

int colo_domain_alloc_pages(colo_domain *dom, uint64_t n, uint8_t **out)
{
    struct colo_chunk *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return colo_fail(COLO_E_NOMEM, "chunk header");
    c->len = (size_t)n * COLO_PAGE_SIZE;
    c->base = mmap(NULL, c->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (c->base == MAP_FAILED) {
        free(c);
        return colo_fail(COLO_E_NOMEM, "mapping %llu pages", (unsigned long long)n);
    }
    /* Guest memory is backed by 2 MiB pages on real hosts too; without them
     * every scattered dirty page costs a TLB miss.  Advice only. */
    (void)madvise(c->base, c->len, MADV_HUGEPAGE);
    c->next = dom->chunks;
    dom->chunks = c;
    *out = c->base;
    return COLO_OK;
}

void colo_domain_close(colo_domain *dom)
{
    struct colo_chunk *c, *next;
    if (dom == NULL)
        return;
    if (dom->ops->close)
        dom->ops->close(dom);
    for (c = dom->chunks; c; c = next) {
        next = c->next;
        munmap(c->base, c->len);
        free(c);
    }
    free(dom->staging.pfns);
    free(dom->staging.slots);
    free(dom->staging.slot_of_pfn);
    free(dom->staging.context);
    free(dom);
}

const char *colo_domain_backend(const colo_domain *dom) { return dom->ops->name; }
uint64_t colo_domain_pages(const colo_domain *dom) { return dom->pages; }
uint32_t colo_domain_type(const colo_domain *dom) { return dom->type; }
int colo_domain_is_paused(const colo_domain *dom) { return dom->paused; }

int colo_domain_present(colo_domain *dom, int *present)
{
    if (present == NULL)
        return colo_fail(COLO_E_INVAL, "colo_domain_present: NULL argument");
    *present = 1;
    return dom->ops->present ? dom->ops->present(dom, present) : COLO_OK;
}

int colo_domain_pause(colo_domain *dom)
{
    int rc = dom->ops->pause(dom);
    if (rc == COLO_OK)
        dom->paused = 1;
    return rc;
}

int colo_domain_unpause(colo_domain *dom)
{
    int rc = dom->ops->unpause(dom);
    if (rc == COLO_OK)
        dom->paused = 0;
    return rc;
}

int colo_domain_logdirty_enable(colo_domain *dom) { return dom->ops->logdirty_enable(dom); }
int colo_domain_logdirty_disable(colo_domain *dom) { return dom->ops->logdirty_disable(dom); }

int colo_domain_dirty_read_clear(colo_domain *dom, colo_bitmap *out)
{
    if (out->nbits != dom->pages)
        return colo_fail(COLO_E_INVAL, "dirty bitmap has %llu bits, domain has %llu pages",
                         (unsigned long long)out->nbits, (unsigned long long)dom->pages);
    return dom->ops->dirty_read_clear(dom, out);
}

int colo_domain_context_get(colo_domain *dom, uint8_t *buf, uint64_t cap, uint64_t *len)
{
    return dom->ops->context_get(dom, buf, cap, len);
}

int colo_domain_context_set(colo_domain *dom, const uint8_t *buf, uint64_t len)
{
    if (len > COLO_MAX_CONTEXT_BYTES)
        return colo_fail(COLO_E_INVAL, "context of %llu bytes past the %d byte bound",
                         (unsigned long long)len, COLO_MAX_CONTEXT_BYTES);
    return dom->ops->context_set(dom, buf, len);
}

/* ---- the guest's network endpoint -------------------------------------- */

/* The refusal of a domain without the guest network hooks: which backend,
 * what wanted them, and what the backend says to do instead. */
static int no_guest_net(const colo_domain *dom, const char *who)
{
    const char *why = dom->ops->no_guest_net;
    return colo_fail(COLO_E_UNSUPPORTED, "backend %s has no guest network hook, needed %s%s%s", dom->ops->name,
                     who, why ? ": " : "", why ? why : "");
}

int colo_domain_need_guest_net(const colo_domain *dom, const char *who)
{
    const struct colo_backend_ops *ops = dom->ops;
    return ops->serve && ops->served_seq && ops->resumed_fd ? COLO_OK : no_guest_net(dom, who);
}

/* On the proxy's hot path: one test and an indirect call, no lock. */
int colo_domain_serve(colo_domain *dom, uint64_t seq, const uint8_t *req, uint64_t req_len, uint8_t *reply,
                      uint64_t cap, uint64_t *reply_len)
{
    if (dom->ops->serve == NULL) {
        *reply_len = 0;
        return no_guest_net(dom, "to serve a request");
    }
    return dom->ops->serve(dom, seq, req, req_len, reply, cap, reply_len);
}

int colo_domain_served_seq(colo_domain *dom, uint64_t *seq)
{
    if (dom->ops->served_seq == NULL)
        return no_guest_net(dom, "to read the last request served");
    return dom->ops->served_seq(dom, seq);
}

int colo_domain_resumed_fd(const colo_domain *dom, int *fd)
{
    if (dom->ops->resumed_fd == NULL)
        return no_guest_net(dom, "to wait for the guest to resume");
    *fd = dom->ops->resumed_fd(dom);
    return COLO_OK;
}

/* ---- pages -------------------------------------------------------------- */

static int check_pfn(const colo_domain *dom, uint64_t pfn)
{
    if (pfn < dom->pages)
        return COLO_OK;
    return colo_fail(COLO_E_PFN_RANGE, "pfn %llu past domain size %llu",
                     (unsigned long long)pfn, (unsigned long long)dom->pages);
}

static int copy_page(colo_domain *dom, uint64_t pfn, uint8_t *out, const uint8_t *in)
{
    uint8_t *ptr = NULL;
    struct colo_mapping m = {.ptrs = &ptr};
    int rc = check_pfn(dom, pfn);
    if (rc == COLO_OK)
        rc = dom->ops->map(dom, &pfn, 1, in != NULL, &m);
    if (rc)
        return rc;
    if (in)
        memcpy(ptr, in, COLO_PAGE_SIZE);
    else
        memcpy(out, ptr, COLO_PAGE_SIZE);
    dom->ops->unmap(dom, &m);
    return COLO_OK;
}

int colo_domain_read_page(colo_domain *dom, uint64_t pfn, uint8_t *buf)
{
    return copy_page(dom, pfn, buf, NULL);
}

int colo_domain_write_page(colo_domain *dom, uint64_t pfn, const uint8_t *buf)
{
    if (!dom->paused)
        return colo_fail(COLO_E_NOT_PAUSED, "write_page: pause the domain first");
    return copy_page(dom, pfn, NULL, buf);
}

/* ---- hashing ------------------------------------------------------------ */

static int hash_batch(colo_domain *dom, uint64_t first, uint64_t n, uint64_t *hashes)
{
    uint64_t pfns[COLO_MAX_PFNS_PER_RECORD];
    uint8_t *ptrs[COLO_MAX_PFNS_PER_RECORD];
    struct colo_mapping m = {.ptrs = ptrs};
    int rc;
    for (uint64_t i = 0; i < n; i++)
        pfns[i] = first + i;
    rc = dom->ops->map(dom, pfns, n, 0, &m);
    if (rc)
        return rc;
    for (uint64_t i = 0; i < n; i++)
        hashes[i] = colo_xxh64(ptrs[i], COLO_PAGE_SIZE, 0);
    dom->ops->unmap(dom, &m);
    return COLO_OK;
}

int colo_domain_hash(colo_domain *dom, uint64_t *memory_hash, uint64_t *context_hash,
                     uint64_t *page_hashes)
{
    uint64_t *hashes = page_hashes, ctx_len = 0;
    uint8_t *ctx;
    int rc = COLO_OK;
    if (hashes == NULL && (hashes = malloc(dom->pages * sizeof(uint64_t))) == NULL)
        return colo_fail(COLO_E_NOMEM, "page hash array");
    for (uint64_t first = 0; rc == COLO_OK && first < dom->pages; first += COLO_MAX_PFNS_PER_RECORD) {
        uint64_t n = dom->pages - first;
        rc = hash_batch(dom, first, n < COLO_MAX_PFNS_PER_RECORD ? n : COLO_MAX_PFNS_PER_RECORD,
                        hashes + first);
    }
    if (rc == COLO_OK)
        *memory_hash = colo_xxh64(hashes, dom->pages * sizeof(uint64_t), dom->pages);
    if (hashes != page_hashes)
        free(hashes);
    if (rc)
        return rc;
    if ((ctx = malloc(COLO_MAX_CONTEXT_BYTES)) == NULL)
        return colo_fail(COLO_E_NOMEM, "context buffer");
    rc = dom->ops->context_get(dom, ctx, COLO_MAX_CONTEXT_BYTES, &ctx_len);
    if (rc == COLO_OK)
        *context_hash = colo_xxh64(ctx, ctx_len, 0);
    free(ctx);
    return rc;
}

/* ---- staging ------------------------------------------------------------ */

void colo_stage_discard(colo_domain *dom)
{
    struct colo_staging *st = &dom->staging;
    for (uint64_t i = 0; i < st->n; i++)
        st->slot_of_pfn[st->pfns[i]] = 0;
    st->n = 0;
    st->has_context = 0;
    st->context_len = 0;
    st->owner = NULL;
}

void colo_domain_staged(const colo_domain *dom, uint64_t *pages, int *context)
{
    *pages = dom->staging.n;
    *context = dom->staging.has_context;
}

/* Adds STAGE_GROW_PAGES slots backed by one new chunk of the domain's. */
static int stage_grow(colo_domain *dom)
{
    struct colo_staging *st = &dom->staging;
    uint64_t cap = st->cap + STAGE_GROW_PAGES;
    uint64_t *pfns = realloc(st->pfns, cap * sizeof(*pfns));
    uint8_t **slots, *mem;
    int rc;
    if (pfns == NULL)
        return colo_fail(COLO_E_NOMEM, "staging pfn list");
    st->pfns = pfns;
    slots = realloc(st->slots, cap * sizeof(*slots));
    if (slots == NULL)
        return colo_fail(COLO_E_NOMEM, "staging slots");
    st->slots = slots;
    rc = colo_domain_alloc_pages(dom, STAGE_GROW_PAGES, &mem);
    if (rc)
        return rc;
    for (uint64_t i = 0; i < STAGE_GROW_PAGES; i++)
        st->slots[st->cap + i] = mem + i * COLO_PAGE_SIZE;
    st->cap = cap;
    return COLO_OK;
}

int colo_stage_page(colo_domain *dom, uint64_t pfn, uint8_t **buf)
{
    struct colo_staging *st = &dom->staging;
    uint32_t slot;
    int rc = check_pfn(dom, pfn);
    if (rc)
        return rc;
    slot = st->slot_of_pfn[pfn];
    if (slot) {  /* staged twice in one checkpoint: the later copy wins */
        *buf = st->slots[slot - 1];
        return COLO_OK;
    }
    if (st->n == st->cap && (rc = stage_grow(dom)) != COLO_OK)
        return rc;
    st->pfns[st->n] = pfn;
    st->slot_of_pfn[pfn] = (uint32_t)(st->n + 1);
    *buf = st->slots[st->n++];
    return COLO_OK;
}

int colo_stage_context(colo_domain *dom, const uint8_t *buf, uint64_t len)
{
    struct colo_staging *st = &dom->staging;
    int rc;
    if (len > COLO_MAX_CONTEXT_BYTES)
        return colo_fail(COLO_E_INVAL, "context of %llu bytes", (unsigned long long)len);
    if (dom->ops->context_check && (rc = dom->ops->context_check(dom, buf, len)) != COLO_OK)
        return rc;
    if (st->context == NULL && (st->context = malloc(COLO_MAX_CONTEXT_BYTES)) == NULL)
        return colo_fail(COLO_E_NOMEM, "staging context");
    memcpy(st->context, buf, len);
    st->context_len = len;
    st->has_context = 1;
    return COLO_OK;
}

/* Copy staged pages in through the backend's mappings, a batch at a time. */
static int commit_by_copy(colo_domain *dom)
{
    struct colo_staging *st = &dom->staging;
    uint8_t *ptrs[COLO_MAX_PFNS_PER_RECORD];
    struct colo_mapping m = {.ptrs = ptrs};
    for (uint64_t first = 0; first < st->n; first += COLO_MAX_PFNS_PER_RECORD) {
        uint64_t n = st->n - first < COLO_MAX_PFNS_PER_RECORD ? st->n - first : COLO_MAX_PFNS_PER_RECORD;
        int rc = dom->ops->map(dom, st->pfns + first, n, 1, &m);
        if (rc)
            return rc;
        for (uint64_t i = 0; i < n; i++)
            memcpy(ptrs[i], st->slots[first + i], COLO_PAGE_SIZE);
        dom->ops->unmap(dom, &m);
    }
    return COLO_OK;
}

int colo_stage_commit(colo_domain *dom, uint64_t *pages_applied)
{
    struct colo_staging *st = &dom->staging;
    int rc;
    if (!dom->paused) {
        colo_stage_discard(dom);
        return colo_fail(COLO_E_NOT_PAUSED, "checkpoint apply needs the domain paused");
    }
    /* Context first: it is the part a backend may still refuse, and a
     * refusal must leave the guest as it was. */
    rc = st->has_context ? dom->ops->context_set(dom, st->context, st->context_len) : COLO_OK;
    if (rc == COLO_OK)
        rc = dom->ops->commit_pages ? dom->ops->commit_pages(dom) : commit_by_copy(dom);
    *pages_applied = st->n;
    colo_stage_discard(dom);
    return rc;
}
