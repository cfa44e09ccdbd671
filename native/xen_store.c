/* xen_store.c - the Xen backend's xenstore client, just enough to turn a
 * domain's name into its domid (xen.c's choices: spoken directly over
 * xenstored's socket or /dev/xen/xenbus, no libxenstore linked). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "xen_internal.h"

#include <xen/io/xs_wire.h>   /* after xenctrl.h (in xen_internal.h): it needs its types */

#define XEN_XS_TIMEOUT_MS 5000

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

/* Scans the domains and asks xenstore for each one's name. */
int xen_store_find_domain(struct xen_dom *x, const char *name, xc_domaininfo_t *out)
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
