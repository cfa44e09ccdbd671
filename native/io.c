/* io.c - whole reads and writes on a socket, blocking or not.  Every call
 * is made with MSG_DONTWAIT and waits in poll(), so the timeout holds
 * whatever mode the socket is in. */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "internal.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

/* Wait until fd is ready for events; 0 when ready. */
static int wait_ready(int fd, short events, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    int rc;
    do {
        rc = poll(&p, 1, timeout_ms);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0)
        return colo_fail_errno(COLO_E_IO, errno, "poll on fd %d", fd);
    if (rc == 0)
        return colo_fail(COLO_E_TIMEOUT, "no progress on fd %d for %d ms", fd, timeout_ms);
    return COLO_OK;
}

/* After a short transfer of done bytes, advance iov past them. */
static void advance(struct iovec **iov, int *iovcnt, size_t done)
{
    while (*iovcnt > 0 && done >= (*iov)->iov_len) {
        done -= (*iov)->iov_len;
        (*iov)++;
        (*iovcnt)--;
    }
    if (*iovcnt > 0) {
        (*iov)->iov_base = (uint8_t *)(*iov)->iov_base + done;
        (*iov)->iov_len -= done;
    }
}

static int skip_empty(struct iovec **iov, int *iovcnt)
{
    while (*iovcnt > 0 && (*iov)->iov_len == 0) {
        (*iov)++;
        (*iovcnt)--;
    }
    return *iovcnt;
}

static ssize_t xfer(int fd, struct iovec *iov, int iovcnt, int out)
{
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)(iovcnt > IOV_MAX ? IOV_MAX : iovcnt)};
    return out ? sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) : recvmsg(fd, &msg, MSG_DONTWAIT);
}

int colo_io_writev_all(int fd, struct iovec *iov, int iovcnt, int timeout_ms)
{
    while (skip_empty(&iov, &iovcnt) > 0) {
        ssize_t n = xfer(fd, iov, iovcnt, 1);
        int rc;
        if (n >= 0) {
            advance(&iov, &iovcnt, (size_t)n);
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return colo_fail_errno(COLO_E_IO, errno, "write to fd %d", fd);
        if ((rc = wait_ready(fd, POLLOUT, timeout_ms)) != COLO_OK)
            return rc;
    }
    return COLO_OK;
}

int colo_io_write_all(int fd, const void *buf, size_t len, int timeout_ms)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    return colo_io_writev_all(fd, &iov, 1, timeout_ms);
}

/* Read until iov is full.  A close before the first byte is a clean EOF
 * only at a record boundary. */
static int readv_loop(int fd, struct iovec *iov, int iovcnt, int timeout_ms, int at_boundary)
{
    size_t total = 0;
    while (skip_empty(&iov, &iovcnt) > 0) {
        ssize_t n = xfer(fd, iov, iovcnt, 0);
        int rc;
        if (n > 0) {
            total += (size_t)n;
            advance(&iov, &iovcnt, (size_t)n);
            continue;
        }
        if (n == 0) {
            if (at_boundary && total == 0)
                return colo_fail(COLO_E_EOF, "connection closed at a record boundary");
            return colo_fail(COLO_E_TRUNCATED, "peer closed the stream %zu bytes into a read", total);
        }
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            return colo_fail_errno(COLO_E_IO, errno, "read from fd %d", fd);
        if ((rc = wait_ready(fd, POLLIN, timeout_ms)) != COLO_OK)
            return rc;
    }
    return COLO_OK;
}

int colo_io_read_all(int fd, void *buf, size_t len, int timeout_ms, int at_boundary)
{
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    return readv_loop(fd, &iov, 1, timeout_ms, at_boundary);
}

int colo_io_readv_all(int fd, struct iovec *iov, int iovcnt, int timeout_ms)
{
    return readv_loop(fd, iov, iovcnt, timeout_ms, 0);
}
