/*
 * colo.h - the public header of colo-plane's native data plane; the
 * stream's wire format has one of its own, stream_format.h.
 *
 * Both are the cffi cdef (native/build_native.py feeds them to cffi, this
 * one first), so they hold only what cffi's C parser accepts: no macros
 * with expressions, no includes, no attributes.  Everything is an int
 * error code (0 = COLO_OK) with a thread-local message from
 * colo_last_error() for the details.
 *
 * Layers: bitmap (dirty sets), domain (a backend: sim or xen), stream
 * (the libxc-v2-style record stream over a socket).  Python never loops
 * over pages: every per-page loop is in here.
 */

/* ---- constants ---------------------------------------------------------- */

#define COLO_PAGE_SHIFT 12
#define COLO_PAGE_SIZE 4096
#define COLO_MAX_PFNS_PER_RECORD 1024
#define COLO_MAX_CONTEXT_BYTES 1048576

/* Error codes.  Each malformed-stream class of docs/design.md §3 has its
 * own code so callers and tests can tell them apart. */
enum colo_error {
    COLO_OK = 0,
    COLO_E_NOMEM = 1,            /* allocation failed */
    COLO_E_INVAL = 2,            /* bad argument from the caller */
    COLO_E_IO = 3,               /* socket error (errno in the message) */
    COLO_E_TIMEOUT = 4,          /* socket not ready within the timeout */
    COLO_E_EOF = 5,              /* peer closed cleanly between records */
    COLO_E_TRUNCATED = 6,        /* peer closed inside a header or record */
    COLO_E_BAD_MAGIC = 7,        /* image header marker is not all ones */
    COLO_E_BAD_ID = 8,           /* image header id is not colo-plane's */
    COLO_E_BAD_VERSION = 9,      /* image header version unsupported */
    COLO_E_BAD_OPTIONS = 10,     /* big-endian or reserved option bits set */
    COLO_E_BAD_DOMAIN_HEADER = 11, /* type, page shift or page count wrong */
    COLO_E_UNKNOWN_RECORD = 12,  /* unknown mandatory record type */
    COLO_E_RECORD_TOO_LONG = 13, /* body length past the record's bound */
    COLO_E_BAD_LENGTH = 14,      /* body length disagrees with its contents */
    COLO_E_BAD_PADDING = 15,     /* nonzero padding or reserved field */
    COLO_E_PFN_RANGE = 16,       /* pfn past the domain's page count */
    COLO_E_WRONG_DIRECTION = 17, /* record not allowed in this direction */
    COLO_E_BAD_CONTROL_ID = 18,  /* CHECKPOINT_STATE with unknown id */
    COLO_E_STALE_GENERATION = 19,/* record from an older generation */
    COLO_E_PROTOCOL = 20,        /* record out of order */
    COLO_E_NOT_PAUSED = 21,      /* operation needs a paused domain */
    COLO_E_BACKEND = 22,         /* hypervisor call failed */
    COLO_E_NO_HYPERVISOR = 23,   /* no hypervisor on this host */
    COLO_E_NOT_BUILT = 24,       /* backend not compiled in */
    COLO_E_NOT_FOUND = 25,       /* no such domain */
    COLO_E_PERMISSION = 26,      /* not privileged enough */
    COLO_E_UNSUPPORTED = 27,     /* hypervisor lacks a needed feature */
    COLO_E_SERVICE = 28,         /* guest service rejected a request */
    COLO_E_PAUSED = 29,          /* the guest is paused and cannot serve */
    COLO_E_DUPLICATE = 30,       /* the guest already processed this request */
    COLO_E_DISARMED = 31,        /* an armed checkpoint ended without starting */
    COLO_E_WRONG_GENERATION = 32 /* record of a generation other than its stream's */
};

/* The stream's record types (COLO_REC_*), its control ids (COLO_CTL_*,
 * the COLO sync points) and its layouts: stream_format.h. */

/* Which way a stream flows; decides which records a reader accepts. */
enum colo_direction {
    COLO_DIR_FORWARD = 0,   /* primary -> secondary: state */
    COLO_DIR_BACK = 1       /* secondary -> primary: back channel */
};

/* ---- library ------------------------------------------------------------ */

const char *colo_version(void);          /* package version compiled in */
const char *colo_strerror(int code);     /* fixed text for a code */
const char *colo_last_error(void);       /* details of this thread's last error */
int colo_xen_built(void);                /* 1 when the xen backend is compiled in */

/* ---- bitmaps (bitmap.c) ------------------------------------------------- */

typedef struct colo_bitmap colo_bitmap;

int colo_bitmap_new(uint64_t nbits, colo_bitmap **out);
void colo_bitmap_free(colo_bitmap *bm);
uint64_t colo_bitmap_size(const colo_bitmap *bm);
void colo_bitmap_clear_all(colo_bitmap *bm);
int colo_bitmap_set(colo_bitmap *bm, uint64_t bit);
int colo_bitmap_test(const colo_bitmap *bm, uint64_t bit);   /* 1, 0, or -1 out of range */
uint64_t colo_bitmap_count(const colo_bitmap *bm);
int colo_bitmap_union(colo_bitmap *dst, const colo_bitmap *a, const colo_bitmap *b);
int colo_bitmap_copy(colo_bitmap *dst, const colo_bitmap *src);
int colo_bitmap_equal(const colo_bitmap *a, const colo_bitmap *b);
/* Sets every pfn of the list; fails without change on a pfn out of range. */
int colo_bitmap_set_pfns(colo_bitmap *bm, const uint64_t *pfns, uint64_t n);
/* Writes set bits in ascending order; *n_out is the total set (may exceed cap). */
int colo_bitmap_to_pfns(const colo_bitmap *bm, uint64_t *pfns, uint64_t cap, uint64_t *n_out);
/* First set bit >= from, or colo_bitmap_size() when there is none. */
uint64_t colo_bitmap_next(const colo_bitmap *bm, uint64_t from);
/* Sets n distinct random bits drawn from seed (benches and tests). */
int colo_bitmap_fill_random(colo_bitmap *bm, uint64_t n, uint64_t seed);

/* ---- domains (domain.c + one file a backend) ---------------------------- */

typedef struct colo_domain colo_domain;

enum colo_sim_pattern {
    COLO_PATTERN_UNIFORM = 0,   /* every page equally likely */
    COLO_PATTERN_HOTSET = 1     /* hot_percent of writes hit the first hot_pages */
};

struct colo_sim_config {
    uint64_t pages;          /* guest memory size in pages */
    uint64_t seed;           /* per-host random stream for the vCPU */
    uint64_t rate;           /* pages written per second while running */
    uint32_t pattern;        /* enum colo_sim_pattern */
    uint32_t hot_percent;    /* HOTSET: share of writes in the hot set */
    uint64_t hot_pages;      /* HOTSET: size of the hot set */
    uint64_t service_pages;  /* first pages, kept for the guest service */
    uint32_t divergence_ppm; /* guest service: replies carrying a nondeterministic field, per million */
    uint32_t reserved;
};

int colo_sim_open(const struct colo_sim_config *cfg, colo_domain **out);
/* name: a domain name or a decimal domid. */
int colo_xen_open(const char *name, colo_domain **out);
void colo_domain_close(colo_domain *dom);

/* Domain types of the stream's domain header: Xen's numbers, and one of
 * our own for the simulated domain. */
enum colo_domain_type {
    COLO_DOMTYPE_X86_PV = 1,
    COLO_DOMTYPE_X86_HVM = 2,
    COLO_DOMTYPE_X86_PVH = 3,
    COLO_DOMTYPE_SIM = 0x4353
};

const char *colo_domain_backend(const colo_domain *dom);
uint32_t colo_domain_type(const colo_domain *dom);
uint64_t colo_domain_pages(const colo_domain *dom);
int colo_domain_pause(colo_domain *dom);
int colo_domain_unpause(colo_domain *dom);
int colo_domain_is_paused(const colo_domain *dom);
/* *present = 1 while the domain exists, 0 once it is gone (destroyed by an
 * administrator, crashed): a gone domain holds no copy of the guest. */
int colo_domain_present(colo_domain *dom, int *present);
/* Start dirty logging (idempotent). */
int colo_domain_logdirty_enable(colo_domain *dom);
int colo_domain_logdirty_disable(colo_domain *dom);
/* Read the dirty log into out (which is overwritten) and clear it, as one
 * step with respect to the guest. */
int colo_domain_dirty_read_clear(colo_domain *dom, colo_bitmap *out);

/* vCPU context blob. */
int colo_domain_context_get(colo_domain *dom, uint8_t *buf, uint64_t cap, uint64_t *len);
int colo_domain_context_set(colo_domain *dom, const uint8_t *buf, uint64_t len);

/* Copy pages out of and into guest memory (tests and tools; the stream
 * moves pages without these). Writing needs a paused domain. */
int colo_domain_read_page(colo_domain *dom, uint64_t pfn, uint8_t *buf);
int colo_domain_write_page(colo_domain *dom, uint64_t pfn, const uint8_t *buf);

/* What is staged for a checkpoint and not applied yet (tests, fuzzing):
 * *pages pages, and *context 1 when a context is; 0 and 0 between
 * checkpoints. */
void colo_domain_staged(const colo_domain *dom, uint64_t *pages, int *context);

/* Hashes (xxh64).  page_hashes, when not NULL, gets one hash per page. */
int colo_domain_hash(colo_domain *dom, uint64_t *memory_hash,
                     uint64_t *context_hash, uint64_t *page_hashes);

/* The guest's network endpoint, what the proxy serves clients with (the
 * backend's guest network hooks, internal.h): one request line in, one
 * reply line out, its state in guest memory (so checkpoints carry it).
 * seq is the proxy's request sequence number; the guest remembers the
 * highest it processed.  A running domain only: COLO_E_PAUSED otherwise.
 * A seq at or below the last one processed is refused (COLO_E_DUPLICATE):
 * a checkpoint already carried its effect.  A backend without the hooks
 * answers COLO_E_UNSUPPORTED.  Sim: the key-value service of a domain with
 * 2 or more service pages (service.c; requests "SET key value", "GET key",
 * "DEL key", "COUNT", "PING"); xen: none yet. */
int colo_domain_serve(colo_domain *dom, uint64_t seq, const uint8_t *req, uint64_t req_len,
                      uint8_t *reply, uint64_t cap, uint64_t *reply_len);
/* The highest request sequence number the guest has processed. */
int colo_domain_served_seq(colo_domain *dom, uint64_t *seq);

/* Sim: the guest writes every page of pages once, now (benches force a
 * dirty set of an exact size with it).  Other backends: COLO_E_UNSUPPORTED. */
int colo_sim_dirty(colo_domain *dom, const colo_bitmap *pages);

/* Sim: the guest is destroyed, as `xl destroy` does to a Xen domain: it
 * never runs or serves again and every backend call on it fails
 * (COLO_E_NOT_FOUND); only close works.  Tests use it to lose a guest
 * while its host lives.  Other backends: COLO_E_UNSUPPORTED. */
int colo_sim_destroy(colo_domain *dom);

/* Counters of the sim vCPU (0 on other backends). */
uint64_t colo_sim_writes(const colo_domain *dom);

/* ---- the stream (stream.c) ---------------------------------------------- */

/* timeout_ms: how long one read or write may wait for the socket (-1: for
 * ever).  The fd may be blocking or not. */

/* Image header + domain header describing dom (its type and page count). */
int colo_write_header(int fd, colo_domain *dom, int timeout_ms);
/* PAGE_DATA records for every set bit of pages, written from guest memory,
 * at most COLO_MAX_PFNS_PER_RECORD pfns a record. */
int colo_write_pages(int fd, colo_domain *dom, const colo_bitmap *pages, int timeout_ms);
/* Test hook: as colo_write_pages, but stops after cut_after bytes, in the
 * middle of a record, to tear a checkpoint on purpose. */
int colo_write_pages_cut(int fd, colo_domain *dom, const colo_bitmap *pages,
                         uint64_t cut_after, int timeout_ms);
int colo_write_context(int fd, colo_domain *dom, int timeout_ms);
int colo_write_control(int fd, uint32_t control_id, uint64_t generation,
                       uint64_t epoch, int timeout_ms);
int colo_write_dirty_list(int fd, const colo_bitmap *pages, int timeout_ms);
/* page_hashes: NULL, or one hash a page (pages entries), appended so the
 * peer can name the pages that differ. */
int colo_write_verify(int fd, uint64_t epoch, uint64_t memory_hash,
                      uint64_t context_hash, uint64_t pages,
                      const uint64_t *page_hashes, int timeout_ms);
/* The end of a checkpoint: CHECKPOINT_INFO (generation, epoch, last_seq)
 * and the empty CHECKPOINT right after it, in one write. */
int colo_write_checkpoint(int fd, uint64_t generation, uint64_t epoch,
                          uint64_t last_seq, int timeout_ms);
int colo_write_end(int fd, int timeout_ms);
/* Any record, for tests and tools: body is written as given and padded. */
int colo_write_raw_record(int fd, uint32_t type, const uint8_t *body,
                          uint64_t len, int timeout_ms);

/* What colo_reader_next() hands back: one event a call. */
enum colo_event_kind {
    COLO_EV_CONTROL = 1,      /* CHECKPOINT_STATE: control_id, generation, epoch */
    COLO_EV_DIRTY = 2,        /* back channel dirty list merged into dirty_out */
    COLO_EV_VERIFY = 3,       /* VERIFY: epoch, hashes, pages; page_hashes set when it carried them */
    COLO_EV_CHECKPOINT = 4,   /* CHECKPOINT applied: generation, epoch, last_seq (its CHECKPOINT_INFO's), pages */
    COLO_EV_END = 5
};

struct colo_event {
    uint32_t kind;           /* enum colo_event_kind */
    uint32_t control_id;
    uint64_t generation;
    uint64_t epoch;
    uint64_t last_seq;
    uint64_t pages;          /* pages applied, or pfns in a dirty list */
    uint64_t memory_hash;
    uint64_t context_hash;
    uint64_t bytes;          /* stream bytes read for this event */
    uint32_t page_hashes;    /* VERIFY: 1 when page hashes were stored in the verify buffer */
    uint32_t reserved;
};

typedef struct colo_reader colo_reader;

/* dom is this side's domain: the peer's header must match its type and
 * size; forward, it receives PAGE_DATA/HVM_CONTEXT.  dirty_out receives
 * the back channel's dirty lists (back only; NULL forward).  Records of a
 * generation below min_generation are refused (COLO_E_STALE_GENERATION);
 * min_generation is also the stream's generation, and a sync point or
 * CHECKPOINT_INFO of a higher one is refused too (COLO_E_WRONG_GENERATION; 0:
 * a stream of no generation, for tests and tools: pairs start at 1).
 * timeout_ms bounds every wait inside a record; idle_timeout_ms the wait
 * for the next record (a COLO_E_TIMEOUT there leaves the reader usable).
 * A new reader drops whatever is staged on dom (an older stream's
 * checkpoint can no longer complete); freeing a reader drops what it
 * staged.  Free every reader of a domain before the domain. */
int colo_reader_new(int fd, int direction, colo_domain *dom,
                    colo_bitmap *dirty_out, uint64_t min_generation,
                    int timeout_ms, int idle_timeout_ms, colo_reader **out);
void colo_reader_free(colo_reader *r);
/* Reads and checks the image and domain headers. */
int colo_reader_header(colo_reader *r);
/* Reads records until one the caller must see.  Pages and context are
 * staged in the domain and applied only by a whole CHECKPOINT, once what
 * the CHECKPOINT_INFO right before it claims is checked (its generation
 * the stream's, its last_seq not below the last applied one; in
 * colo_secondary_checkpoint also its epoch the one requested).  A
 * CHECKPOINT without it, or it not followed by its CHECKPOINT, is
 * refused (COLO_E_PROTOCOL).  Any other record the caller must see while
 * a checkpoint is staged tears it (COLO_E_PROTOCOL).  On any error the
 * staged state is discarded and guest memory is untouched. */
int colo_reader_next(colo_reader *r, struct colo_event *ev);
void colo_reader_set_timeouts(colo_reader *r, int timeout_ms, int idle_timeout_ms);
void colo_reader_set_min_generation(colo_reader *r, uint64_t min_generation);
uint64_t colo_reader_bytes(const colo_reader *r);
/* Where a VERIFY record's page hashes go (the domain's page count of
 * entries); NULL: they are read and dropped. */
void colo_reader_set_verify_buffer(colo_reader *r, uint64_t *page_hashes);

/* Pages whose hashes differ: the first cap pfns into pfns, the total into
 * *count. */
void colo_hashes_diff(const uint64_t *a, const uint64_t *b, uint64_t n,
                      uint64_t *pfns, uint64_t cap, uint64_t *count);

/* ---- the armed checkpoint (arm.c) --------------------------------------- */

/* Armed checkpoints (docs/protocol.md): the coordinator hands the primary
 * an epoch ahead of time, and the checkpoint starts the moment an output
 * diverges, with no round trip through the coordinator.  The arm is the
 * checkpoint side's: the agent waits on it, and each output comparer (the
 * sim proxy today; any other, such as a NIC-level proxy, the same way)
 * only reports into it.  colo_arm_await blocks until a diverged output is
 * held (DIVERGENCE), colo_arm_fire(token) is called (FIRED) or timeout_ms
 * passes (TIMER); it fails with COLO_E_DISARMED on colo_arm_disarm(token)
 * or while the comparer says it is not comparing (detached, unprotected,
 * link lost, closing; a new arm: no comparer yet).  token (the epoch)
 * keeps a late fire or disarm from touching the next wait.  The calls are
 * thread-safe; free only with no await in flight and no comparer left. */

typedef struct colo_arm colo_arm;

enum colo_arm_why {
    COLO_ARM_NONE = 0,
    COLO_ARM_DIVERGENCE = 1,
    COLO_ARM_TIMER = 2,
    COLO_ARM_FIRED = 3
};

struct colo_arm_result {
    uint32_t why;            /* enum colo_arm_why */
    uint32_t reason;         /* the newest divergence's reason (enum colo_proxy_reason) */
    uint64_t seq;            /* ... and its seq */
    uint64_t t_ns;           /* CLOCK_MONOTONIC when the wait ended */
};

int colo_arm_new(colo_arm **out);
void colo_arm_free(colo_arm *a);
int colo_arm_await(colo_arm *a, uint64_t token, uint32_t timeout_ms, struct colo_arm_result *out);
void colo_arm_fire(colo_arm *a, uint64_t token);
void colo_arm_disarm(colo_arm *a, uint64_t token);

/* What an output comparer reports, from any thread, under its own locks
 * if it likes (the arm takes only its own and calls nothing back).  One
 * comparer reports into an arm at a time.
 * diverged: one output is held from now on, until a checkpoint covers it:
 *   seq numbers it in the comparer's order, reason is MISMATCH (the
 *   secondary's output differs) or TIMEOUT (it gave none in time).
 *   An armed checkpoint starts at once, and at every await while held.
 * released: n held outputs left (a checkpoint covered them, or unprotect).
 * comparing: NULL or "" once the comparer compares (a secondary is
 *   attached); else why it cannot (no divergence can come): an await then
 *   fails with that text.  A comparer that goes away releases what it
 *   held and says why it stopped. */
void colo_arm_diverged(colo_arm *a, uint64_t seq, uint32_t reason);
void colo_arm_released(colo_arm *a, uint64_t n);
void colo_arm_comparing(colo_arm *a, const char *stopped);

/* ---- the COLO proxy (proxy.c, mirror.c) ---------------------------------- */

/* The proxy's data path (docs/design.md §5), on a thread of its own so no
 * client request crosses Python.  It speaks to the guest through the
 * backend's guest network hooks (colo_domain_serve): a domain without
 * them (xen, a sim domain with fewer than 2 service pages) is refused at
 * new, with COLO_E_UNSUPPORTED.
 *
 * Primary (colo_proxy): serves the clients accepted on listen_fd, one
 * request line -> one reply line, requests numbered after the guest's last
 * processed one.  Unprotected, replies go straight out.  Attached to a
 * secondary, each request is also framed to it and the primary's reply
 * waits for the secondary's: equal -> released; different, or missing past
 * reply_timeout_ms -> held, and a HOLD event asks for a checkpoint.  A
 * checkpoint whose state includes a request releases it
 * (colo_proxy_checkpoint_done).  Replies leave each connection in request
 * order.  Given an arm (NULL: none), the proxy reports into it each held
 * reply, each release and whether it compares: nothing more (the
 * checkpoint side owns the arm).  Events are queued; event_fd (an eventfd)
 * becomes readable when the queue gets its first one.  The proxy owns
 * every fd handed to it.
 *
 * Backpressure: a client's unsent output (replies written to no socket yet,
 * held ones included) is bounded by output_max bytes.  Past it the proxy
 * stops reading that client, and serving the lines it already sent, until
 * it has read its replies down to half the bound; other clients go on.
 * Held replies are never dropped: not reading is what bounds them. */

/* Default output_max: 256 KiB, about 1300 replies of 200 bytes. */
#define COLO_PROXY_OUTPUT_MAX 262144
#define COLO_PROXY_OUTPUT_MIN 4096

typedef struct colo_proxy colo_proxy;

enum colo_proxy_event_kind {
    COLO_PX_HOLD = 1,        /* reply seq is held (reason): ask for a checkpoint including it */
    COLO_PX_RELEASE = 2,     /* held reply seq released: checkpoint epoch resumed, t_ns */
    COLO_PX_LINK_LOST = 3    /* the link to the secondary failed (code, detail); output is held */
};

enum colo_proxy_reason {
    COLO_PX_MISMATCH = 1,    /* the secondary's reply differs */
    COLO_PX_TIMEOUT = 2      /* no reply from the secondary within the timeout */
};

struct colo_proxy_event {
    uint32_t kind;           /* enum colo_proxy_event_kind */
    uint32_t reason;         /* HOLD: enum colo_proxy_reason */
    uint64_t seq;
    uint64_t epoch;
    uint64_t t_ns;           /* CLOCK_MONOTONIC when it happened */
    int32_t code;            /* LINK_LOST: the error */
    uint32_t reserved;
    char detail[112];        /* LINK_LOST: what failed */
};

struct colo_proxy_stats {
    uint64_t requests;       /* client requests served by the guest */
    uint64_t held;           /* replies held now */
    uint64_t mismatches;
    uint64_t timeouts;
    uint64_t clients;        /* client connections open */
    uint64_t clients_refused;/* connections refused: too many, or a line past the limit */
    uint64_t last_seq;       /* the last request's sequence number */
    uint64_t covered;        /* highest seq a resumed checkpoint includes */
    uint64_t events_lost;    /* events that found no memory (ask for a checkpoint anyway) */
    uint64_t backpressure;   /* times a client was paused: its unsent output reached output_max */
    uint64_t clients_paused; /* clients paused now */
    uint64_t output_bytes;   /* reply bytes owed to clients now, written to no socket yet */
};

/* poll_us: after handling events the thread polls this long before it
 * sleeps (yielding the CPU between polls).  A request then finds it awake:
 * on a host whose CPUs idle between requests, each wake-up from sleep costs
 * more than the request itself.  0: always sleep.  output_max: the bound on
 * each client's unsent output, at least COLO_PROXY_OUTPUT_MIN.  arm:
 * where held replies are reported (it must outlive the proxy), or NULL. */
int colo_proxy_new(colo_domain *dom, int listen_fd, uint32_t reply_timeout_ms, uint32_t poll_us,
                   uint32_t output_max, colo_arm *arm, colo_proxy **out);
/* Stops the thread and closes every fd (clients, link, listener). */
void colo_proxy_free(colo_proxy *p);
int colo_proxy_event_fd(const colo_proxy *p);
/* A secondary in sync: compare from now on (link_fd taken over). */
int colo_proxy_attach(colo_proxy *p, int link_fd);
/* The secondary is gone: hold what is not released yet. */
void colo_proxy_detach(colo_proxy *p);
/* Replies go straight out; everything held is released (*released of them). */
void colo_proxy_unprotect(colo_proxy *p, uint64_t *released);
/* SECONDARY_RESUMED of checkpoint epoch, whose state includes every request <= last_seq. */
void colo_proxy_checkpoint_done(colo_proxy *p, uint64_t epoch, uint64_t last_seq);
/* Takes up to cap queued events, oldest first; reads the eventfd clear. */
void colo_proxy_events(colo_proxy *p, struct colo_proxy_event *out, uint64_t cap, uint64_t *n);
void colo_proxy_stats(colo_proxy *p, struct colo_proxy_stats *out);

/* Secondary (colo_mirror): runs the primary's framed requests on the
 * secondary guest in order and frames each reply back; a request the guest
 * already has (a checkpoint carried it: COLO_E_DUPLICATE) is skipped.  When
 * the link ends, done_fd (an eventfd) becomes readable and
 * colo_mirror_result says why.  Past 1 MiB of replies the primary has not
 * taken yet, it stops reading requests until they leave (the primary in
 * turn stops serving past 1 MiB of requests the link has not taken). */

typedef struct colo_mirror colo_mirror;

/* poll_us: as colo_proxy_new's. */
int colo_mirror_new(colo_domain *dom, int link_fd, uint32_t poll_us, colo_mirror **out);
void colo_mirror_free(colo_mirror *m);
int colo_mirror_done_fd(const colo_mirror *m);
/* *finished = 1 once the link ended; its code is returned (COLO_E_EOF: the
 * primary closed it) and detail (cap bytes) says what failed. */
int colo_mirror_result(colo_mirror *m, int *finished, uint64_t *served, uint64_t *skipped,
                       char *detail, uint64_t cap);

/* ---- the NIC proxy (netport.c, netframe.c, nettable.c, tcpcompare.c,
 *      rewriter.c, netproxy.c) ------------------------------------------- */

/* COLO for a real guest's network (docs/proxy.md, "the NIC path"): the
 * agent sits on the guest's NIC (a Xen vif, a tap, a veth) with AF_PACKET
 * sockets, one thread a proxy, no frame crossing Python.
 *
 * Primary: every frame from the uplink is given to the primary guest,
 * numbered (its ingress seq), and forwarded in order over the link to the
 * secondary.  What the primary guest sends is held and compared with what
 * the secondary's guest sends: TCP by payload per connection in sequence
 * order, UDP and ICMP by payload per flow, ARP and non-IPv4 passed as they
 * are; equal -> released to the uplink.  Different, missing past the
 * compare timeout, or not comparable (IPv4 fragments) -> the connection's
 * output is held until colo_np_checkpoint_done of a checkpoint whose
 * last_seq covers it, and a divergence is reported (one place:
 * np_report_divergence in netproxy.c).
 *
 * Secondary: injects the forwarded frames into its guest, and sends what
 * its guest sends back over the link; its rewriter maps each connection's
 * sequence numbers onto the primary's (per-connection ISN offset) both
 * ways.  Promoted, it bridges its guest to an uplink, rewriting still.
 *
 * The link is a connected stream socket the caller authenticated (the
 * pair's proxy link); a malformed frame on it drops the link, and the
 * primary then holds every output until a checkpoint or unprotect. */

#define COLO_NP_MAX_FRAME 65664     /* largest frame: a 64 KiB GSO super-frame and its headers */

enum colo_np_role {
    COLO_NP_PRIMARY = 1,
    COLO_NP_SECONDARY = 2
};

/* Compare results and drops by protocol: index with enum colo_np_proto. */
enum colo_np_proto {
    COLO_NP_TCP = 0,
    COLO_NP_UDP = 1,
    COLO_NP_ICMP = 2,
    COLO_NP_OTHER = 3,     /* ARP, IPv6, anything not IPv4 TCP/UDP/ICMP */
    COLO_NP_NPROTO = 4
};

enum colo_np_reason {
    COLO_NP_MISMATCH = 1,      /* the secondary sent other bytes */
    COLO_NP_TIMEOUT = 2,       /* the secondary's output missing past the timeout */
    COLO_NP_UNCOMPARABLE = 3,  /* an output that cannot be compared (an IPv4 fragment) */
    COLO_NP_LINK = 4           /* the link is down: nothing can be compared */
};

struct colo_np_config {
    uint32_t role;               /* enum colo_np_role */
    uint32_t compare_timeout_ms; /* primary: secondary output missing past it diverges */
    uint32_t max_conns;          /* connection table bound (oldest idle evicted) */
    uint32_t max_held_bytes;     /* primary: bound on held output bytes (past it frames dropped) */
    uint32_t conn_buf_max;       /* primary: unmatched bytes a connection keeps a side */
    uint32_t keep_offsets;       /* secondary: 1 = checkpoints copy no guest TCP state
                                  * (namespace stand-ins): offsets and forwarded frames are
                                  * kept; 0 = a VM checkpoint copies it: offsets reset, frames
                                  * at or below its last_seq dropped */
};

struct colo_np_stats {
    uint64_t ingress;            /* frames from the uplink given to the guest (primary: last_seq) */
    uint64_t egress;             /* frames the guest sent */
    uint64_t released;           /* primary: frames released to the uplink */
    uint64_t held;               /* primary: frames held now */
    uint64_t held_bytes;         /* primary: their bytes */
    uint64_t equal[4];           /* frames released by an equal compare, by protocol */
    uint64_t passed[4];          /* released uncompared (ARP, non-IPv4), by protocol */
    uint64_t mismatch[4];        /* divergences, by protocol and reason */
    uint64_t timeout[4];
    uint64_t uncomparable[4];
    uint64_t ckpt_released;      /* frames a checkpoint released */
    uint64_t conns;              /* connection (or rewriter) entries now */
    uint64_t evicted;            /* idle entries evicted at the bound */
    uint64_t table_full;         /* frames dropped: no entry could be made */
    uint64_t drop_runt;          /* frames shorter than an Ethernet header */
    uint64_t drop_malformed;     /* IPv4 with a bad header or lengths */
    uint64_t drop_held_full;     /* output dropped at max_held_bytes or conn_buf_max */
    uint64_t drop_ring;          /* the kernel's socket drops (PACKET_STATISTICS) */
    uint64_t drop_link;          /* frames not forwarded: no link */
    uint64_t drop_covered;       /* secondary: forwarded frames a checkpoint already covered */
    uint64_t rewritten;          /* secondary: frames whose seq or ack was rewritten */
    uint64_t link_lost;          /* links dropped (malformed frame, I/O error, EOF) */
    uint64_t divergences;        /* divergences reported */
    uint64_t checkpoints;        /* colo_np_checkpoint_done calls */
};

typedef struct colo_np colo_np;

/* An AF_PACKET socket on ifname (with virtio-net headers, so GSO frames
 * and partial checksums pass as they are), in the network namespace at
 * netns_path (NULL: the caller's).  A missing interface is COLO_E_NOT_FOUND. */
int colo_np_port_open(const char *netns_path, const char *ifname, int *fd);
/* guest_fd, uplink_fd: ports (taken over).  Secondary: uplink_fd -1 until
 * promoted.  The thread starts at once; frames flow from attach on
 * (primary unattached: unprotected, its output goes straight out). */
int colo_np_new(const struct colo_np_config *cfg, int guest_fd, int uplink_fd, colo_np **out);
void colo_np_free(colo_np *np);
/* The link to the peer (taken over).  Primary: compare from now on. */
int colo_np_attach(colo_np *np, int link_fd);
/* Primary: report divergences into arm (the checkpoint side's, arm.c),
 * which must outlive the proxy: each diverged connection is one held
 * output until a checkpoint (or unprotect) lets its output go; whether a
 * secondary is attached is told too.  NULL: none. */
int colo_np_set_arm(colo_np *np, colo_arm *arm);
/* Readable (an eventfd) on each divergence and each lost link. */
int colo_np_event_fd(const colo_np *np);
/* Primary: the last ingress frame given to the guest (a checkpoint taken
 * now covers every output up to it). */
uint64_t colo_np_last_seq(colo_np *np);
/* Primary: SECONDARY_RESUMED of checkpoint epoch, covering every ingress
 * frame <= last_seq: output sent before that point is released.
 * Secondary (unless keep_offsets): forwarded frames <= last_seq are
 * dropped from now on, and offsets reset. */
void colo_np_checkpoint_done(colo_np *np, uint64_t epoch, uint64_t last_seq);
/* Primary: output goes straight out; everything held released (*released). */
void colo_np_unprotect(colo_np *np, uint64_t *released);
/* Secondary: become the primary unprotected on uplink_fd (taken over),
 * still rewriting the connections it knows. */
int colo_np_promote(colo_np *np, int uplink_fd);
void colo_np_stats(colo_np *np, struct colo_np_stats *out);

/* ---- one checkpoint a call (checkpoint.c) ------------------------------- */

/* Each side's steps of a checkpoint in one call, so a paused guest never
 * waits on the caller between them.  Timestamps are CLOCK_MONOTONIC ns; a
 * sync point's is taken before its record is written. */

/* Switches that break the protocol on purpose, for tests only (the agent's
 * hidden --test-* flags), apart from the options so production code sets
 * none of them by accident: it passes no test hooks at all (NULL). */
struct colo_ckpt_test_hooks {
    uint32_t send_only_a;    /* D = A, B left out */
    uint32_t reserved;
    uint64_t cut_after;      /* tear PAGE_DATA after this many bytes, then fail */
};

struct colo_ckpt_options {
    uint64_t generation;
    uint64_t epoch;
    uint64_t *page_hashes;   /* verify mode: this side's page hashes land here
                              * (one a page); NULL: no VERIFY exchange */
    colo_proxy *proxy;       /* primary: its held replies the checkpoint covers are released
                              * the moment SECONDARY_RESUMED arrives (NULL: the caller does) */
    colo_np *netproxy;       /* the domain's NIC proxy (NULL: none).  Primary: last_seq is its
                              * colo_np_last_seq while paused, and its held output the checkpoint
                              * covers is released at SECONDARY_RESUMED.  Secondary: told the
                              * applied last_seq (colo_np_checkpoint_done) before the guest resumes */
    const struct colo_ckpt_test_hooks *test_hooks;  /* primary, tests only; NULL in production
                                                     * (the secondary refuses any: COLO_E_INVAL) */
};

struct colo_ckpt_result {
    uint64_t epoch;
    uint64_t t_request_ns;   /* CHECKPOINT_REQUEST sent (primary) / handled (secondary) */
    uint64_t t_suspended_ns; /* secondary: SECONDARY_SUSPENDED sent */
    uint64_t t_resumed_ns;   /* SECONDARY_RESUMED received (primary) / sent (secondary) */
    uint64_t pause_ns;
    uint64_t dirty_a;
    uint64_t dirty_b;
    uint64_t dirty_d;
    uint64_t pages;          /* sent (primary) / applied (secondary) */
    uint64_t bytes;          /* secondary: stream bytes of the checkpoint */
    uint64_t last_seq;       /* the guest service's last request in the new state */
    uint64_t memory_hash;    /* verify: this side's new state */
    uint64_t context_hash;
    uint64_t suspended_memory_hash;  /* secondary, verify: at SECONDARY_SUSPENDED */
    uint64_t suspended_context_hash;
    uint64_t peer_memory_hash;       /* primary, verify: the secondary's VERIFY */
    uint64_t peer_context_hash;
    uint32_t peer_page_hashes;       /* primary, verify: the VERIFY carried page hashes */
    uint32_t reserved;
};

/* Primary: back is the reader of the secondary's stream, whose dirty lists
 * merge into b; a and d are scratch of the domain's size.  On error the
 * guest runs on (its output stays held) and the connection is unusable. */
int colo_primary_checkpoint(int fd, colo_reader *back, colo_domain *dom, colo_bitmap *a,
                            colo_bitmap *b, colo_bitmap *d, const struct colo_ckpt_options *opt,
                            int timeout_ms, struct colo_ckpt_result *out);
/* Secondary, once CHECKPOINT_REQUEST of opt->epoch was read from fwd (the
 * forward reader of dom).  The checkpoint (its CHECKPOINT_INFO) must be
 * of opt->generation and opt->epoch.  On error the guest stays paused with its last whole
 * checkpoint, nothing is left staged, and fwd refuses further reads. */
int colo_secondary_checkpoint(int fd, colo_reader *fwd, colo_domain *dom, colo_bitmap *dirty,
                              const struct colo_ckpt_options *opt, int timeout_ms,
                              struct colo_ckpt_result *out);

/* ---- raw baseline (bench.c) --------------------------------------------- */

/* Send / receive total bytes in chunks of chunk bytes, walking through
 * buf (wrapping); the baseline the stream is measured against. */
int colo_raw_send(int fd, const uint8_t *buf, uint64_t buf_len,
                  uint64_t total, uint64_t chunk);
int colo_raw_recv(int fd, uint8_t *buf, uint64_t buf_len,
                  uint64_t total, uint64_t chunk);
/* Fill buf with distinct data, so every page is real memory (an untouched
 * calloc'd buffer reads as the kernel's one shared zero page). */
void colo_raw_fill(uint8_t *buf, uint64_t len, uint64_t seed);
