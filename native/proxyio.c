/* proxyio.c - byte queues on non-blocking sockets and the frames of the
 * proxy link, shared by the primary's proxy (proxy.c) and the secondary's
 * mirror (mirror.c).  A frame is u64 seq, u32 length (big-endian), then
 * length bytes: a request line one way, the guest's reply the other. */
#include <endian.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "internal.h"

/* Room for n more bytes at the end, compacting before growing. */
static int reserve(struct colo_bytes *b, size_t n)
{
    size_t want;
    uint8_t *grown;
    if (b->off && b->off == b->len)
        b->off = b->len = 0;
    if (b->cap - b->len >= n)
        return COLO_OK;
    if (b->off) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
        if (b->cap - b->len >= n)
            return COLO_OK;
    }
    want = b->cap ? b->cap : 4096;
    while (want - b->len < n)
        want *= 2;
    if ((grown = realloc(b->data, want)) == NULL)
        return colo_fail(COLO_E_NOMEM, "proxy buffer of %zu bytes", want);
    b->data = grown;
    b->cap = want;
    return COLO_OK;
}

int colo_bytes_append(struct colo_bytes *b, const void *p, size_t n)
{
    int rc = reserve(b, n);
    if (rc == COLO_OK) {
        memcpy(b->data + b->len, p, n);
        b->len += n;
    }
    return rc;
}

int colo_bytes_frame(struct colo_bytes *b, uint64_t seq, const uint8_t *p, uint32_t n)
{
    uint8_t head[COLO_PX_FRAME_HEAD];
    uint64_t be_seq = htobe64(seq);
    uint32_t be_len = htobe32(n);
    int rc;
    memcpy(head, &be_seq, 8);
    memcpy(head + 8, &be_len, 4);
    if ((rc = reserve(b, sizeof(head) + n)) != COLO_OK)
        return rc;
    memcpy(b->data + b->len, head, sizeof(head));
    memcpy(b->data + b->len + sizeof(head), p, n);
    b->len += sizeof(head) + n;
    return COLO_OK;
}

void colo_bytes_free(struct colo_bytes *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

int colo_bytes_send(struct colo_bytes *b, int fd)
{
    while (b->off < b->len) {
        ssize_t n = send(fd, b->data + b->off, b->len - b->off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n >= 0) {
            b->off += (size_t)n;
            continue;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return COLO_OK;
        return colo_fail_errno(COLO_E_IO, errno, "write to fd %d", fd);
    }
    b->off = b->len = 0;
    return COLO_OK;
}

int colo_bytes_recv(struct colo_bytes *b, int fd, size_t max, size_t *got)
{
    int rc = reserve(b, max);
    *got = 0;
    if (rc)
        return rc;
    for (;;) {
        ssize_t n = recv(fd, b->data + b->len, max, MSG_DONTWAIT);
        if (n > 0) {
            b->len += (size_t)n;
            *got = (size_t)n;
            return COLO_OK;
        }
        if (n == 0)
            return colo_fail(COLO_E_EOF, "peer closed fd %d", fd);
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return COLO_OK;
        return colo_fail_errno(COLO_E_IO, errno, "read from fd %d", fd);
    }
}

int colo_frame_next(struct colo_bytes *b, int *have, uint64_t *seq, const uint8_t **payload, uint32_t *len)
{
    uint64_t be_seq;
    uint32_t be_len;
    size_t avail = b->len - b->off;
    *have = 0;
    if (avail < COLO_PX_FRAME_HEAD)
        return COLO_OK;
    memcpy(&be_seq, b->data + b->off, 8);
    memcpy(&be_len, b->data + b->off + 8, 4);
    *seq = be64toh(be_seq);
    *len = be32toh(be_len);
    if (*len > COLO_PX_PAYLOAD_MAX)
        return colo_fail(COLO_E_RECORD_TOO_LONG, "proxy frame of %u bytes (at most %d)", *len,
                         COLO_PX_PAYLOAD_MAX);
    if (avail - COLO_PX_FRAME_HEAD < *len)
        return COLO_OK;
    *payload = b->data + b->off + COLO_PX_FRAME_HEAD;
    b->off += COLO_PX_FRAME_HEAD + *len;
    *have = 1;
    return COLO_OK;
}

uint64_t colo_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

uint32_t colo_px_error_reply(uint8_t *out)
{
    int n = snprintf((char *)out, COLO_PX_REPLY_MAX, "ERROR %s\n", colo_last_error());
    if (n < 0)
        n = 0;
    if (n >= COLO_PX_REPLY_MAX) {  /* cut short, still one line */
        n = COLO_PX_REPLY_MAX;
        out[n - 1] = '\n';
    }
    return (uint32_t)n;
}
