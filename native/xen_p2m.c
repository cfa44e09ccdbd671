/* xen_p2m.c - a PV guest's p2m (pfn -> mfn), read once at open through
 * shared_info -> pfn_to_mfn_frame_list_list -> frame lists -> p2m pages
 * (xen.c's choices: a PV guest that changes its p2m later needs a new open). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "xen_internal.h"

#define XEN_PV_MAX_PFN (1ull << 27)        /* 512 GiB: what one frame list list page maps */
#define XEN_PV_BAD_FRAME (3ull << 62)      /* Linux p2m: foreign / identity bits */

static int pv_read_shared_info(struct xen_dom *x, xen_pfn_t si_mfn, uint64_t *max_pfn, xen_pfn_t *fll)
{
    shared_info_t *si;
    int rc = xen_map_frames_ro(x, &si_mfn, 1, "mapping shared_info", (void **)&si);
    if (rc)
        return rc;
    *max_pfn = si->arch.max_pfn;
    *fll = si->arch.pfn_to_mfn_frame_list_list;
    xenforeignmemory_unmap(x->fmem, si, 1);
    if (*fll == 0 || *max_pfn == 0)
        return colo_fail(COLO_E_BACKEND, XEN_PREFIX "PV domain %u has not published its p2m "
                         "(pfn_to_mfn_frame_list_list=0): a PV domain must have booted", x->domid);
    if (*max_pfn > XEN_PV_MAX_PFN)
        return colo_fail(COLO_E_BACKEND, XEN_PREFIX "PV domain %u claims %llu pfns", x->domid,
                         (unsigned long long)*max_pfn);
    return COLO_OK;
}

/* Copies the p2m pages listed in fl[0..np2m) into x->p2m, a batch at a time. */
static int pv_copy_p2m(struct xen_dom *x, xen_pfn_t *fl, uint64_t np2m, uint64_t max_pfn)
{
    const uint64_t per_page = XEN_PAGE / sizeof(xen_pfn_t);
    for (uint64_t first = 0; first < np2m; first += COLO_MAX_PFNS_PER_RECORD) {
        uint64_t n = np2m - first < COLO_MAX_PFNS_PER_RECORD ? np2m - first : COLO_MAX_PFNS_PER_RECORD;
        uint64_t have = (first + n) * per_page > max_pfn ? max_pfn - first * per_page : n * per_page;
        void *p;
        int rc = xen_map_frames_ro(x, fl + first, n, "mapping the PV p2m", &p);
        if (rc)
            return rc;
        memcpy(x->p2m + first * per_page, p, have * sizeof(xen_pfn_t));
        xenforeignmemory_unmap(x->fmem, p, n);
    }
    for (uint64_t pfn = 0; pfn < max_pfn; pfn++)
        if (x->p2m[pfn] & XEN_PV_BAD_FRAME)
            x->p2m[pfn] = INVALID_MFN;
    return COLO_OK;
}

int xen_pv_read_p2m(struct xen_dom *x, xen_pfn_t si_mfn, uint64_t *pages)
{
    const uint64_t per_page = XEN_PAGE / sizeof(xen_pfn_t);
    uint64_t max_pfn, np2m, nfl;
    xen_pfn_t fll, *l3 = NULL, *fl = NULL;
    unsigned int width = 0;
    int rc;
    if (xc_domain_get_guest_width(x->xch, x->domid, &width) < 0)
        return xen_fail_call(errno, "reading the guest width", x->domid);
    if (width != sizeof(xen_pfn_t))
        return colo_fail(COLO_E_UNSUPPORTED, XEN_PREFIX "domain %u is a %u-bit PV guest: only "
                         "64-bit PV guests are supported", x->domid, width * 8);
    if ((rc = pv_read_shared_info(x, si_mfn, &max_pfn, &fll)) != COLO_OK)
        return rc;
    np2m = (max_pfn + per_page - 1) / per_page;
    nfl = (np2m + per_page - 1) / per_page;
    if ((x->p2m = malloc(max_pfn * sizeof(xen_pfn_t))) == NULL)
        return colo_fail(COLO_E_NOMEM, XEN_PREFIX "p2m of %llu pfns", (unsigned long long)max_pfn);
    rc = xen_map_frames_ro(x, &fll, 1, "mapping the p2m frame list list", (void **)&l3);
    if (rc == COLO_OK)
        rc = xen_map_frames_ro(x, l3, nfl, "mapping the p2m frame lists", (void **)&fl);
    if (rc == COLO_OK)
        rc = pv_copy_p2m(x, fl, np2m, max_pfn);
    if (fl)
        xenforeignmemory_unmap(x->fmem, fl, nfl);
    if (l3)
        xenforeignmemory_unmap(x->fmem, l3, 1);
    *pages = max_pfn;
    return rc;
}
