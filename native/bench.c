/* bench.c - the raw TCP baseline that `colo bench stream` measures the
 * stream against: the same bytes in the same write sizes, from a plain
 * buffer, with no records, no parsing and no guest memory. */
#include "internal.h"

int colo_raw_send(int fd, const uint8_t *buf, uint64_t buf_len, uint64_t total, uint64_t chunk)
{
    if (chunk == 0 || chunk > buf_len)
        return colo_fail(COLO_E_INVAL, "chunk %llu must be 1..%llu", (unsigned long long)chunk,
                         (unsigned long long)buf_len);
    for (uint64_t sent = 0; sent < total;) {
        uint64_t k = total - sent < chunk ? total - sent : chunk;
        int rc = colo_io_write_all(fd, buf, (size_t)k, -1);
        if (rc)
            return rc;
        sent += k;
    }
    return COLO_OK;
}

int colo_raw_recv(int fd, uint8_t *buf, uint64_t buf_len, uint64_t total)
{
    if (buf_len == 0)
        return colo_fail(COLO_E_INVAL, "empty receive buffer");
    for (uint64_t got = 0; got < total;) {
        uint64_t k = total - got < buf_len ? total - got : buf_len;
        int rc = colo_io_read_all(fd, buf, (size_t)k, -1, 0);
        if (rc)
            return rc;
        got += k;
    }
    return COLO_OK;
}
