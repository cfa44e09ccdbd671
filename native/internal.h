/*
 * internal.h - what the native .c files share and Python never sees:
 * the backend vtable every hypervisor backend fills in, the staging area
 * that makes a checkpoint apply in one step, and small helpers.
 */
#ifndef COLO_INTERNAL_H
#define COLO_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <pthread.h>
#include <sys/uio.h>

#include "colo.h"
#include "stream_format.h"   /* after colo.h, as in the cdef: it uses colo.h's constants */

#define COLO_UNUSED(x) ((void)(x))

/* ---- errors (error.c) --------------------------------------------------- */

/* Records the message for colo_last_error() and returns code. */
int colo_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Same, appending ": strerror(errno_value)". */
int colo_fail_errno(int code, int errno_value, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ---- hashing (hash.c) --------------------------------------------------- */

uint64_t colo_xxh64(const void *data, size_t len, uint64_t seed);

/* ---- bitmaps (bitmap.c) ------------------------------------------------- */

struct colo_bitmap {
    uint64_t nbits;
    uint64_t nwords;
    uint64_t *words;
};

/* ---- backends ----------------------------------------------------------- */

/* A batch of mapped guest pages: ptrs[i] is page pfns[i] until unmap. */
struct colo_mapping {
    uint8_t **ptrs;
    uint64_t n;
    void *handle;        /* backend's own (xen: the foreignmemory mapping) */
};

struct colo_backend_ops {
    const char *name;
    uint32_t type;       /* enum colo_domain_type; xen sets dom->type at open */
    void (*close)(colo_domain *dom);
    int (*pause)(colo_domain *dom);
    int (*unpause)(colo_domain *dom);
    int (*logdirty_enable)(colo_domain *dom);
    int (*logdirty_disable)(colo_domain *dom);
    /* Overwrite out with the dirty log and clear it, atomically. */
    int (*dirty_read_clear)(colo_domain *dom, colo_bitmap *out);
    int (*context_get)(colo_domain *dom, uint8_t *buf, uint64_t cap, uint64_t *len);
    int (*context_set)(colo_domain *dom, const uint8_t *buf, uint64_t len);
    /* Optional: would context_set accept this blob?  Lets the reader refuse
     * a bad context when it arrives, before anything is applied. */
    int (*context_check)(colo_domain *dom, const uint8_t *buf, uint64_t len);
    /* Map n <= COLO_MAX_PFNS_PER_RECORD pages, pfns already range-checked.
     * m->ptrs has room for n pointers.  writable: the caller will store. */
    int (*map)(colo_domain *dom, const uint64_t *pfns, uint64_t n, int writable,
               struct colo_mapping *m);
    void (*unmap)(colo_domain *dom, struct colo_mapping *m);
    /* Optional: make the staged pages guest memory without copying (sim
     * swaps page pointers).  NULL: domain.c copies through map(). */
    int (*commit_pages)(colo_domain *dom);
    /* Optional: does the domain still exist?  *present = 0 once it was
     * destroyed or crashed under us.  NULL: always there. */
    int (*present)(colo_domain *dom, int *present);

    /* ---- the guest's network endpoint: optional, all three or none ----
     * What the COLO proxy (proxy.c, primary) and mirror (mirror.c,
     * secondary) speak to: the guest's end of its clients' connections,
     * as QEMU's colo-compare reaches the guest through its filters.  The
     * proxy compares and holds replies; the guest, behind these hooks,
     * makes them.  The sim backend fills them in with its key-value
     * service (service.c); a real guest's network plugs in here.  Without
     * them no proxy or mirror is attached to the domain: domain.c refuses
     * with COLO_E_UNSUPPORTED and no_guest_net's reason.  They are called
     * from the proxy's and the mirror's threads, the proxy's holding its
     * own mutex: the backend takes the locks it needs itself, and serve
     * never waits for the guest (paused: COLO_E_PAUSED at once). */

    /* One request in, its reply out (at most cap bytes).  seq numbers the
     * request (0: unnumbered, for tests); the guest keeps the highest seq
     * it processed in its own memory, so a checkpoint carries it, and
     * refuses a seq at or below it (COLO_E_DUPLICATE: the checkpoint
     * already carried its effect).  COLO_E_PAUSED while the guest is
     * paused: the caller waits on resumed_fd and retries.  Any other error
     * is the guest refusing the request, which changed nothing. */
    int (*serve)(colo_domain *dom, uint64_t seq, const uint8_t *req, uint64_t req_len,
                 uint8_t *reply, uint64_t cap, uint64_t *reply_len);
    /* The highest seq the guest has processed (0: none yet): a
     * checkpoint's last_seq, and where a new proxy's numbering goes on. */
    int (*served_seq)(colo_domain *dom, uint64_t *seq);
    /* An eventfd that becomes readable whenever the guest resumes from a
     * pause (the waiter drains it), so a request waiting for a paused
     * guest goes on at once instead of polling.  The backend's: it lives
     * as long as the domain and nobody else closes it. */
    int (*resumed_fd)(const colo_domain *dom);
    /* Without the three hooks: why, and what to do instead, for the
     * refusal's message (NULL: nothing to add). */
    const char *no_guest_net;
};

/* Pages and context received for a checkpoint, not yet guest memory. */
struct colo_staging {
    uint64_t n;              /* pages staged */
    uint64_t cap;            /* slots allocated */
    uint64_t *pfns;          /* pfns[i] is staged in slots[i] */
    uint8_t **slots;         /* page-sized buffers from the domain's pool */
    uint32_t *slot_of_pfn;   /* index + 1 per pfn, 0 = not staged */
    uint8_t *context;
    uint64_t context_len;
    int has_context;
    const void *owner;       /* the reader staging into it; NULL when nothing is staged */
};

/* Page memory the domain owns: mmap'd chunks, all unmapped at close. */
struct colo_chunk {
    struct colo_chunk *next;
    void *base;
    size_t len;
};

struct colo_domain {
    const struct colo_backend_ops *ops;
    uint32_t type;           /* enum colo_domain_type, from ops->type unless the backend sets it */
    uint64_t pages;
    int paused;
    struct colo_staging staging;
    struct colo_chunk *chunks;
    void *priv;              /* the backend's state */
};

/* domain.c: for backends. */
int colo_domain_init(colo_domain *dom, const struct colo_backend_ops *ops,
                     uint64_t pages, void *priv);
/* n pages of zeroed, page-aligned memory owned by dom (freed at close). */
int colo_domain_alloc_pages(colo_domain *dom, uint64_t n, uint8_t **out);

/* domain.c: for the proxy and the mirror.  COLO_OK when the domain has
 * the guest network hooks, else COLO_E_UNSUPPORTED naming the backend and
 * who wanted them ("by the proxy"). */
int colo_domain_need_guest_net(const colo_domain *dom, const char *who);
/* The backend's resumed_fd (same refusal without the hooks). */
int colo_domain_resumed_fd(const colo_domain *dom, int *fd);

/* domain.c: for the stream reader. */
void colo_stage_discard(colo_domain *dom);
/* Buffer to receive page pfn into (the same buffer if pfn is staged twice). */
int colo_stage_page(colo_domain *dom, uint64_t pfn, uint8_t **buf);
int colo_stage_context(colo_domain *dom, const uint8_t *buf, uint64_t len);
/* Applies everything staged in one step (domain must be paused). */
int colo_stage_commit(colo_domain *dom, uint64_t *pages_applied);

/* stream.c: for checkpoint.c. */
/* The next checkpoint fwd reads must be of generation and epoch (checked
 * on its CHECKPOINT_INFO, before it applies); COLO_E_INVAL unless fwd is
 * dom's forward reader, COLO_E_PROTOCOL when a CHECKPOINT_INFO was read
 * and its CHECKPOINT not yet (it was checked without the expectation). */
int colo_reader_expect_checkpoint(colo_reader *fwd, const colo_domain *dom, uint64_t generation,
                                  uint64_t epoch);
/* A checkpoint call failed: what the reader staged is dropped, and the
 * stream refuses further reads (the connection is to be closed). */
void colo_reader_abort(colo_reader *r);

/* ---- sim guest and its service (sim.c, service.c) --------------------- */

/* Takes the vCPU lock of a sim domain (COLO_E_UNSUPPORTED if not sim; with
 * need_running, COLO_E_PAUSED if paused); the calls below need it held. */
int colo_sim_enter(colo_domain *dom, int need_running);
void colo_sim_leave(colo_domain *dom);
uint8_t *colo_sim_page(colo_domain *dom, uint64_t pfn);
void colo_sim_touch(colo_domain *dom, uint64_t pfn);          /* mark dirty */
uint64_t colo_sim_random(colo_domain *dom);                  /* the host's stream */
uint64_t colo_sim_service_pages(const colo_domain *dom);
uint32_t colo_sim_divergence_ppm(const colo_domain *dom);

/* The sim guest's service needs a header page and a page of slots: a sim
 * domain with fewer service pages has no guest network hooks. */
#define COLO_SIM_SERVICE_MIN_PAGES 2

/* service.c: the sim backend's serve and served_seq hooks (the contract
 * is the backend ops'), reached only through sim.c's ops table.
 * Requests: "SET key value", "GET key", "DEL key", "COUNT", "PING". */
int colo_sim_service(colo_domain *dom, uint64_t seq, const uint8_t *req, uint64_t req_len,
                     uint8_t *reply, uint64_t cap, uint64_t *reply_len);
int colo_sim_service_seq(colo_domain *dom, uint64_t *seq);

/* ---- socket I/O (io.c) -------------------------------------------------- */

/* Write every byte of iov (any count, partial writes resumed). */
int colo_io_writev_all(int fd, struct iovec *iov, int iovcnt, int timeout_ms);
int colo_io_write_all(int fd, const void *buf, size_t len, int timeout_ms);
/* Read exactly len bytes.  COLO_E_EOF if the peer closed before the first
 * byte and at_boundary is set, COLO_E_TRUNCATED if it closed later. */
int colo_io_read_all(int fd, void *buf, size_t len, int timeout_ms, int at_boundary);
int colo_io_readv_all(int fd, struct iovec *iov, int iovcnt, int timeout_ms);

/* ---- the arm (arm.c) ------------------------------------------------------ */

/* What an arm's await says until a comparer first reports its state. */
#define COLO_ARM_NO_COMPARER "no output comparer reports to it"

/* ---- proxy byte queues and link frames (proxyio.c) --------------------- */

#define COLO_PX_FRAME_HEAD 12       /* u64 seq, u32 length, big-endian */
#define COLO_PX_LINE_MAX 512        /* a request line, as the guest service takes it */
#define COLO_PX_PAYLOAD_MAX (COLO_PX_LINE_MAX + 64)
#define COLO_PX_REPLY_MAX 512       /* a guest service reply */
#define COLO_PX_READ_CHUNK 65536    /* bytes read from a socket a wake-up */
#define COLO_PX_PAUSED_RETRY_NS 2000000 /* paused guest: try again (the resume eventfd wakes sooner) */

/* Bytes [off, len) of data are queued. */
struct colo_bytes {
    uint8_t *data;
    size_t off, len, cap;
};

int colo_bytes_append(struct colo_bytes *b, const void *p, size_t n);
int colo_bytes_frame(struct colo_bytes *b, uint64_t seq, const uint8_t *p, uint32_t n);
void colo_bytes_free(struct colo_bytes *b);
/* Writes what the socket takes now; COLO_OK with bytes left when it would block. */
int colo_bytes_send(struct colo_bytes *b, int fd);
/* Reads what the socket has now, at most max bytes (*got = 0: nothing yet);
 * COLO_E_EOF when the peer closed. */
int colo_bytes_recv(struct colo_bytes *b, int fd, size_t max, size_t *got);
/* Takes the next whole frame off the front (*have = 1; payload points into
 * b until its next change); COLO_E_RECORD_TOO_LONG for a length past
 * COLO_PX_PAYLOAD_MAX. */
int colo_frame_next(struct colo_bytes *b, int *have, uint64_t *seq, const uint8_t **payload, uint32_t *len);
/* "ERROR <this thread's last error>\n" into out (COLO_PX_REPLY_MAX bytes),
 * always ending in a newline: both ends of the proxy answer a refused
 * request with it, so their replies compare equal; returns its length. */
uint32_t colo_px_error_reply(uint8_t *out);
/* Nanoseconds of CLOCK_MONOTONIC. */
uint64_t colo_now_ns(void);

#endif
