/* xen_dirty.c - the Xen backend's log-dirty: enabling it, and reading and
 * clearing the dirty bitmap through hypercall memory (xen.c's choices: an
 * empty log is never taken for "clean"). */
#include <errno.h>
#include <string.h>

#include "xen_internal.h"

static int shadow_op(struct xen_dom *x, unsigned int op)
{
    return xc_shadow_control(x->xch, x->domid, op, NULL, 0) < 0 ? errno : 0;
}

int xen_logdirty_enable(colo_domain *dom)
{
    struct xen_dom *x = dom->priv;
    int e;
    if (x->logdirty)
        return COLO_OK;
    e = shadow_op(x, XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY);
    if (e == EINVAL) {
        /* Already on (a previous owner that died): restart it so the log
         * starts from now, as libxc's save does. */
        e = shadow_op(x, XEN_DOMCTL_SHADOW_OP_OFF);
        if (e == 0)
            e = shadow_op(x, XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY);
    }
    if (e == EOPNOTSUPP)
        return colo_fail(COLO_E_UNSUPPORTED, XEN_PREFIX "this hypervisor cannot track dirty pages "
                         "of domain %u (ENABLE_LOGDIRTY: operation not supported; a Xen build "
                         "without shadow paging?): refusing to replicate with an empty dirty log",
                         x->domid);
    if (e)
        return xen_fail_call(e, "enabling log-dirty (xc_shadow_control)", x->domid);
    x->logdirty = 1;
    return COLO_OK;
}

int xen_logdirty_disable(colo_domain *dom)
{
    struct xen_dom *x = dom->priv;
    int e;
    if (!x->logdirty)
        return COLO_OK;
    if ((e = shadow_op(x, XEN_DOMCTL_SHADOW_OP_OFF)) != 0)
        return xen_fail_call(e, "disabling log-dirty (xc_shadow_control)", x->domid);
    x->logdirty = 0;
    return COLO_OK;
}

static int dirty_buffer(struct xen_dom *x, uint64_t pages)
{
    int need = (int)((((pages + 63) / 64) * 8 + XEN_PAGE - 1) / XEN_PAGE);
    if (x->dirty_hbuf_pages >= need)
        return COLO_OK;
    if (x->dirty_hbuf_pages)
        xc__hypercall_buffer_free_pages(x->xch, &x->dirty_hbuf, x->dirty_hbuf_pages);
    x->dirty_hbuf_pages = 0;
    if (xc__hypercall_buffer_alloc_pages(x->xch, &x->dirty_hbuf, need) == NULL)
        return colo_fail(COLO_E_NOMEM, XEN_PREFIX "hypercall buffer of %d pages for the dirty bitmap", need);
    x->dirty_hbuf_pages = need;
    return COLO_OK;
}

/* Xen answers CLEAN with an empty bitmap when log-dirty is off, so before
 * each read make sure nobody turned it off behind this handle (another
 * tool, or a second handle's close): ENABLE must say "already on". */
static int logdirty_still_on(struct xen_dom *x)
{
    int e = shadow_op(x, XEN_DOMCTL_SHADOW_OP_ENABLE_LOGDIRTY);
    if (e == EINVAL)
        return COLO_OK;
    if (e == 0)
        return colo_fail(COLO_E_BACKEND, XEN_PREFIX "log-dirty of domain %u was turned off behind "
                         "this handle (now on again): writes in between are lost, start over with "
                         "a full copy", x->domid);
    return xen_fail_call(e, "checking log-dirty (xc_shadow_control)", x->domid);
}

int xen_dirty_read_clear(colo_domain *dom, colo_bitmap *out)
{
    struct xen_dom *x = dom->priv;
    xc_shadow_op_stats_t stats;
    uint64_t words = (dom->pages + 63) / 64;
    long long got;
    int rc;
    if (!x->logdirty)
        return colo_fail(COLO_E_INVAL, XEN_PREFIX "log-dirty is not enabled on domain %u by this "
                         "handle: enable it first (an unenabled log reads as empty)", x->domid);
    if ((rc = logdirty_still_on(x)) != COLO_OK)
        return rc;
    if ((rc = dirty_buffer(x, dom->pages)) != COLO_OK)
        return rc;
    {
        DECLARE_HYPERCALL_BUFFER_SHADOW(unsigned long, bm, &x->dirty_hbuf);
        memset(bm, 0, words * sizeof(uint64_t));
        got = xc_logdirty_control(x->xch, x->domid, XEN_DOMCTL_SHADOW_OP_CLEAN, HYPERCALL_BUFFER(bm),
                                  dom->pages, 0, &stats);
        if (got < 0)
            return xen_fail_call(errno, "reading the dirty log (xc_logdirty_control CLEAN)", x->domid);
        memcpy(out->words, bm, words * sizeof(uint64_t));
    }
    if (dom->pages % 64)
        out->words[words - 1] &= (1ull << (dom->pages % 64)) - 1;
    return COLO_OK;
}
