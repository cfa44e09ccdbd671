/* mirror.c - the secondary's end of the COLO proxy (colo.h has the
 * contract): a thread reads the primary's framed requests, runs them on the
 * secondary guest in the primary's order and frames each reply back.  The
 * guest itself refuses a request a checkpoint already carried
 * (COLO_E_DUPLICATE), under its vCPU lock, so none runs twice.  Replies the
 * primary has not taken are bounded (OUT_MAX): past that it reads no more
 * requests, and TCP holds the primary back in turn. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "internal.h"

#define OUT_MAX (1024 * 1024) /* reply bytes queued for the primary before requests wait */

struct colo_mirror {
    pthread_mutex_t mu;        /* guards finished, result and detail */
    pthread_t thread;
    int running;
    colo_domain *dom;
    int resumed_fd;            /* the guest's: readable after an unpause (not ours to close) */
    int link_fd, stop_fd, done_fd;
    uint64_t poll_ns;          /* busy-poll this long after activity before sleeping */
    struct colo_bytes in, out;
    int finished, result;
    uint64_t served, skipped;
    char detail[256];
};

/* Waits for the link (or a stop) for at most timeout; 1 when stopped. */
static int wait_link(struct colo_mirror *m, short events, const struct timespec *timeout, short *revents)
{
    struct pollfd fds[2] = {{.fd = m->link_fd, .events = events}, {.fd = m->stop_fd, .events = POLLIN}};
    int n;
    do {
        n = ppoll(fds, 2, timeout, NULL);
    } while (n < 0 && errno == EINTR);
    *revents = n > 0 ? fds[0].revents : 0;
    return n > 0 && (fds[1].revents & POLLIN);
}

/* wait_link, polling for poll_ns first (colo.h says why); 1 when stopped. */
static int wait_busy(struct colo_mirror *m, short events, short *revents)
{
    static const struct timespec zero = {0, 0};
    uint64_t until = m->poll_ns ? colo_now_ns() + m->poll_ns : 0;
    for (;;) {
        int stopped = wait_link(m, events, &zero, revents);
        if (stopped || *revents)
            return stopped;
        if (colo_now_ns() >= until)
            return wait_link(m, events, NULL, revents);
        sched_yield();  /* whoever else is runnable goes first */
    }
}

/* Waits for the paused guest to resume (or a stop, or the timeout); 1 when stopped. */
static int wait_resumed(struct colo_mirror *m, const struct timespec *timeout)
{
    int fd = m->resumed_fd;
    struct pollfd fds[2] = {{.fd = fd, .events = POLLIN}, {.fd = m->stop_fd, .events = POLLIN}};
    uint64_t v;
    int n;
    do {
        n = ppoll(fds, 2, timeout, NULL);
    } while (n < 0 && errno == EINTR);
    if (n > 0 && (fds[0].revents & POLLIN) && read(fd, &v, sizeof(v)) < 0) {
        /* drained by nobody else: EAGAIN cannot hurt, the next wait just wakes at once */
    }
    return n > 0 && (fds[1].revents & POLLIN);
}

/* One request on the guest, waiting while it is paused; COLO_OK with
 * *len = 0 when the guest already had it. */
static int serve(struct colo_mirror *m, uint64_t seq, const uint8_t *line, uint32_t n, uint8_t *reply,
                 uint64_t *len)
{
    static const struct timespec retry = {.tv_sec = 0, .tv_nsec = COLO_PX_PAUSED_RETRY_NS};
    for (;;) {
        int rc = colo_domain_serve(m->dom, seq, line, n, reply, COLO_PX_REPLY_MAX, len);
        if (rc == COLO_OK) {
            __atomic_add_fetch(&m->served, 1, __ATOMIC_RELAXED);
            return COLO_OK;
        }
        if (rc == COLO_E_DUPLICATE) {
            __atomic_add_fetch(&m->skipped, 1, __ATOMIC_RELAXED);  /* its effect arrived with a checkpoint's pages */
            *len = 0;
            return COLO_OK;
        }
        if (rc != COLO_E_PAUSED) {
            *len = colo_px_error_reply(reply);  /* refused: nothing changed, as on the primary */
            return COLO_OK;
        }
        if (wait_resumed(m, &retry))
            return colo_fail(COLO_E_EOF, "mirror stopped");
    }
}

static int out_full(const struct colo_mirror *m) { return m->out.len - m->out.off >= OUT_MAX; }

/* The whole frames that have arrived, answered into out while it has room;
 * *more = 1 when some wait for room. */
static int answer(struct colo_mirror *m, int *more)
{
    uint8_t reply[COLO_PX_REPLY_MAX];
    uint64_t seq, len;
    const uint8_t *line;
    uint32_t n;
    int have, rc;
    while (!(*more = out_full(m))) {
        if ((rc = colo_frame_next(&m->in, &have, &seq, &line, &n)) != COLO_OK || !have)
            return rc;
        if ((rc = serve(m, seq, line, n, reply, &len)) != COLO_OK)
            return rc;
        if (len && (rc = colo_bytes_frame(&m->out, seq, reply, (uint32_t)len)) != COLO_OK)
            return rc;
    }
    return COLO_OK;
}

/* Answer what was read, write what the link takes, then wait: for input
 * while out has room, for the link to take more while out holds bytes. */
static int loop(struct colo_mirror *m)
{
    for (;;) {
        short revents, want;
        size_t got;
        int more, rc;
        if ((rc = answer(m, &more)) != COLO_OK || (rc = colo_bytes_send(&m->out, m->link_fd)) != COLO_OK)
            return rc;
        if (more && !out_full(m))
            continue;  /* the link took some: answer the frames that waited */
        want = (short)((out_full(m) ? 0 : POLLIN) | (m->out.off < m->out.len ? POLLOUT : 0));
        if (wait_busy(m, want, &revents))
            return COLO_OK;
        if ((want & POLLIN) && (revents & (POLLIN | POLLERR | POLLHUP)) &&
            (rc = colo_bytes_recv(&m->in, m->link_fd, COLO_PX_READ_CHUNK, &got)) != COLO_OK)
            return rc;
    }
}

static void *run(void *arg)
{
    struct colo_mirror *m = arg;
    uint64_t one = 1;
    int rc = loop(m);
    pthread_mutex_lock(&m->mu);
    m->finished = 1;
    m->result = rc;
    snprintf(m->detail, sizeof(m->detail), "%s", rc ? colo_last_error() : "stopped");
    pthread_mutex_unlock(&m->mu);
    if (write(m->done_fd, &one, sizeof(one)) < 0) {
        /* cannot fail on a fresh eventfd; Python also polls the result */
    }
    return NULL;
}

int colo_mirror_new(colo_domain *dom, int link_fd, uint32_t poll_us, colo_mirror **out)
{
    struct colo_mirror *m;
    sigset_t all, old;
    int rc, one = 1, resumed_fd = -1;
    *out = NULL;
    if (dom == NULL || link_fd < 0)
        return colo_fail(COLO_E_INVAL, "mirror: a domain and a link socket");
    if ((rc = colo_domain_need_guest_net(dom, "by the mirror")) != COLO_OK ||
        (rc = colo_domain_resumed_fd(dom, &resumed_fd)) != COLO_OK)
        return rc;
    if ((m = calloc(1, sizeof(*m))) == NULL)
        return colo_fail(COLO_E_NOMEM, "mirror");
    pthread_mutex_init(&m->mu, NULL);
    m->dom = dom;
    m->resumed_fd = resumed_fd;
    m->poll_ns = (uint64_t)poll_us * 1000ULL;
    m->link_fd = -1;
    m->stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    m->done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (m->stop_fd < 0 || m->done_fd < 0) {
        rc = colo_fail_errno(COLO_E_IO, errno, "mirror: eventfd");
        colo_mirror_free(m);
        return rc;
    }
    setsockopt(link_fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    m->link_fd = link_fd;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);  /* signals stay with Python's threads */
    rc = pthread_create(&m->thread, NULL, run, m);
    if (rc == 0)
        pthread_setname_np(m->thread, "colo-mirror");  /* top -H shows which thread is which */
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        m->link_fd = -1;  /* still the caller's on failure */
        colo_mirror_free(m);
        return colo_fail_errno(COLO_E_NOMEM, rc, "mirror thread");
    }
    m->running = 1;
    *out = m;
    return COLO_OK;
}

void colo_mirror_free(colo_mirror *m)
{
    uint64_t one = 1;
    if (m == NULL)
        return;
    if (m->running) {
        if (write(m->stop_fd, &one, sizeof(one)) < 0) {
            /* a fresh eventfd cannot be full */
        }
        pthread_join(m->thread, NULL);
    }
    if (m->link_fd >= 0)
        close(m->link_fd);
    if (m->stop_fd >= 0)
        close(m->stop_fd);
    if (m->done_fd >= 0)
        close(m->done_fd);
    colo_bytes_free(&m->in);
    colo_bytes_free(&m->out);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

int colo_mirror_done_fd(const colo_mirror *m) { return m->done_fd; }

int colo_mirror_result(colo_mirror *m, int *finished, uint64_t *served, uint64_t *skipped, char *detail,
                       uint64_t cap)
{
    int rc;
    pthread_mutex_lock(&m->mu);
    *finished = m->finished;
    *served = __atomic_load_n(&m->served, __ATOMIC_RELAXED);
    *skipped = __atomic_load_n(&m->skipped, __ATOMIC_RELAXED);
    rc = m->finished ? m->result : COLO_OK;
    if (cap)
        snprintf(detail, cap, "%s", m->finished ? m->detail : "");
    pthread_mutex_unlock(&m->mu);
    return rc;
}
