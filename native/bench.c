/* bench.c - the raw TCP baseline that `colo bench stream` measures the
 * stream against: the same bytes in the same write sizes, from a plain
 * buffer, with no records, no parsing and no guest memory.  Both sides walk
 * through their whole buffer (wrapping), so a buffer as large as a
 * checkpoint costs the baseline the same memory traffic the stream has. */
#include <string.h>
#include <sys/mman.h>

#include "internal.h"

int colo_raw_send(int fd, const uint8_t *buf, uint64_t buf_len, uint64_t total, uint64_t chunk)
{
    if (chunk == 0 || chunk > buf_len)
        return colo_fail(COLO_E_INVAL, "chunk %llu must be 1..%llu", (unsigned long long)chunk,
                         (unsigned long long)buf_len);
    for (uint64_t sent = 0, off = 0; sent < total;) {
        uint64_t k = total - sent < chunk ? total - sent : chunk;
        int rc;
        if (off + k > buf_len)
            off = 0;
        if ((rc = colo_io_write_all(fd, buf + off, (size_t)k, -1)) != COLO_OK)
            return rc;
        sent += k;
        off += k;
    }
    return COLO_OK;
}

int colo_raw_recv(int fd, uint8_t *buf, uint64_t buf_len, uint64_t total, uint64_t chunk)
{
    if (chunk == 0 || chunk > buf_len)
        return colo_fail(COLO_E_INVAL, "chunk %llu must be 1..%llu", (unsigned long long)chunk,
                         (unsigned long long)buf_len);
    for (uint64_t got = 0, off = 0; got < total;) {
        uint64_t k = total - got < chunk ? total - got : chunk;
        int rc;
        if (off + k > buf_len)
            off = 0;
        if ((rc = colo_io_read_all(fd, buf + off, (size_t)k, -1, 0)) != COLO_OK)
            return rc;
        got += k;
        off += k;
    }
    return COLO_OK;
}

void colo_raw_fill(uint8_t *buf, uint64_t len, uint64_t seed)
{
    uint64_t x = seed | 1;
    uintptr_t start = ((uintptr_t)buf + 4095) & ~(uintptr_t)4095;
    /* Same 2 MiB-page advice the guest memory gets: a fair baseline. */
    if (len > 8192)
        (void)madvise((void *)start, ((uintptr_t)buf + len - start) & ~(uintptr_t)4095, MADV_HUGEPAGE);
    for (uint64_t i = 0; i + 8 <= len; i += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        memcpy(buf + i, &x, 8);
    }
}
