/* xen.c - the Xen backend: the backend vtable of internal.h over libxenctrl
 * and libxenforeignmemory (Debian 12's libxen-dev, Xen 4.17).  This file
 * opens and closes a domain and holds the ops table, pause and the vCPU
 * context; the other concerns have a file each (xen_internal.h lists them).
 *
 * Built when xenctrl.h is present (build_native.py defines COLO_HAVE_XEN
 * and compiles the other xen_*.c); elsewhere only the "not built" stubs at
 * the end of this file.
 *
 * Choices, each one checked in the lab (tests/xen, `make xen-test`):
 * - Domain names are resolved through xenstore (/local/domain/<id>/name),
 *   spoken directly over xenstored's socket or /dev/xen/xenbus: the wire
 *   protocol is four u32 and a string, so no libxenstore is linked.
 * - PVH/HVM guests are mapped by gfn.  PV guests are mapped by mfn through
 *   the guest's p2m, read once at open (shared_info ->
 *   pfn_to_mfn_frame_list_list -> frame lists -> p2m pages); a PV guest
 *   that changes its p2m later (ballooning) needs a new open, and a PV
 *   guest that has not booted has no p2m to open.
 * - The page count is max gpfn + 1 (PVH/HVM: about 4 GiB of gfn space for
 *   any PVH guest, the special pages sit below 0xff000) or the p2m size
 *   (PV).  Gfns without RAM (holes: XTAB by XEN_DOMCTL_getpageframeinfo3,
 *   or INVALID in a PV p2m) read as zeros without a mapping attempt;
 *   write_page to one is an error, and a checkpoint commit skips a hole
 *   only when its staged page is all zeros.  Xen's own pages in a PVH
 *   guest's gfn space (shared_info, grant frames) are XTAB too: like
 *   libxc's save, the backend leaves them out (they read as zeros).
 * - A byte copy of PV memory into another PV domain is not a replica (PV
 *   page tables hold mfns, which libxc's save rewrites): the lab copies
 *   pages between PVH domains; PV is read, hashed and dirty-tracked.
 * - The dirty bitmap lives in hypercall memory (the libxc buffer macros are
 *   GNU statement expressions: they stay in here, out of the cffi cdef) and
 *   is copied word by word into the caller's colo_bitmap.
 * - Xen answers CLEAN with an empty bitmap whenever log-dirty is off, so an
 *   empty log is never taken for "clean": a hypervisor without shadow
 *   paging (ENABLE_LOGDIRTY: EOPNOTSUPP) is refused with
 *   COLO_E_UNSUPPORTED; read_clear refuses unless this handle enabled
 *   log-dirty, and checks before each CLEAN that it is still on (ENABLE
 *   answers EINVAL when it is), failing if someone turned it off.
 * - vCPU context: the HVM save record (xc_domain_hvm_get/setcontext) for
 *   PVH/HVM; for PV, get returns every vCPU's vcpu_guest_context (so the
 *   domain hash works) and set is refused (the context holds machine frame
 *   numbers of the source).
 * - pause/unpause are idempotent on this handle; a domain found paused at
 *   open (xl create -p) counts as paused, and unpause lets it run.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#ifdef COLO_HAVE_XEN

#include "xen_internal.h"

/* ---- libxc's log messages: kept for our error text, not printed -------- */

static __thread char xtl_last[200];

static void quiet_vmessage(struct xentoollog_logger *lg, xentoollog_level level, int errnoval,
                           const char *context, const char *format, va_list al)
{
    COLO_UNUSED(lg);
    COLO_UNUSED(errnoval);
    COLO_UNUSED(context);
    if (level >= XTL_ERROR)
        vsnprintf(xtl_last, sizeof(xtl_last), format, al);
}

static void quiet_progress(struct xentoollog_logger *lg, const char *context, const char *doing,
                           int percent, unsigned long done, unsigned long total)
{
    COLO_UNUSED(lg);
    COLO_UNUSED(context);
    COLO_UNUSED(doing);
    COLO_UNUSED(percent);
    COLO_UNUSED(done);
    COLO_UNUSED(total);
}

static void quiet_destroy(struct xentoollog_logger *lg) { COLO_UNUSED(lg); }

static xentoollog_logger quiet_logger = {
    .vmessage = quiet_vmessage, .progress = quiet_progress, .destroy = quiet_destroy,
};

/* The code for a failed hypercall: permission problems are their own. */
int xen_errno_code(int e)
{
    return (e == EPERM || e == EACCES) ? COLO_E_PERMISSION : COLO_E_BACKEND;
}

int xen_fail_call(int e, const char *call, uint32_t domid)
{
    if (e == EPERM || e == EACCES)
        return colo_fail_errno(COLO_E_PERMISSION, e,
                               XEN_PREFIX "not privileged: %s on domain %u refused "
                               "(needs root in dom0)", call, domid);
    return colo_fail_errno(COLO_E_BACKEND, e, XEN_PREFIX "%s on domain %u", call, domid);
}

/* ---- finding the domain ------------------------------------------------- */

static int xen_getinfo(struct xen_dom *x, uint32_t domid, xc_domaininfo_t *info, int *found)
{
    int n = xc_domain_getinfolist(x->xch, domid, 1, info);
    if (n < 0)
        return xen_fail_call(errno, "XEN_DOMCTL_getdomaininfo", domid);
    *found = n == 1 && info->domain == domid;
    return COLO_OK;
}

static int parse_domid(const char *s, uint32_t *domid)
{
    char *end;
    unsigned long v;
    if (*s < '0' || *s > '9')
        return 0;
    errno = 0;
    v = strtoul(s, &end, 10);
    if (*end || errno || v >= DOMID_FIRST_RESERVED)
        return 0;
    *domid = (uint32_t)v;
    return 1;
}

static int find_domain(struct xen_dom *x, const char *name, xc_domaininfo_t *info)
{
    uint32_t domid;
    int found = 0, rc;
    if (parse_domid(name, &domid)) {
        if ((rc = xen_getinfo(x, domid, info, &found)) != COLO_OK)
            return rc;
        if (!found)
            return colo_fail(COLO_E_NOT_FOUND, XEN_PREFIX "no domain with id %u", domid);
    } else if ((rc = xen_store_find_domain(x, name, info)) != COLO_OK) {
        return rc;
    }
    if (info->domain == 0)
        return colo_fail(COLO_E_INVAL, XEN_PREFIX "refusing to operate on dom0 ('%s')", name);
    if (info->flags & (XEN_DOMINF_dying | XEN_DOMINF_shutdown))
        return colo_fail(COLO_E_NOT_FOUND, XEN_PREFIX "domain %u ('%s') is %s", info->domain,
                         name, (info->flags & XEN_DOMINF_dying) ? "dying" : "shut down");
    return COLO_OK;
}

/* ---- close, pause ------------------------------------------------------- */

static void xen_free(struct xen_dom *x)
{
    if (x == NULL)
        return;
    if (x->xch && x->logdirty)
        xc_shadow_control(x->xch, x->domid, XEN_DOMCTL_SHADOW_OP_OFF, NULL, 0);
    if (x->xch && x->dirty_hbuf_pages)
        xc__hypercall_buffer_free_pages(x->xch, &x->dirty_hbuf, x->dirty_hbuf_pages);
    if (x->fmem)
        xenforeignmemory_close(x->fmem);
    if (x->xch)
        xc_interface_close(x->xch);
    if (x->zero_page)
        munmap(x->zero_page, XEN_PAGE);
    free(x->p2m);
    free(x);
}

/* Leaves the domain's run state as it is; turns off log-dirty if we enabled it. */
static void xen_close(colo_domain *dom)
{
    xen_free(dom->priv);
    dom->priv = NULL;
}

static int xen_pause(colo_domain *dom)
{
    struct xen_dom *x = dom->priv;
    if (x->paused)
        return COLO_OK;
    if (xc_domain_pause(x->xch, x->domid) < 0)
        return xen_fail_call(errno, "xc_domain_pause", x->domid);
    x->paused = 1;
    return COLO_OK;
}

static int xen_unpause(colo_domain *dom)
{
    struct xen_dom *x = dom->priv;
    if (!x->paused)
        return COLO_OK;
    if (xc_domain_unpause(x->xch, x->domid) < 0)
        return xen_fail_call(errno, "xc_domain_unpause", x->domid);
    x->paused = 0;
    return COLO_OK;
}

/* ---- vCPU context ------------------------------------------------------ */

/* PV: every vCPU's vcpu_guest_context, one after another. */
static int pv_context_get(struct xen_dom *x, uint8_t *buf, uint64_t cap, uint64_t *len)
{
    uint64_t need = ((uint64_t)x->max_vcpu_id + 1) * sizeof(vcpu_guest_context_any_t);
    *len = need;
    if (need > cap)
        return colo_fail(COLO_E_INVAL, XEN_PREFIX "context of domain %u is %llu bytes, the buffer "
                         "holds %llu", x->domid, (unsigned long long)need, (unsigned long long)cap);
    for (uint32_t v = 0; v <= x->max_vcpu_id; v++) {
        vcpu_guest_context_any_t ctx;
        memset(&ctx, 0, sizeof(ctx));
        if (xc_vcpu_getcontext(x->xch, x->domid, v, &ctx) < 0 && errno != ENODATA)
            return xen_fail_call(errno, "xc_vcpu_getcontext", x->domid);
        memcpy(buf + (uint64_t)v * sizeof(ctx), &ctx, sizeof(ctx));
    }
    return COLO_OK;
}

static int xen_context_get(colo_domain *dom, uint8_t *buf, uint64_t cap, uint64_t *len)
{
    struct xen_dom *x = dom->priv;
    int size;
    if (!x->translated)
        return pv_context_get(x, buf, cap, len);
    size = xc_domain_hvm_getcontext(x->xch, x->domid, NULL, 0);
    if (size < 0)
        return xen_fail_call(errno, "sizing the HVM context", x->domid);
    *len = (uint64_t)size;
    if ((uint64_t)size > cap)
        return colo_fail(COLO_E_INVAL, XEN_PREFIX "context of domain %u is %d bytes, the buffer "
                         "holds %llu", x->domid, size, (unsigned long long)cap);
    size = xc_domain_hvm_getcontext(x->xch, x->domid, buf, (uint32_t)size);
    if (size < 0)
        return xen_fail_call(errno, "xc_domain_hvm_getcontext", x->domid);
    *len = (uint64_t)size;
    return COLO_OK;
}

static int xen_context_set(colo_domain *dom, const uint8_t *buf, uint64_t len)
{
    struct xen_dom *x = dom->priv;
    if (!x->translated)
        return colo_fail(COLO_E_UNSUPPORTED, XEN_PREFIX "setting the vCPU context of PV domain %u "
                         "is not supported (it holds machine frame numbers): use PVH", x->domid);
    if (!x->paused)
        return colo_fail(COLO_E_NOT_PAUSED, XEN_PREFIX "context set: pause domain %u first", x->domid);
    if (xc_domain_hvm_setcontext(x->xch, x->domid, (uint8_t *)buf, (uint32_t)len) < 0)
        return xen_fail_call(errno, "xc_domain_hvm_setcontext", x->domid);
    return COLO_OK;
}

/* ---- the vtable --------------------------------------------------------- */

/* Gone once Xen no longer lists the domid, or lists it dying or shut down
 * (xl destroy, a guest crash without on_crash=preserve). */
static int xen_present(colo_domain *dom, int *present)
{
    struct xen_dom *x = dom->priv;
    xc_domaininfo_t info;
    int found = 0, rc = xen_getinfo(x, x->domid, &info, &found);
    if (rc != COLO_OK)
        return rc;
    *present = found && !(info.flags & (XEN_DOMINF_dying | XEN_DOMINF_shutdown));
    return COLO_OK;
}

static const struct colo_backend_ops xen_ops = {
    .name = "xen",
    .type = COLO_DOMTYPE_X86_PV,   /* replaced per domain at open */
    .close = xen_close,
    .pause = xen_pause,
    .unpause = xen_unpause,
    .logdirty_enable = xen_logdirty_enable,
    .logdirty_disable = xen_logdirty_disable,
    .dirty_read_clear = xen_dirty_read_clear,
    .context_get = xen_context_get,
    .context_set = xen_context_set,
    .map = xen_map,
    .unmap = xen_unmap,
    .commit_pages = xen_commit_pages,
    .present = xen_present,
    .no_guest_net = "a Xen guest's network is not plugged in yet (no serve, served_seq or resumed_fd hooks)",
};

/* ---- open --------------------------------------------------------------- */

static int xen_check_hypervisor(void)
{
    if (access("/dev/xen/privcmd", F_OK) == 0 || access("/proc/xen/privcmd", F_OK) == 0)
        return COLO_OK;
    return colo_fail(COLO_E_NO_HYPERVISOR, XEN_PREFIX "no Xen hypervisor on this host "
                     "(/dev/xen/privcmd absent)");
}

static int xen_handles_open(struct xen_dom *x)
{
    xtl_last[0] = '\0';
    x->xch = xc_interface_open(&quiet_logger, &quiet_logger, 0);
    if (x->xch == NULL) {
        int e = errno;
        if (e == EACCES || e == EPERM)
            return colo_fail_errno(COLO_E_PERMISSION, e, XEN_PREFIX "not privileged: opening "
                                   "/dev/xen/privcmd (needs root in dom0)");
        return colo_fail(COLO_E_BACKEND, XEN_PREFIX "xc_interface_open failed: %s (%s)",
                         strerror(e), xtl_last[0] ? xtl_last : "no detail");
    }
    x->fmem = xenforeignmemory_open(&quiet_logger, 0);
    if (x->fmem == NULL)
        return colo_fail_errno(xen_errno_code(errno), errno, XEN_PREFIX "xenforeignmemory_open");
    x->zero_page = mmap(NULL, XEN_PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (x->zero_page == MAP_FAILED) {
        x->zero_page = NULL;
        return colo_fail(COLO_E_NOMEM, XEN_PREFIX "zero page");
    }
    return COLO_OK;
}

/* Domain type and page count, and for PV the p2m. */
static int xen_layout(struct xen_dom *x, const xc_domaininfo_t *info, uint32_t *type, uint64_t *pages)
{
    xen_pfn_t gpfn = 0;
    x->domid = info->domain;
    x->max_vcpu_id = info->max_vcpu_id == XEN_INVALID_MAX_VCPU_ID ? 0 : info->max_vcpu_id;
    x->translated = (info->flags & XEN_DOMINF_hvm_guest) != 0;
    x->paused = (info->flags & XEN_DOMINF_paused) != 0;
    if (!x->translated) {
        *type = COLO_DOMTYPE_X86_PV;
        return xen_pv_read_p2m(x, info->shared_info_frame, pages);
    }
    /* PVH is HVM without emulated platform devices (libxl: LAPIC only). */
    *type = (info->arch_config.emulation_flags & XEN_X86_EMU_PIT) ? COLO_DOMTYPE_X86_HVM
                                                                  : COLO_DOMTYPE_X86_PVH;
    if (xc_domain_maximum_gpfn(x->xch, x->domid, &gpfn) < 0)
        return xen_fail_call(errno, "xc_domain_maximum_gpfn", x->domid);
    *pages = (uint64_t)gpfn + 1;
    return COLO_OK;
}

static int xen_make_domain(struct xen_dom *x, uint32_t type, uint64_t pages, colo_domain **out)
{
    colo_domain *dom = calloc(1, sizeof(*dom));
    int rc;
    if (dom == NULL) {
        xen_free(x);
        return colo_fail(COLO_E_NOMEM, XEN_PREFIX "domain");
    }
    rc = colo_domain_init(dom, &xen_ops, pages, x);
    if (rc) {
        dom->ops = &xen_ops;
        dom->priv = x;
        colo_domain_close(dom);   /* xen_close frees x */
        return rc;
    }
    dom->type = type;
    dom->paused = x->paused;
    *out = dom;
    return COLO_OK;
}

int colo_xen_open(const char *name, colo_domain **out)
{
    struct xen_dom *x;
    xc_domaininfo_t info;
    uint64_t pages = 0;
    uint32_t type = 0;
    int rc;
    if (out == NULL)
        return colo_fail(COLO_E_INVAL, XEN_PREFIX "colo_xen_open: NULL out");
    *out = NULL;
    if (name == NULL || *name == '\0')
        return colo_fail(COLO_E_INVAL, XEN_PREFIX "colo_xen_open: no domain name");
    if ((rc = xen_check_hypervisor()) != COLO_OK)
        return rc;
    if ((x = calloc(1, sizeof(*x))) == NULL)
        return colo_fail(COLO_E_NOMEM, XEN_PREFIX "backend state");
    x->dirty_hbuf = (xc_hypercall_buffer_t){.hbuf = NULL, .param_shadow = NULL, HYPERCALL_BUFFER_INIT_NO_BOUNCE};
    rc = xen_handles_open(x);
    if (rc == COLO_OK)
        rc = find_domain(x, name, &info);
    if (rc == COLO_OK)
        rc = xen_layout(x, &info, &type, &pages);
    if (rc) {
        xen_free(x);
        return rc;
    }
    return xen_make_domain(x, type, pages, out);
}

int colo_xen_built(void) { return 1; }

#else /* !COLO_HAVE_XEN */

int colo_xen_built(void) { return 0; }

int colo_xen_open(const char *name, colo_domain **out)
{
    COLO_UNUSED(name);
    if (out)
        *out = NULL;
    return colo_fail(COLO_E_NOT_BUILT, "backend xen: not built: xenctrl.h not found");
}

#endif
