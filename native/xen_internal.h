/*
 * xen_internal.h - what the Xen backend's files share.  One file a concern,
 * as Xen splits libxenguest's xg_sr_* (xen.c's header has the choices):
 *   xen.c        open and close, the backend ops table, pause, vCPU context
 *   xen_store.c  xenstore: a domain's name to its domid
 *   xen_p2m.c    PV: the guest's p2m, read once at open
 *   xen_map.c    foreign mapping of guest pages, PV by mfn, PVH/HVM by gfn
 *   xen_dirty.c  log-dirty and the dirty bitmap
 * Included only where COLO_HAVE_XEN is defined (build_native.py compiles
 * the xen_*.c files only then), so it may include the libxc headers; none
 * of it reaches the cffi cdef.
 */
#ifndef COLO_XEN_INTERNAL_H
#define COLO_XEN_INTERNAL_H

#include <xenctrl.h>
#include <xenforeignmemory.h>

#include "internal.h"

#define XEN_PREFIX "backend xen: "
#define XEN_PAGE 4096u

struct xen_dom {
    xc_interface *xch;
    xenforeignmemory_handle *fmem;
    uint32_t domid;
    uint32_t max_vcpu_id;
    int translated;              /* PVH/HVM: foreign maps take gfns */
    int paused;                  /* our view: paused by anyone when opened */
    int logdirty;                /* this handle enabled log-dirty */
    xen_pfn_t *p2m;              /* PV: pfn -> mfn, INVALID_MFN for holes */
    xc_hypercall_buffer_t dirty_hbuf;
    int dirty_hbuf_pages;
    uint8_t *zero_page;          /* what a hole reads as */
};

/* ---- xen.c -------------------------------------------------------------- */

/* The code for a failed hypercall: permission problems are their own. */
int xen_errno_code(int e);
/* Records a failed call on domid (errno value e) and returns its code. */
int xen_fail_call(int e, const char *call, uint32_t domid);

/* ---- xen_store.c -------------------------------------------------------- */

/* The domain whose xenstore name is name, into *out. */
int xen_store_find_domain(struct xen_dom *x, const char *name, xc_domaininfo_t *out);

/* ---- xen_p2m.c ---------------------------------------------------------- */

/* Reads a PV guest's p2m into x->p2m (INVALID_MFN for holes) from its
 * shared_info frame; *pages is its size. */
int xen_pv_read_p2m(struct xen_dom *x, xen_pfn_t si_mfn, uint64_t *pages);

/* ---- xen_map.c: the ops map, unmap and commit_pages ------------------- */

/* Maps n frames read-only, failing on any per-frame error (the p2m's reader). */
int xen_map_frames_ro(struct xen_dom *x, xen_pfn_t *frames, size_t n, const char *what, void **out);
int xen_map(colo_domain *dom, const uint64_t *pfns, uint64_t n, int writable, struct colo_mapping *m);
void xen_unmap(colo_domain *dom, struct colo_mapping *m);
int xen_commit_pages(colo_domain *dom);

/* ---- xen_dirty.c: the log-dirty ops ------------------------------------- */

int xen_logdirty_enable(colo_domain *dom);
int xen_logdirty_disable(colo_domain *dom);
int xen_dirty_read_clear(colo_domain *dom, colo_bitmap *out);

#endif
