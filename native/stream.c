/* stream.c - the replication stream (docs/stream.md): Xen's libxc migration
 * stream v2 framing with colo-plane's image id.  The writer sends pages
 * straight from guest memory with writev; the reader checks every record
 * before it accepts it and stages a checkpoint, applying it only when the
 * CHECKPOINT record arrives, right after the CHECKPOINT_INFO that says
 * which checkpoint it is (checked before anything applies). */
#include <endian.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static const uint8_t zeros[8];

static uint64_t pad_of(uint64_t len) { return (8 - (len & 7)) & 7; }

static void put32(uint8_t *p, uint32_t v) { v = htole32(v); memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { v = htole64(v); memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return le32toh(v); }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return le64toh(v); }

/* ==== writer ============================================================ */

int colo_write_header(int fd, colo_domain *dom, int timeout_ms)
{
    uint8_t h[IMAGE_HEADER_BYTES + DOMAIN_HEADER_BYTES] = {0};
    uint64_t marker = htobe64(IMAGE_MARKER);
    uint32_t id = htobe32(IMAGE_ID), version = htobe32(IMAGE_VERSION);
    memcpy(h, &marker, 8);
    memcpy(h + 8, &id, 4);
    memcpy(h + 12, &version, 4);
    /* options (u16) and 48 reserved bits stay zero: little-endian records */
    put32(h + 24, dom->type);
    h[28] = COLO_PAGE_SHIFT;   /* u16 page_shift, little-endian */
    put64(h + 32, dom->pages);
    return colo_io_write_all(fd, h, sizeof(h), timeout_ms);
}

/* A record whose body is one buffer. */
static int write_record(int fd, uint32_t type, const void *body, uint64_t len, int timeout_ms)
{
    uint8_t head[8];
    struct iovec iov[3];
    if (len > COLO_MAX_RECORD_BYTES)
        return colo_fail(COLO_E_RECORD_TOO_LONG, "record of %llu bytes past the 128 MiB bound",
                         (unsigned long long)len);
    put32(head, type);
    put32(head + 4, (uint32_t)len);
    iov[0] = (struct iovec){head, 8};
    iov[1] = (struct iovec){(void *)body, (size_t)len};
    iov[2] = (struct iovec){(void *)zeros, (size_t)pad_of(len)};
    return colo_io_writev_all(fd, iov, 3, timeout_ms);
}

int colo_write_raw_record(int fd, uint32_t type, const uint8_t *body, uint64_t len, int timeout_ms)
{
    return write_record(fd, type, body, len, timeout_ms);
}

/* Keeps the iovecs that fit in *budget bytes (the test hook's cut). */
static int cut_iov(struct iovec *iov, int iovcnt, uint64_t *budget)
{
    for (int i = 0; i < iovcnt; i++) {
        if (iov[i].iov_len >= *budget) {
            iov[i].iov_len = (size_t)*budget;
            *budget = 0;
            return i + 1;
        }
        *budget -= iov[i].iov_len;
    }
    return iovcnt;
}

/* One PAGE_DATA record for n pfns, pages taken from guest mappings.
 * budget: NULL, or bytes left before the test hook cuts the stream. */
static int write_page_batch(int fd, colo_domain *dom, const uint64_t *pfns, uint64_t n,
                            struct iovec *iov, uint64_t *budget, int timeout_ms)
{
    int iovcnt = (int)(n + 2);
    uint8_t head[16];
    uint64_t le_pfns[COLO_MAX_PFNS_PER_RECORD];
    uint8_t *ptrs[COLO_MAX_PFNS_PER_RECORD];
    struct colo_mapping m = {.ptrs = ptrs};
    int rc = dom->ops->map(dom, pfns, n, 0, &m);
    if (rc)
        return rc;
    put32(head, COLO_REC_PAGE_DATA);
    put32(head + 4, (uint32_t)(PAGE_DATA_HEAD + n * (8 + COLO_PAGE_SIZE)));
    put32(head + 8, (uint32_t)n);
    put32(head + 12, 0);
    for (uint64_t i = 0; i < n; i++)
        le_pfns[i] = htole64(pfns[i]);
    iov[0] = (struct iovec){head, sizeof(head)};
    iov[1] = (struct iovec){le_pfns, n * 8};
    for (uint64_t i = 0; i < n; i++)
        iov[2 + i] = (struct iovec){ptrs[i], COLO_PAGE_SIZE};
    if (budget)
        iovcnt = cut_iov(iov, iovcnt, budget);
    rc = colo_io_writev_all(fd, iov, iovcnt, timeout_ms);
    dom->ops->unmap(dom, &m);
    return rc;
}

static int write_pages(int fd, colo_domain *dom, const colo_bitmap *pages, uint64_t *budget,
                       int timeout_ms)
{
    uint64_t pfns[COLO_MAX_PFNS_PER_RECORD], n = 0;
    struct iovec *iov;
    int rc = COLO_OK;
    if (pages->nbits != dom->pages)
        return colo_fail(COLO_E_INVAL, "page set of %llu bits for a domain of %llu pages",
                         (unsigned long long)pages->nbits, (unsigned long long)dom->pages);
    if ((iov = malloc((COLO_MAX_PFNS_PER_RECORD + 2) * sizeof(*iov))) == NULL)
        return colo_fail(COLO_E_NOMEM, "iovec array");
    for (uint64_t w = 0; rc == COLO_OK && w < pages->nwords; w++) {
        uint64_t bits = pages->words[w];
        while (bits && rc == COLO_OK) {
            pfns[n++] = w * 64 + (uint64_t)__builtin_ctzll(bits);
            bits &= bits - 1;
            if (n == COLO_MAX_PFNS_PER_RECORD) {
                rc = write_page_batch(fd, dom, pfns, n, iov, budget, timeout_ms);
                n = 0;
            }
            if (budget && *budget == 0)
                goto out;
        }
    }
    if (rc == COLO_OK && n)
        rc = write_page_batch(fd, dom, pfns, n, iov, budget, timeout_ms);
out:
    free(iov);
    return rc;
}

int colo_write_pages(int fd, colo_domain *dom, const colo_bitmap *pages, int timeout_ms)
{
    return write_pages(fd, dom, pages, NULL, timeout_ms);
}

int colo_write_pages_cut(int fd, colo_domain *dom, const colo_bitmap *pages, uint64_t cut_after,
                         int timeout_ms)
{
    return write_pages(fd, dom, pages, &cut_after, timeout_ms);
}

int colo_write_context(int fd, colo_domain *dom, int timeout_ms)
{
    uint64_t len = 0;
    uint8_t *buf = malloc(COLO_MAX_CONTEXT_BYTES);
    int rc;
    if (buf == NULL)
        return colo_fail(COLO_E_NOMEM, "context buffer");
    rc = dom->ops->context_get(dom, buf, COLO_MAX_CONTEXT_BYTES, &len);
    if (rc == COLO_OK)
        rc = write_record(fd, COLO_REC_HVM_CONTEXT, buf, len, timeout_ms);
    free(buf);
    return rc;
}

int colo_write_control(int fd, uint32_t control_id, uint64_t generation, uint64_t epoch, int timeout_ms)
{
    uint8_t body[CONTROL_BODY] = {0};
    if (control_id > COLO_CTL_SECONDARY_RESUMED)
        return colo_fail(COLO_E_BAD_CONTROL_ID, "control id %u unknown (0..3)", control_id);
    put32(body, control_id);
    put64(body + 8, generation);
    put64(body + 16, epoch);
    return write_record(fd, COLO_REC_CHECKPOINT_STATE, body, sizeof(body), timeout_ms);
}

int colo_write_dirty_list(int fd, const colo_bitmap *pages, int timeout_ms)
{
    uint64_t n = 0, first = 0, cap = colo_bitmap_count(pages), per = COLO_MAX_RECORD_BYTES / 8;
    uint64_t *pfns = malloc((cap ? cap : 1) * 8);
    int rc = COLO_OK;
    if (pfns == NULL)
        return colo_fail(COLO_E_NOMEM, "dirty pfn list of %llu", (unsigned long long)cap);
    colo_bitmap_to_pfns(pages, pfns, cap, &n);
    for (uint64_t i = 0; i < n; i++)
        pfns[i] = htole64(pfns[i]);
    /* An empty set is still one (empty) record: the peer waits for it. */
    do {
        uint64_t k = n - first < per ? n - first : per;
        rc = write_record(fd, COLO_REC_CHECKPOINT_DIRTY_PFN_LIST, pfns + first, k * 8, timeout_ms);
        first += k;
    } while (rc == COLO_OK && first < n);
    free(pfns);
    return rc;
}

int colo_write_verify(int fd, uint64_t epoch, uint64_t memory_hash, uint64_t context_hash,
                      uint64_t pages, const uint64_t *page_hashes, int timeout_ms)
{
    uint8_t head[8], body[VERIFY_BODY];
    uint64_t extra = page_hashes ? pages * 8 : 0;
    struct iovec iov[3];
    if (VERIFY_BODY + extra > COLO_MAX_RECORD_BYTES)
        return colo_fail(COLO_E_RECORD_TOO_LONG, "page hashes of %llu pages do not fit a record",
                         (unsigned long long)pages);
    put32(head, COLO_REC_VERIFY);
    put32(head + 4, (uint32_t)(VERIFY_BODY + extra));
    put64(body, epoch);
    put64(body + 8, memory_hash);
    put64(body + 16, context_hash);
    put64(body + 24, pages);
    iov[0] = (struct iovec){head, 8};
    iov[1] = (struct iovec){body, VERIFY_BODY};
    iov[2] = (struct iovec){(void *)page_hashes, (size_t)extra};  /* hosts are little-endian x86 */
    return colo_io_writev_all(fd, iov, 3, timeout_ms);
}

_Static_assert(CHECKPOINT_INFO_BODY % 8 == 0 && CHECKPOINT_BODY == 0, "the end of a checkpoint has no padding");

/* CHECKPOINT_INFO and the empty CHECKPOINT, one buffer: nothing between them. */
int colo_write_checkpoint(int fd, uint64_t generation, uint64_t epoch, uint64_t last_seq, int timeout_ms)
{
    uint8_t b[8 + CHECKPOINT_INFO_BODY + 8];
    put32(b, COLO_REC_CHECKPOINT_INFO);
    put32(b + 4, CHECKPOINT_INFO_BODY);
    put64(b + 8, generation);
    put64(b + 16, epoch);
    put64(b + 24, last_seq);
    put32(b + 8 + CHECKPOINT_INFO_BODY, COLO_REC_CHECKPOINT);
    put32(b + 12 + CHECKPOINT_INFO_BODY, CHECKPOINT_BODY);
    return colo_io_write_all(fd, b, sizeof(b), timeout_ms);
}

int colo_write_end(int fd, int timeout_ms)
{
    return write_record(fd, COLO_REC_END, NULL, 0, timeout_ms);
}

/* ==== reader ============================================================ */

struct colo_reader {
    int fd;
    int direction;
    colo_domain *dom;
    colo_bitmap *dirty_out;
    uint64_t min_generation;
    uint64_t generation;     /* the stream's: min_generation at creation (0: none) */
    uint64_t last_seq;       /* of the last CHECKPOINT applied: a later one may not go below */
    int staged;              /* this reader has staged part of a checkpoint into dom */
    int expect;              /* the next checkpoint must be of expect_generation and expect_epoch */
    uint64_t expect_generation;
    uint64_t expect_epoch;
    struct {                 /* the CHECKPOINT_INFO just read, checked: its CHECKPOINT comes next */
        int read;
        uint64_t generation;
        uint64_t epoch;
        uint64_t last_seq;
    } info;
    int timeout_ms;
    int idle_timeout_ms;
    int have_header;
    int broken;              /* an error ended the stream: refuse further reads */
    uint64_t bytes;          /* stream bytes read in all */
    uint64_t event_start;    /* bytes at the start of the current event */
    uint64_t *verify_hashes; /* where VERIFY's page hashes go, or NULL */
    uint8_t *buf;            /* small bodies and pfn arrays */
    uint64_t buf_cap;
    struct iovec *iov;
};

int colo_reader_new(int fd, int direction, colo_domain *dom, colo_bitmap *dirty_out,
                    uint64_t min_generation, int timeout_ms, int idle_timeout_ms, colo_reader **out)
{
    colo_reader *r;
    if (direction != COLO_DIR_FORWARD && direction != COLO_DIR_BACK)
        return colo_fail(COLO_E_INVAL, "direction %d (0 forward, 1 back)", direction);
    if (dom == NULL || (direction == COLO_DIR_BACK) != (dirty_out != NULL))
        return colo_fail(COLO_E_INVAL, "a reader needs its domain, and a dirty set exactly when it reads the back channel");
    if (dirty_out && dirty_out->nbits != dom->pages)
        return colo_fail(COLO_E_INVAL, "dirty set of %llu bits for a domain of %llu pages",
                         (unsigned long long)dirty_out->nbits, (unsigned long long)dom->pages);
    if ((r = calloc(1, sizeof(*r))) == NULL)
        return colo_fail(COLO_E_NOMEM, "reader");
    r->buf_cap = COLO_MAX_PFNS_PER_RECORD * 8;
    r->buf = malloc(r->buf_cap);
    r->iov = malloc(COLO_MAX_PFNS_PER_RECORD * sizeof(*r->iov));
    if (r->buf == NULL || r->iov == NULL) {
        colo_reader_free(r);
        return colo_fail(COLO_E_NOMEM, "reader buffers");
    }
    r->fd = fd;
    r->direction = direction;
    r->dom = dom;
    r->dirty_out = dirty_out;
    r->min_generation = r->generation = min_generation;
    r->timeout_ms = timeout_ms;
    r->idle_timeout_ms = idle_timeout_ms;
    /* A new stream on the domain: what an older one staged can never
     * complete (and the older reader refuses to go on with it). */
    colo_stage_discard(dom);
    *out = r;
    return COLO_OK;
}

/* What this reader staged is dropped; another reader's stage is its own. */
static void drop_stage(colo_reader *r)
{
    if (r->dom->staging.owner == r)
        colo_stage_discard(r->dom);
    r->staged = 0;
}

void colo_reader_free(colo_reader *r)
{
    if (r == NULL)
        return;
    if (r->dom)  /* NULL only when colo_reader_new failed early */
        drop_stage(r);
    free(r->buf);
    free(r->iov);
    free(r);
}

void colo_reader_set_timeouts(colo_reader *r, int timeout_ms, int idle_timeout_ms)
{
    r->timeout_ms = timeout_ms;
    r->idle_timeout_ms = idle_timeout_ms;
}

void colo_reader_set_min_generation(colo_reader *r, uint64_t min_generation)
{
    r->min_generation = min_generation;
}

uint64_t colo_reader_bytes(const colo_reader *r) { return r->bytes; }

void colo_reader_set_verify_buffer(colo_reader *r, uint64_t *page_hashes) { r->verify_hashes = page_hashes; }

void colo_hashes_diff(const uint64_t *a, const uint64_t *b, uint64_t n, uint64_t *pfns, uint64_t cap,
                      uint64_t *count)
{
    uint64_t k = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (a[i] == b[i])
            continue;
        if (k < cap)
            pfns[k] = i;
        k++;
    }
    *count = k;
}

static int rd(colo_reader *r, void *buf, uint64_t len, int at_boundary)
{
    int rc = colo_io_read_all(r->fd, buf, (size_t)len, r->timeout_ms, at_boundary);
    if (rc == COLO_OK)
        r->bytes += len;
    return rc;
}

static int grow_buf(colo_reader *r, uint64_t len)
{
    uint8_t *b;
    if (len <= r->buf_cap)
        return COLO_OK;
    if ((b = realloc(r->buf, len)) == NULL)
        return colo_fail(COLO_E_NOMEM, "record body of %llu bytes", (unsigned long long)len);
    r->buf = b;
    r->buf_cap = len;
    return COLO_OK;
}

/* Reads len body bytes into r->buf. */
static int rd_body(colo_reader *r, uint64_t len)
{
    int rc = grow_buf(r, len ? len : 1);
    return rc ? rc : rd(r, r->buf, len, 0);
}

static int rd_padding(colo_reader *r, uint32_t type, uint64_t len)
{
    uint8_t pad[8];
    uint64_t n = pad_of(len);
    int rc = rd(r, pad, n, 0);
    if (rc)
        return rc;
    for (uint64_t i = 0; i < n; i++)
        if (pad[i])
            return colo_fail(COLO_E_BAD_PADDING, "record 0x%x: padding byte %llu is 0x%02x, not zero",
                             type, (unsigned long long)i, pad[i]);
    return COLO_OK;
}

int colo_reader_header(colo_reader *r)
{
    uint8_t h[IMAGE_HEADER_BYTES + DOMAIN_HEADER_BYTES];
    uint64_t marker, pages;
    uint32_t id, version, type;
    uint16_t options, shift;
    int rc;
    if (r->have_header || r->broken)
        return colo_fail(COLO_E_PROTOCOL, "stream header already read");
    r->broken = 1;  /* until the header checks out */
    if ((rc = rd(r, h, sizeof(h), 1)) != COLO_OK)
        return rc == COLO_E_EOF ? colo_fail(COLO_E_TRUNCATED, "peer closed before the stream header") : rc;
    memcpy(&marker, h, 8);
    memcpy(&id, h + 8, 4);
    memcpy(&version, h + 12, 4);
    memcpy(&options, h + 16, 2);
    marker = be64toh(marker), id = be32toh(id), version = be32toh(version), options = be16toh(options);
    if (marker != IMAGE_MARKER)
        return colo_fail(COLO_E_BAD_MAGIC, "image header marker 0x%016llx, expected all ones",
                         (unsigned long long)marker);
    if (id != IMAGE_ID)
        return colo_fail(COLO_E_BAD_ID, "image id 0x%08x, expected 0x%08x (\"COLO\")", id, IMAGE_ID);
    if (version != IMAGE_VERSION)
        return colo_fail(COLO_E_BAD_VERSION, "stream version %u, this build reads %u", version, IMAGE_VERSION);
    if (options != 0 || memcmp(h + 18, zeros, 6) != 0)
        return colo_fail(COLO_E_BAD_OPTIONS, "options 0x%04x%s: only little-endian records, no reserved bits",
                         options, memcmp(h + 18, zeros, 6) ? " and reserved bits set" : "");
    type = get32(h + 24);
    shift = (uint16_t)(h[28] | h[29] << 8);
    pages = get64(h + 32);
    if (type != r->dom->type || shift != COLO_PAGE_SHIFT || h[30] || h[31])
        return colo_fail(COLO_E_BAD_DOMAIN_HEADER, "domain type 0x%x page shift %u (expected 0x%x, %d)",
                         type, shift, r->dom->type, COLO_PAGE_SHIFT);
    if (pages != r->dom->pages)
        return colo_fail(COLO_E_BAD_DOMAIN_HEADER, "peer domain has %llu pages, this one %llu",
                         (unsigned long long)pages, (unsigned long long)r->dom->pages);
    r->have_header = 1;
    r->broken = 0;
    return COLO_OK;
}

/* Which records may flow which way, and how long each may be. */
static int check_record(const colo_reader *r, uint32_t type, uint64_t len)
{
    int fwd = r->direction == COLO_DIR_FORWARD;
    uint64_t bound = COLO_MAX_RECORD_BYTES, exact = UINT64_MAX;
    switch (type) {
    case COLO_REC_PAGE_DATA: if (!fwd) goto wrong; bound = PAGE_DATA_MAX; break;
    case COLO_REC_HVM_CONTEXT: if (!fwd) goto wrong; bound = COLO_MAX_CONTEXT_BYTES; break;
    case COLO_REC_CHECKPOINT: if (!fwd) goto wrong; exact = CHECKPOINT_BODY; break;
    case COLO_REC_CHECKPOINT_INFO: if (!fwd) goto wrong; exact = CHECKPOINT_INFO_BODY; break;
    case COLO_REC_CHECKPOINT_DIRTY_PFN_LIST: if (fwd) goto wrong; break;
    case COLO_REC_CHECKPOINT_STATE: exact = CONTROL_BODY; break;
    case COLO_REC_VERIFY: bound = VERIFY_BODY + r->dom->pages * 8; break;
    case COLO_REC_END: exact = 0; break;
    default:
        if (!(type & REC_OPTIONAL))
            return colo_fail(COLO_E_UNKNOWN_RECORD, "record type 0x%08x is unknown and not optional", type);
    }
    if (len > bound && exact == UINT64_MAX)
        return colo_fail(COLO_E_RECORD_TOO_LONG, "record 0x%x of %llu bytes, bound %llu",
                         type, (unsigned long long)len, (unsigned long long)bound);
    if (len > COLO_MAX_RECORD_BYTES)
        return colo_fail(COLO_E_RECORD_TOO_LONG, "record 0x%x of %llu bytes, past the 128 MiB bound",
                         type, (unsigned long long)len);
    if (exact != UINT64_MAX && len != exact)
        return colo_fail(COLO_E_BAD_LENGTH, "record 0x%x of %llu bytes, must be %llu",
                         type, (unsigned long long)len, (unsigned long long)exact);
    if (type == COLO_REC_CHECKPOINT_DIRTY_PFN_LIST && len % 8)
        return colo_fail(COLO_E_BAD_LENGTH, "dirty pfn list of %llu bytes is not whole pfns",
                         (unsigned long long)len);
    if (type == COLO_REC_VERIFY && len != VERIFY_BODY && len != bound)
        return colo_fail(COLO_E_BAD_LENGTH, "VERIFY of %llu bytes: 32, or 32 + 8 per page (%llu)",
                         (unsigned long long)len, (unsigned long long)bound);
    return COLO_OK;
wrong:
    return colo_fail(COLO_E_WRONG_DIRECTION, "record 0x%x not allowed on the %s stream", type,
                     fwd ? "forward (primary to secondary)" : "back channel (secondary to primary)");
}

static int check_pfns(const colo_reader *r, const uint64_t *pfns, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (pfns[i] >= r->dom->pages)
            return colo_fail(COLO_E_PFN_RANGE, "pfn 0x%llx (entry %llu) past the domain's %llu pages",
                             (unsigned long long)pfns[i], (unsigned long long)i,
                             (unsigned long long)r->dom->pages);
    return COLO_OK;
}

/* The domain's stage holds what this reader staged of the current
 * checkpoint and nothing else: empty before its first record, and not
 * dropped since (a reader opened on the domain drops it). */
static int own_stage(const colo_reader *r)
{
    if (r->dom->staging.owner == (r->staged ? (const void *)r : NULL))
        return COLO_OK;
    return colo_fail(COLO_E_PROTOCOL, r->staged ? "the checkpoint this stream was staging was dropped "
                                                  "(a reader was opened on the domain)"
                                                : "the domain's stage holds another stream's checkpoint");
}

/* Before a record is staged: the stage is this reader's from now on. */
static int claim_stage(colo_reader *r)
{
    int rc = own_stage(r);
    if (rc == COLO_OK) {
        r->dom->staging.owner = r;
        r->staged = 1;
    }
    return rc;
}

static int on_page_data(colo_reader *r, uint64_t len)
{
    uint8_t head[PAGE_DATA_HEAD];
    uint64_t *pfns = (uint64_t *)r->buf, count;
    int rc = rd(r, head, sizeof(head), 0);
    if (rc)
        return rc;
    count = get32(head);
    if (get32(head + 4))
        return colo_fail(COLO_E_BAD_PADDING, "PAGE_DATA reserved field is 0x%x", get32(head + 4));
    if (count == 0 || count > COLO_MAX_PFNS_PER_RECORD || len != PAGE_DATA_HEAD + count * (8 + COLO_PAGE_SIZE))
        return colo_fail(COLO_E_BAD_LENGTH, "PAGE_DATA of %llu pfns in %llu bytes (1..%d pfns, 4104 bytes each)",
                         (unsigned long long)count, (unsigned long long)len, COLO_MAX_PFNS_PER_RECORD);
    if ((rc = rd(r, pfns, count * 8, 0)) != COLO_OK)
        return rc;
    for (uint64_t i = 0; i < count; i++)
        pfns[i] = le64toh(pfns[i]);
    if ((rc = check_pfns(r, pfns, count)) != COLO_OK || (rc = claim_stage(r)) != COLO_OK)
        return rc;
    for (uint64_t i = 0; i < count; i++) {
        uint8_t *slot;
        if ((rc = colo_stage_page(r->dom, pfns[i], &slot)) != COLO_OK)
            return rc;
        r->iov[i] = (struct iovec){slot, COLO_PAGE_SIZE};
    }
    rc = colo_io_readv_all(r->fd, r->iov, (int)count, r->timeout_ms);
    if (rc == COLO_OK)
        r->bytes += count * COLO_PAGE_SIZE;
    return rc;
}

static int on_context(colo_reader *r, uint64_t len)
{
    int rc = rd_body(r, len);
    if (rc == COLO_OK)
        rc = rd_padding(r, COLO_REC_HVM_CONTEXT, len);
    if (rc == COLO_OK)
        rc = claim_stage(r);
    if (rc == COLO_OK && (rc = colo_stage_context(r->dom, r->buf, len)) == COLO_E_INVAL)
        return colo_fail(COLO_E_BAD_LENGTH, "HVM_CONTEXT of %llu bytes refused by the %s backend",
                         (unsigned long long)len, r->dom->ops->name);
    return rc;
}

static int check_generation(const colo_reader *r, uint64_t generation)
{
    if (generation < r->min_generation)
        return colo_fail(COLO_E_STALE_GENERATION, "record of generation %llu, this side is at %llu: refused",
                         (unsigned long long)generation, (unsigned long long)r->min_generation);
    if (r->generation && generation != r->generation)
        return colo_fail(COLO_E_WRONG_GENERATION, "record of generation %llu on the stream of generation %llu",
                         (unsigned long long)generation, (unsigned long long)r->generation);
    return COLO_OK;
}

static int on_control(colo_reader *r, struct colo_event *ev)
{
    uint32_t id;
    int rc = rd_body(r, CONTROL_BODY), fwd = r->direction == COLO_DIR_FORWARD;
    if (rc)
        return rc;
    id = get32(r->buf);
    if (get32(r->buf + 4))
        return colo_fail(COLO_E_BAD_PADDING, "CHECKPOINT_STATE reserved field is 0x%x", get32(r->buf + 4));
    if (id > COLO_CTL_SECONDARY_RESUMED)
        return colo_fail(COLO_E_BAD_CONTROL_ID, "control id %u unknown (0..3)", id);
    if (fwd != (id == COLO_CTL_CHECKPOINT_REQUEST))
        return colo_fail(COLO_E_WRONG_DIRECTION, "control id %u is sent by the %s, not on this stream",
                         id, id == COLO_CTL_CHECKPOINT_REQUEST ? "primary" : "secondary");
    ev->kind = COLO_EV_CONTROL;
    ev->control_id = id;
    ev->generation = get64(r->buf + 8);
    ev->epoch = get64(r->buf + 16);
    return check_generation(r, ev->generation);
}

static int on_dirty_list(colo_reader *r, uint64_t len, struct colo_event *ev)
{
    uint64_t *pfns, n = len / 8;
    int rc = rd_body(r, len);
    if (rc)
        return rc;
    pfns = (uint64_t *)r->buf;  /* after rd_body: it may have moved */
    for (uint64_t i = 0; i < n; i++)
        pfns[i] = le64toh(pfns[i]);
    if ((rc = check_pfns(r, pfns, n)) != COLO_OK)
        return rc;
    colo_bitmap_set_pfns(r->dirty_out, pfns, n);
    ev->kind = COLO_EV_DIRTY;
    ev->pages = n;
    return COLO_OK;
}

/* Reads past an optional record's body; its padding is checked as any. */
static int skip_record(colo_reader *r, uint32_t type, uint64_t len)
{
    int rc = COLO_OK;
    for (uint64_t left = len; rc == COLO_OK && left;) {
        uint64_t k = left < r->buf_cap ? left : r->buf_cap;
        rc = rd(r, r->buf, k, 0);
        left -= k;
    }
    return rc ? rc : rd_padding(r, type, len);
}

static int on_verify(colo_reader *r, uint64_t len, struct colo_event *ev)
{
    int rc = rd_body(r, VERIFY_BODY);
    if (rc)
        return rc;
    ev->kind = COLO_EV_VERIFY;
    ev->epoch = get64(r->buf);
    ev->memory_hash = get64(r->buf + 8);
    ev->context_hash = get64(r->buf + 16);
    ev->pages = get64(r->buf + 24);
    if (len == VERIFY_BODY)
        return COLO_OK;
    if (ev->pages != r->dom->pages)
        return colo_fail(COLO_E_BAD_LENGTH, "VERIFY carries hashes of %llu pages, the domain has %llu",
                         (unsigned long long)ev->pages, (unsigned long long)r->dom->pages);
    if (r->verify_hashes == NULL)
        return skip_record(r, COLO_REC_VERIFY, len - VERIFY_BODY);
    if ((rc = rd(r, r->verify_hashes, len - VERIFY_BODY, 0)) != COLO_OK)
        return rc;
    ev->page_hashes = 1;
    return COLO_OK;
}

/* CHECKPOINT_INFO comes once a checkpoint, right before its CHECKPOINT:
 * nothing between them, and no CHECKPOINT without it.  Checked from the
 * record header, before its body is read. */
static int check_order(const colo_reader *r, uint32_t type)
{
    if (r->info.read && type == COLO_REC_CHECKPOINT_INFO)
        return colo_fail(COLO_E_PROTOCOL, "CHECKPOINT_INFO twice: one a checkpoint, right before its CHECKPOINT");
    if (r->info.read && type != COLO_REC_CHECKPOINT)
        return colo_fail(COLO_E_PROTOCOL, "record 0x%x after CHECKPOINT_INFO: its CHECKPOINT must come right after it",
                         type);
    if (!r->info.read && type == COLO_REC_CHECKPOINT)
        return colo_fail(COLO_E_PROTOCOL, "CHECKPOINT without the CHECKPOINT_INFO that must come right before it");
    return COLO_OK;
}

/* Everything a checkpoint claims (its CHECKPOINT_INFO), before anything of it applies. */
static int check_claims(const colo_reader *r)
{
    int rc = check_generation(r, r->info.generation);
    if (rc)
        return rc;
    if (r->expect && r->info.generation != r->expect_generation)
        return colo_fail(COLO_E_WRONG_GENERATION, "CHECKPOINT_INFO of generation %llu, the checkpoint is of %llu",
                         (unsigned long long)r->info.generation, (unsigned long long)r->expect_generation);
    if (r->expect && r->info.epoch != r->expect_epoch)
        return colo_fail(COLO_E_PROTOCOL, "CHECKPOINT_INFO of epoch %llu, epoch %llu was requested",
                         (unsigned long long)r->info.epoch, (unsigned long long)r->expect_epoch);
    if (r->info.last_seq < r->last_seq)
        return colo_fail(COLO_E_PROTOCOL, "CHECKPOINT_INFO with last_seq %llu, below the last applied %llu",
                         (unsigned long long)r->info.last_seq, (unsigned long long)r->last_seq);
    return COLO_OK;
}

static int on_checkpoint_info(colo_reader *r)
{
    int rc = rd_body(r, CHECKPOINT_INFO_BODY);
    if (rc)
        return rc;
    r->info.generation = get64(r->buf);
    r->info.epoch = get64(r->buf + 8);
    r->info.last_seq = get64(r->buf + 16);
    if ((rc = check_claims(r)) != COLO_OK)
        return rc;
    r->info.read = 1;
    return COLO_OK;
}

/* The CHECKPOINT (empty) right after its checked CHECKPOINT_INFO: apply. */
static int on_checkpoint(colo_reader *r, struct colo_event *ev)
{
    int rc = own_stage(r);
    r->info.read = 0;  /* one CHECKPOINT_INFO, one CHECKPOINT */
    r->expect = 0;     /* an expectation is for one checkpoint */
    if (rc)
        return rc;
    ev->kind = COLO_EV_CHECKPOINT;
    ev->generation = r->info.generation;
    ev->epoch = r->info.epoch;
    ev->last_seq = r->info.last_seq;
    rc = colo_stage_commit(r->dom, &ev->pages);  /* empties the stage, applied or not */
    r->staged = 0;
    if (rc == COLO_OK)
        r->last_seq = ev->last_seq;
    return rc;
}

/* A record the caller must see, other than the CHECKPOINT that ends a
 * staged checkpoint, tears it: it is not applied (END, a sync point,
 * VERIFY between the pages of one checkpoint). */
static int check_not_torn(const colo_reader *r, const struct colo_event *ev)
{
    if (!r->staged || ev->kind == 0 || ev->kind == COLO_EV_CHECKPOINT)
        return COLO_OK;
    return colo_fail(COLO_E_PROTOCOL, "event kind %u (control %u, epoch %llu) inside a checkpoint: torn, not applied",
                     ev->kind, ev->control_id, (unsigned long long)ev->epoch);
}

/* One record; ev->kind stays 0 for the ones the caller need not see. */
static int read_record(colo_reader *r, struct colo_event *ev)
{
    uint8_t head[8];
    uint32_t type;
    uint64_t len;
    int rc = rd(r, head, sizeof(head), 1);
    if (rc)
        return rc;
    type = get32(head);
    len = get32(head + 4);
    if ((rc = check_record(r, type, len)) != COLO_OK || (rc = check_order(r, type)) != COLO_OK)
        return rc;
    switch (type) {
    case COLO_REC_PAGE_DATA: return on_page_data(r, len);
    case COLO_REC_HVM_CONTEXT: return on_context(r, len);
    case COLO_REC_CHECKPOINT_STATE: rc = on_control(r, ev); break;
    case COLO_REC_CHECKPOINT_DIRTY_PFN_LIST: return on_dirty_list(r, len, ev);
    case COLO_REC_VERIFY: rc = on_verify(r, len, ev); break;
    case COLO_REC_CHECKPOINT_INFO: return on_checkpoint_info(r);
    case COLO_REC_CHECKPOINT: return on_checkpoint(r, ev);
    case COLO_REC_END: ev->kind = COLO_EV_END; break;
    default: return skip_record(r, type, len);
    }
    return rc ? rc : check_not_torn(r, ev);
}

/* Waits for the next record to start; a timeout here breaks nothing. */
static int wait_next(colo_reader *r)
{
    struct pollfd p = {.fd = r->fd, .events = POLLIN};
    int rc;
    if (r->idle_timeout_ms < 0)
        return COLO_OK;
    do {
        rc = poll(&p, 1, r->idle_timeout_ms);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0)
        return colo_fail_errno(COLO_E_IO, errno, "poll on fd %d", r->fd);
    if (rc == 0)
        return colo_fail(COLO_E_TIMEOUT, "no record for %d ms", r->idle_timeout_ms);
    return COLO_OK;
}

int colo_reader_next(colo_reader *r, struct colo_event *ev)
{
    int rc;
    memset(ev, 0, sizeof(*ev));
    if (!r->have_header || r->broken)
        return colo_fail(COLO_E_PROTOCOL, r->broken ? "stream already failed; reconnect"
                                                     : "read the stream header first");
    r->event_start = r->bytes;
    do {
        if ((rc = wait_next(r)) == COLO_E_TIMEOUT)
            return rc;
        if (rc == COLO_OK)
            rc = read_record(r, ev);
    } while (rc == COLO_OK && ev->kind == 0);
    ev->bytes = r->bytes - r->event_start;
    if (rc)  /* a torn or bad checkpoint is dropped whole; guest memory untouched */
        colo_reader_abort(r);
    return rc;
}

void colo_reader_abort(colo_reader *r)
{
    drop_stage(r);
    r->expect = 0;
    r->info.read = 0;
    r->broken = 1;
}

int colo_reader_expect_checkpoint(colo_reader *fwd, const colo_domain *dom, uint64_t generation,
                                  uint64_t epoch)
{
    if (fwd->dom != dom || fwd->direction != COLO_DIR_FORWARD)
        return colo_fail(COLO_E_INVAL, "a checkpoint applies into its domain through that domain's forward reader");
    /* Its claims were checked without this expectation: its CHECKPOINT must not apply in the call. */
    if (fwd->info.read)
        return colo_fail(COLO_E_PROTOCOL, "a CHECKPOINT_INFO was read before the checkpoint call, its CHECKPOINT not yet");
    fwd->expect = 1;
    fwd->expect_generation = generation;
    fwd->expect_epoch = epoch;
    return COLO_OK;
}
