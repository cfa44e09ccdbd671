/* checkpoint.c - one checkpoint (docs/design.md §2) in one call a side,
 * so a paused guest never waits for Python (or its GIL) between steps.
 * Python keeps the bookkeeping: metrics, sync-point reports (with the
 * timestamps taken here), and comparing VERIFY hashes.
 *
 *   primary                                secondary
 *   CHECKPOINT_REQUEST  ------------------>  pause, read dirty log B
 *                       <------------------  SECONDARY_SUSPENDED, dirty list B
 *   pause, read A, send D = A|B, context,
 *   CHECKPOINT_INFO (last_seq), CHECKPOINT
 *   [hash], resume ------------------------>  apply in one step [hash, VERIFY]
 *                       <------------------  resume, SECONDARY_RESUMED
 */
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "internal.h"

static int unexpected(const struct colo_event *ev, const char *want, uint64_t epoch)
{
    return colo_fail(COLO_E_PROTOCOL, "expected %s for epoch %llu, got event kind %u (control %u, epoch %llu)",
                     want, (unsigned long long)epoch, ev->kind, ev->control_id, (unsigned long long)ev->epoch);
}

/* The next event must be kind (and control id, for CONTROL) of this epoch. */
static int expect(colo_reader *r, uint32_t kind, uint32_t control_id, uint64_t epoch, const char *want,
                  struct colo_event *ev)
{
    int rc = colo_reader_next(r, ev);
    if (rc != COLO_OK)
        return rc;
    if (ev->kind != kind || (kind == COLO_EV_CONTROL && ev->control_id != control_id))
        return unexpected(ev, want, epoch);
    if (kind != COLO_EV_DIRTY && ev->epoch != epoch)
        return unexpected(ev, want, epoch);
    return COLO_OK;
}

/* Records written between cork(fd, 1) and cork(fd, 0) leave as one burst:
 * the peer wakes once for them, not once a record (on a loaded host each
 * wake-up is a context switch the paused guest waits for). */
static void cork(int fd, int on)
{
    (void)setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof(on));  /* advice: correct without it */
}

/* The guest service's last processed request (0 without one). */
static uint64_t service_seq(colo_domain *dom)
{
    uint64_t seq = 0;
    return colo_domain_served_seq(dom, &seq) == COLO_OK ? seq : 0;
}

/* ---- primary ------------------------------------------------------------- */

static const struct colo_ckpt_test_hooks no_test_hooks;

/* The test hooks in force: none unless a test passed some. */
static const struct colo_ckpt_test_hooks *test_hooks(const struct colo_ckpt_options *opt)
{
    return opt->test_hooks ? opt->test_hooks : &no_test_hooks;
}

/* Paused: A, D, and everything of the new state on the stream. */
static int send_state(int fd, colo_domain *dom, colo_bitmap *a, colo_bitmap *b, colo_bitmap *d,
                      const struct colo_ckpt_options *opt, int timeout_ms, struct colo_ckpt_result *out)
{
    const struct colo_ckpt_test_hooks *hooks = test_hooks(opt);
    int rc;
    /* paused: nothing more reaches the guest before the state is sent */
    out->last_seq = opt->netproxy ? colo_np_last_seq(opt->netproxy) : service_seq(dom);
    if ((rc = colo_domain_dirty_read_clear(dom, a)) != COLO_OK)
        return rc;
    rc = hooks->send_only_a ? colo_bitmap_copy(d, a) : colo_bitmap_union(d, a, b);
    if (rc != COLO_OK)
        return rc;
    out->dirty_a = colo_bitmap_count(a);
    out->dirty_b = colo_bitmap_count(b);
    out->dirty_d = out->pages = colo_bitmap_count(d);
    if (hooks->cut_after) {
        (void)colo_write_pages_cut(fd, dom, d, hooks->cut_after, timeout_ms);  /* fails below either way */
        shutdown(fd, SHUT_RDWR);
        return colo_fail(COLO_E_PROTOCOL, "test hook: checkpoint %llu torn after %llu bytes",
                         (unsigned long long)opt->epoch, (unsigned long long)hooks->cut_after);
    }
    cork(fd, 1);
    rc = colo_write_pages(fd, dom, d, timeout_ms);
    if (rc == COLO_OK)
        rc = colo_write_context(fd, dom, timeout_ms);
    if (rc == COLO_OK)
        rc = colo_write_checkpoint(fd, opt->generation, opt->epoch, out->last_seq, timeout_ms);
    cork(fd, 0);
    if (rc != COLO_OK)
        return rc;
    if (opt->page_hashes)
        return colo_domain_hash(dom, &out->memory_hash, &out->context_hash, opt->page_hashes);
    return COLO_OK;
}

static int primary_paused(int fd, colo_domain *dom, colo_bitmap *a, colo_bitmap *b, colo_bitmap *d,
                          const struct colo_ckpt_options *opt, int timeout_ms, struct colo_ckpt_result *out)
{
    uint64_t pause_start;
    int rc = colo_domain_pause(dom);
    if (rc != COLO_OK)
        return rc;
    pause_start = colo_now_ns();
    rc = send_state(fd, dom, a, b, d, opt, timeout_ms, out);
    if (colo_domain_is_paused(dom)) {
        int urc = colo_domain_unpause(dom);  /* the primary runs on whatever happened; its output stays held */
        if (rc == COLO_OK)
            rc = urc;
    }
    out->pause_ns = colo_now_ns() - pause_start;
    return rc;
}

int colo_primary_checkpoint(int fd, colo_reader *back, colo_domain *dom, colo_bitmap *a, colo_bitmap *b,
                            colo_bitmap *d, const struct colo_ckpt_options *opt, int timeout_ms,
                            struct colo_ckpt_result *out)
{
    struct colo_event ev;
    int rc;
    memset(out, 0, sizeof(*out));
    out->epoch = opt->epoch;
    colo_bitmap_clear_all(b);
    out->t_request_ns = colo_now_ns();
    if ((rc = colo_write_control(fd, COLO_CTL_CHECKPOINT_REQUEST, opt->generation, opt->epoch, timeout_ms)) ||
        (rc = expect(back, COLO_EV_CONTROL, COLO_CTL_SECONDARY_SUSPENDED, opt->epoch, "SECONDARY_SUSPENDED", &ev)) ||
        (rc = expect(back, COLO_EV_DIRTY, 0, opt->epoch, "the dirty list", &ev)) ||  /* merged into b */
        (rc = primary_paused(fd, dom, a, b, d, opt, timeout_ms, out)))
        return rc;
    if (opt->page_hashes) {
        if ((rc = expect(back, COLO_EV_VERIFY, 0, opt->epoch, "VERIFY", &ev)) != COLO_OK)
            return rc;
        out->peer_memory_hash = ev.memory_hash;
        out->peer_context_hash = ev.context_hash;
        out->peer_page_hashes = ev.page_hashes;
    }
    if ((rc = expect(back, COLO_EV_CONTROL, COLO_CTL_SECONDARY_RESUMED, opt->epoch, "SECONDARY_RESUMED", &ev)))
        return rc;
    out->t_resumed_ns = colo_now_ns();
    if (opt->proxy)  /* every client waiting on the checkpoint goes on now, not after a trip through Python */
        colo_proxy_checkpoint_done(opt->proxy, opt->epoch, out->last_seq);
    if (opt->netproxy)  /* the NIC's held frames likewise */
        colo_np_checkpoint_done(opt->netproxy, opt->epoch, out->last_seq);
    return COLO_OK;
}

/* ---- secondary ----------------------------------------------------------- */

static int secondary_suspend(int fd, colo_domain *dom, colo_bitmap *dirty, const struct colo_ckpt_options *opt,
                             int timeout_ms, struct colo_ckpt_result *out)
{
    int rc;
    if (opt->page_hashes &&  /* what a torn checkpoint must leave */
        (rc = colo_domain_hash(dom, &out->suspended_memory_hash, &out->suspended_context_hash, NULL)))
        return rc;
    if ((rc = colo_domain_dirty_read_clear(dom, dirty)) != COLO_OK)
        return rc;
    out->dirty_b = colo_bitmap_count(dirty);
    out->t_suspended_ns = colo_now_ns();  /* before the write: the peer may act on it at once */
    cork(fd, 1);
    rc = colo_write_control(fd, COLO_CTL_SECONDARY_SUSPENDED, opt->generation, opt->epoch, timeout_ms);
    if (rc == COLO_OK)
        rc = colo_write_dirty_list(fd, dirty, timeout_ms);
    cork(fd, 0);
    return rc;
}

/* The checkpoint is applied: its own writes are not the guest's dirt. */
static int secondary_applied(int fd, colo_domain *dom, colo_bitmap *dirty, const struct colo_ckpt_options *opt,
                             const struct colo_event *ev, int timeout_ms, struct colo_ckpt_result *out)
{
    int rc = colo_domain_dirty_read_clear(dom, dirty);
    if (rc != COLO_OK)
        return rc;
    out->pages = ev->pages;
    out->bytes = ev->bytes;
    out->last_seq = ev->last_seq;
    if (!opt->page_hashes)
        return COLO_OK;
    if ((rc = colo_domain_hash(dom, &out->memory_hash, &out->context_hash, opt->page_hashes)))
        return rc;
    return colo_write_verify(fd, opt->epoch, out->memory_hash, out->context_hash, dom->pages, opt->page_hashes,
                             timeout_ms);
}

static int secondary_steps(int fd, colo_reader *fwd, colo_domain *dom, colo_bitmap *dirty,
                           const struct colo_ckpt_options *opt, int timeout_ms, struct colo_ckpt_result *out)
{
    struct colo_event ev;
    uint64_t pause_start;
    int rc;
    if (opt->test_hooks)  /* they break the primary's side; none is the secondary's */
        return colo_fail(COLO_E_INVAL, "test hooks are the primary's: the secondary takes none");
    if ((rc = colo_reader_expect_checkpoint(fwd, dom, opt->generation, opt->epoch)) ||
        (rc = colo_domain_pause(dom)))
        return rc;
    pause_start = colo_now_ns();
    if ((rc = secondary_suspend(fd, dom, dirty, opt, timeout_ms, out)) ||
        (rc = expect(fwd, COLO_EV_CHECKPOINT, 0, opt->epoch, "CHECKPOINT", &ev)) ||
        (rc = secondary_applied(fd, dom, dirty, opt, &ev, timeout_ms, out)))
        return rc;
    if (opt->netproxy)  /* forwarded frames the new state includes are not injected again */
        colo_np_checkpoint_done(opt->netproxy, opt->epoch, out->last_seq);
    if ((rc = colo_domain_unpause(dom)))
        return rc;
    out->pause_ns = colo_now_ns() - pause_start;
    out->t_resumed_ns = colo_now_ns();
    return colo_write_control(fd, COLO_CTL_SECONDARY_RESUMED, opt->generation, opt->epoch, timeout_ms);
}

int colo_secondary_checkpoint(int fd, colo_reader *fwd, colo_domain *dom, colo_bitmap *dirty,
                              const struct colo_ckpt_options *opt, int timeout_ms,
                              struct colo_ckpt_result *out)
{
    int rc;
    memset(out, 0, sizeof(*out));
    out->epoch = opt->epoch;
    out->t_request_ns = colo_now_ns();
    /* The checkpoint's claims (its CHECKPOINT_INFO: generation, epoch,
     * last_seq) are checked before it applies.  On any error the guest stays paused with its last whole
     * checkpoint: whatever was staged is dropped (a record the call did not
     * want, a timeout between records), nothing half-applied runs. */
    if ((rc = secondary_steps(fd, fwd, dom, dirty, opt, timeout_ms, out)) != COLO_OK)
        colo_reader_abort(fwd);
    return rc;
}
