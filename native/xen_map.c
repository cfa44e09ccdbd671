/* xen_map.c - guest pages through foreign mappings: PV by mfn (its p2m,
 * xen_p2m.c), PVH/HVM by gfn, holes read as a zero page without a mapping
 * attempt, and a checkpoint's commit copied in a batch at a time (xen.c's
 * choices). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "xen_internal.h"

/* One map() call's foreign mapping: unmap needs its base and length. */
struct xen_map {
    void *base;
    uint64_t mapped;
};

/* Maps n frames read-only, failing on any per-frame error. */
int xen_map_frames_ro(struct xen_dom *x, xen_pfn_t *frames, size_t n, const char *what, void **out)
{
    int *err = calloc(n, sizeof(int));
    void *p;
    if (err == NULL)
        return colo_fail(COLO_E_NOMEM, XEN_PREFIX "error array for %zu frames", n);
    p = xenforeignmemory_map(x->fmem, x->domid, PROT_READ, n, frames, err);
    if (p == NULL) {
        int e = errno;
        free(err);
        return xen_fail_call(e, what, x->domid);
    }
    for (size_t i = 0; i < n; i++) {
        if (err[i]) {
            int e = -err[i];
            free(err);
            xenforeignmemory_unmap(x->fmem, p, n);
            return colo_fail_errno(COLO_E_BACKEND, e, XEN_PREFIX "%s on domain %u: frame %zu (0x%llx)",
                                   what, x->domid, i, (unsigned long long)frames[i]);
        }
    }
    free(err);
    *out = p;
    return COLO_OK;
}

/* How a batch is mapped.  MAP_WRITE_HOLES: writable, but holes come back
 * as the (read-only) zero page for the caller to check, not as an error. */
enum map_mode { MAP_READ, MAP_WRITE, MAP_WRITE_HOLES };

/* A frame that failed to map: a hole reads as zeros; anything else fails. */
static int map_bad_frame(struct xen_dom *x, uint64_t pfn, int err, int mode, uint8_t **ptr)
{
    int hole = err == -EINVAL || err == -ENOENT;
    if (hole && mode != MAP_WRITE) {
        *ptr = x->zero_page;
        return COLO_OK;
    }
    if (hole)
        return colo_fail(COLO_E_BACKEND, XEN_PREFIX "pfn 0x%llx of domain %u holds no RAM: "
                         "cannot write it", (unsigned long long)pfn, x->domid);
    return colo_fail_errno(COLO_E_BACKEND, -err, XEN_PREFIX "mapping pfn 0x%llx of domain %u",
                           (unsigned long long)pfn, x->domid);
}

/* Exported by libxenctrl 4.17 (VERS_4.17.0) but declared only in its
 * private xc_private.h: XEN_DOMCTL_getpageframeinfo3, which libxc's own
 * save uses to skip gfns without RAM.  One hypercall a batch instead of one
 * failing mapping per hole (a PVH guest's gfn space is mostly holes). */
int xc_get_pfn_type_batch(xc_interface *xch, uint32_t dom, unsigned int num, xen_pfn_t *arr);

static int is_hole_type(xen_pfn_t type)
{
    type &= XEN_DOMCTL_PFINFO_LTAB_MASK;
    return type == XEN_DOMCTL_PFINFO_XTAB || type == XEN_DOMCTL_PFINFO_XALLOC;
}

/* Sorts the batch into frames to map (idx[] = their place in the batch)
 * and holes, which need no mapping: PV by its p2m, PVH/HVM by page type. */
static int map_collect(struct xen_dom *x, const uint64_t *pfns, uint64_t n, int mode,
                       struct colo_mapping *m, xen_pfn_t *frames, uint32_t *idx, uint64_t *k)
{
    xen_pfn_t types[COLO_MAX_PFNS_PER_RECORD];
    if (x->translated) {
        for (uint64_t i = 0; i < n; i++)
            types[i] = pfns[i];
        if (xc_get_pfn_type_batch(x->xch, x->domid, (unsigned int)n, types) < 0)
            return xen_fail_call(errno, "reading page types (XEN_DOMCTL_getpageframeinfo3)", x->domid);
    }
    *k = 0;
    for (uint64_t i = 0; i < n; i++) {
        int hole = x->translated ? is_hole_type(types[i]) : x->p2m[pfns[i]] == INVALID_MFN;
        if (hole) {
            int rc = map_bad_frame(x, pfns[i], -EINVAL, mode, &m->ptrs[i]);
            if (rc)
                return rc;
            continue;
        }
        frames[*k] = x->translated ? pfns[i] : x->p2m[pfns[i]];
        idx[(*k)++] = (uint32_t)i;
    }
    return COLO_OK;
}

static int map_pages(struct xen_dom *x, const uint64_t *pfns, uint64_t n, int mode,
                     struct colo_mapping *m)
{
    xen_pfn_t frames[COLO_MAX_PFNS_PER_RECORD];
    uint32_t idx[COLO_MAX_PFNS_PER_RECORD];
    int err[COLO_MAX_PFNS_PER_RECORD];
    struct xen_map *xm;
    uint64_t k = 0;
    int rc;
    if (n > COLO_MAX_PFNS_PER_RECORD)
        return colo_fail(COLO_E_INVAL, XEN_PREFIX "map of %llu pages (max %d)", (unsigned long long)n,
                         COLO_MAX_PFNS_PER_RECORD);
    if ((rc = map_collect(x, pfns, n, mode, m, frames, idx, &k)) != COLO_OK)
        return rc;
    if ((xm = calloc(1, sizeof(*xm))) == NULL)
        return colo_fail(COLO_E_NOMEM, XEN_PREFIX "mapping record");
    m->n = n;
    m->handle = xm;
    if (k == 0)
        return COLO_OK;
    memset(err, 0, k * sizeof(int));
    xm->base = xenforeignmemory_map(x->fmem, x->domid, mode == MAP_READ ? PROT_READ : PROT_READ | PROT_WRITE,
                                    k, frames, err);
    if (xm->base == NULL) {
        int e = errno;
        free(xm);
        m->handle = NULL;
        return xen_fail_call(e, "xenforeignmemory_map", x->domid);
    }
    xm->mapped = k;
    for (uint64_t j = 0; j < k; j++) {
        uint8_t **ptr = &m->ptrs[idx[j]];
        *ptr = (uint8_t *)xm->base + j * XEN_PAGE;
        if (err[j] && (rc = map_bad_frame(x, pfns[idx[j]], err[j], mode, ptr)) != COLO_OK) {
            xenforeignmemory_unmap(x->fmem, xm->base, k);
            free(xm);
            m->handle = NULL;
            return rc;
        }
    }
    return COLO_OK;
}

void xen_unmap(colo_domain *dom, struct colo_mapping *m)
{
    struct xen_dom *x = dom->priv;
    struct xen_map *xm = m->handle;
    if (xm == NULL)
        return;
    if (xm->mapped)
        xenforeignmemory_unmap(x->fmem, xm->base, xm->mapped);
    free(xm);
    m->handle = NULL;
}

int xen_map(colo_domain *dom, const uint64_t *pfns, uint64_t n, int writable,
                   struct colo_mapping *m)
{
    return map_pages(dom->priv, pfns, n, writable ? MAP_WRITE : MAP_READ, m);
}

static int all_zero(const uint8_t *page)
{
    static const uint8_t zeros[XEN_PAGE];
    return memcmp(page, zeros, XEN_PAGE) == 0;
}

/* Copies one batch of staged pages in.  A hole on this side may receive
 * only zeros (the peer's same gfn is a hole too, e.g. a full copy of a
 * PVH guest's 4 GiB gfn space): it is skipped; data for it is an error. */
static int commit_batch(colo_domain *dom, uint64_t first, uint64_t n)
{
    struct xen_dom *x = dom->priv;
    struct colo_staging *st = &dom->staging;
    uint8_t *ptrs[COLO_MAX_PFNS_PER_RECORD];
    struct colo_mapping m = {.ptrs = ptrs};
    int rc = map_pages(x, st->pfns + first, n, MAP_WRITE_HOLES, &m);
    if (rc)
        return rc;
    for (uint64_t i = 0; i < n && rc == COLO_OK; i++) {
        if (ptrs[i] != x->zero_page)
            memcpy(ptrs[i], st->slots[first + i], XEN_PAGE);
        else if (!all_zero(st->slots[first + i]))
            rc = colo_fail(COLO_E_BACKEND, XEN_PREFIX "pfn 0x%llx of domain %u holds no RAM but the "
                           "checkpoint has data for it", (unsigned long long)st->pfns[first + i], x->domid);
    }
    xen_unmap(dom, &m);
    return rc;
}

int xen_commit_pages(colo_domain *dom)
{
    struct colo_staging *st = &dom->staging;
    for (uint64_t first = 0; first < st->n; first += COLO_MAX_PFNS_PER_RECORD) {
        uint64_t n = st->n - first < COLO_MAX_PFNS_PER_RECORD ? st->n - first : COLO_MAX_PFNS_PER_RECORD;
        int rc = commit_batch(dom, first, n);
        if (rc)
            return rc;
    }
    return COLO_OK;
}
