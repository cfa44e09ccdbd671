/* xen.c - the Xen backend: the backend vtable of internal.h over libxenctrl
 * and libxenforeignmemory (Debian 12's libxen-dev, Xen 4.17).
 *
 * Built when xenctrl.h is present (build_native.py defines COLO_HAVE_XEN);
 * elsewhere only the "not built" stubs at the end of the file.
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
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"

#ifdef COLO_HAVE_XEN

#include <xenctrl.h>
#include <xenforeignmemory.h>
#include <xen/io/xs_wire.h>

#define XEN_PREFIX "backend xen: "
#define XEN_PAGE 4096u
#define XEN_PV_MAX_PFN (1ull << 27)        /* 512 GiB: what one frame list list page maps */
#define XEN_XS_TIMEOUT_MS 5000
#define XEN_PV_BAD_FRAME (3ull << 62)      /* Linux p2m: foreign / identity bits */

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

/* One map() call's foreign mapping: unmap needs its base and length. */
struct xen_map {
    void *base;
    uint64_t mapped;
};

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
static int xen_errno_code(int e)
{
    return (e == EPERM || e == EACCES) ? COLO_E_PERMISSION : COLO_E_BACKEND;
}

static int xen_fail_call(int e, const char *call, uint32_t domid)
{
    if (e == EPERM || e == EACCES)
        return colo_fail_errno(COLO_E_PERMISSION, e,
                               XEN_PREFIX "not privileged: %s on domain %u refused "
                               "(needs root in dom0)", call, domid);
    return colo_fail_errno(COLO_E_BACKEND, e, XEN_PREFIX "%s on domain %u", call, domid);
}

/* ---- xenstore, just enough to read a key -------------------------------- */

static int xs_connect_socket(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd;
    if (strlen(path) >= sizeof(sa.sun_path))
        return -1;
    strcpy(sa.sun_path, path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
        return fd;
    close(fd);
    return -1;
}

/* As libxenstore does: xenstored's socket, else the kernel's xenbus device. */
static int xs_connect(void)
{
    const char *env = getenv("XENSTORED_PATH");
    int fd = xs_connect_socket(env ? env : "/run/xenstored/socket");
    if (fd < 0)
        fd = xs_connect_socket("/var/run/xenstored/socket");
    if (fd < 0)
        fd = open("/dev/xen/xenbus", O_RDWR | O_CLOEXEC);
    return fd;
}

static int xs_io(int fd, void *buf, size_t len, int writing)
{
    uint8_t *p = buf;
    while (len > 0) {
        struct pollfd pfd = {.fd = fd, .events = writing ? POLLOUT : POLLIN};
        ssize_t n;
        int r = poll(&pfd, 1, XEN_XS_TIMEOUT_MS);
        if (r == 0)
            errno = ETIMEDOUT;
        if (r <= 0)
            return -1;
        n = writing ? write(fd, p, len) : read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n == 0)
            errno = ECONNRESET;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads key into out (NUL-terminated).  1 found, 0 absent, -1 error (errno). */
static int xs_read_key(int fd, uint32_t req_id, const char *key, char *out, size_t cap)
{
    struct xsd_sockmsg h = {.type = XS_READ, .req_id = req_id, .tx_id = 0};
    char reply[XENSTORE_PAYLOAD_MAX + 1];
    h.len = (uint32_t)strlen(key) + 1;
    if (xs_io(fd, &h, sizeof(h), 1) || xs_io(fd, (void *)key, h.len, 1) || xs_io(fd, &h, sizeof(h), 0))
        return -1;
    if (h.len > XENSTORE_PAYLOAD_MAX) {
        errno = EPROTO;
        return -1;
    }
    if (xs_io(fd, reply, h.len, 0))
        return -1;
    reply[h.len] = '\0';
    if (h.type == XS_ERROR)
        return 0;
    if (h.type != XS_READ) {
        errno = EPROTO;
        return -1;
    }
    if (h.len >= cap) {   /* longer than any name we look for */
        out[0] = '\0';
        return 1;
    }
    memcpy(out, reply, (size_t)h.len + 1);
    return 1;
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

/* Scans the domains and asks xenstore for each one's name. */
static int find_by_name(struct xen_dom *x, const char *name, xc_domaininfo_t *out)
{
    xc_domaininfo_t infos[64];
    char got[256], key[64];
    uint32_t next = 0, req = 1;
    int fd = xs_connect(), n;
    if (fd < 0)
        return colo_fail_errno(xen_errno_code(errno), errno,
                               XEN_PREFIX "cannot resolve domain name '%s': xenstore unreachable "
                               "(pass the domid instead)", name);
    while ((n = xc_domain_getinfolist(x->xch, next, 64, infos)) > 0) {
        for (int i = 0; i < n; i++) {
            int r;
            snprintf(key, sizeof(key), "/local/domain/%u/name", infos[i].domain);
            r = xs_read_key(fd, req++, key, got, sizeof(got));
            if (r < 0) {
                int e = errno;
                close(fd);
                return colo_fail_errno(COLO_E_BACKEND, e, XEN_PREFIX "xenstore read of %s", key);
            }
            if (r == 1 && strcmp(got, name) == 0) {
                close(fd);
                *out = infos[i];
                return COLO_OK;
            }
        }
        next = infos[n - 1].domain + 1;
    }
    close(fd);
    if (n < 0)
        return xen_fail_call(errno, "XEN_DOMCTL_getdomaininfo", next);
    return colo_fail(COLO_E_NOT_FOUND, XEN_PREFIX "no domain named '%s'", name);
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
    } else if ((rc = find_by_name(x, name, info)) != COLO_OK) {
        return rc;
    }
    if (info->domain == 0)
        return colo_fail(COLO_E_INVAL, XEN_PREFIX "refusing to operate on dom0 ('%s')", name);
    if (info->flags & (XEN_DOMINF_dying | XEN_DOMINF_shutdown))
        return colo_fail(COLO_E_NOT_FOUND, XEN_PREFIX "domain %u ('%s') is %s", info->domain,
                         name, (info->flags & XEN_DOMINF_dying) ? "dying" : "shut down");
    return COLO_OK;
}

/* ---- foreign mapping helpers -------------------------------------------- */

/* Maps n frames read-only, failing on any per-frame error. */
static int map_frames_ro(struct xen_dom *x, xen_pfn_t *frames, size_t n, const char *what, void **out)
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

/* ---- PV: the guest's p2m ------------------------------------------------ */

static int pv_read_shared_info(struct xen_dom *x, xen_pfn_t si_mfn, uint64_t *max_pfn, xen_pfn_t *fll)
{
    shared_info_t *si;
    int rc = map_frames_ro(x, &si_mfn, 1, "mapping shared_info", (void **)&si);
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
        int rc = map_frames_ro(x, fl + first, n, "mapping the PV p2m", &p);
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

static int pv_read_p2m(struct xen_dom *x, xen_pfn_t si_mfn, uint64_t *pages)
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
    rc = map_frames_ro(x, &fll, 1, "mapping the p2m frame list list", (void **)&l3);
    if (rc == COLO_OK)
        rc = map_frames_ro(x, l3, nfl, "mapping the p2m frame lists", (void **)&fl);
    if (rc == COLO_OK)
        rc = pv_copy_p2m(x, fl, np2m, max_pfn);
    if (fl)
        xenforeignmemory_unmap(x->fmem, fl, nfl);
    if (l3)
        xenforeignmemory_unmap(x->fmem, l3, 1);
    *pages = max_pfn;
    return rc;
}

/* ---- the vtable --------------------------------------------------------- */

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

static int shadow_op(struct xen_dom *x, unsigned int op)
{
    return xc_shadow_control(x->xch, x->domid, op, NULL, 0) < 0 ? errno : 0;
}

static int xen_logdirty_enable(colo_domain *dom)
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

static int xen_logdirty_disable(colo_domain *dom)
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

static int xen_dirty_read_clear(colo_domain *dom, colo_bitmap *out)
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

static void xen_unmap(colo_domain *dom, struct colo_mapping *m)
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

static int xen_map(colo_domain *dom, const uint64_t *pfns, uint64_t n, int writable,
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

static int xen_commit_pages(colo_domain *dom)
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
        return pv_read_p2m(x, info->shared_info_frame, pages);
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
