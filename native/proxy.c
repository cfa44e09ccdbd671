/* proxy.c - the primary's COLO proxy (colo.h has the contract).  One thread
 * runs an epoll loop over the listener, the clients, the link to the
 * secondary and two timers; Python's calls take the same mutex the loop
 * holds while it works, so the state below is only ever touched by one
 * side at a time.  Each request gets a slot of a ring indexed by its seq:
 * live requests are (lo, last_seq], at most RING of them (past that the
 * proxy stops reading clients until the oldest is answered).  Each client's
 * unsent output (its replies not yet written, held ones too) is bounded by
 * output_max: past it that client alone is read no further until it reads.
 * A held reply is reported to the checkpoint side's arm (arm.c), which
 * starts an armed checkpoint; the proxy drives no checkpoint itself. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define RING 4096u                 /* live requests at most (a power of two) */
#define CLIENT_BACKLOG (64 * 1024) /* unread request bytes a client may queue */
#define LINK_OUT_MAX (1024 * 1024) /* requests for the secondary not yet taken by the link */
#define MAX_CLIENTS 4096
#define TOO_LONG "ERROR request line longer than 512 bytes\n"

/* epoll tags of the fixed fds; any other value is a struct conn *. */
enum { TAG_LISTEN = 1, TAG_LINK, TAG_WAKE, TAG_SWEEP, TAG_RETRY, TAG_RESUMED };

enum { F_LIVE = 1, F_SENT = 2, F_ANSWERED = 4, F_RELEASABLE = 8, F_ASKED = 16 };

struct conn;

struct entry {
    uint64_t seq;
    uint64_t sent_ns;          /* when it was framed to the secondary */
    struct conn *conn;         /* NULL once its client left */
    struct entry *next;        /* the client's next reply, in request order */
    uint32_t flags;
    uint32_t reply_len;
    uint8_t reply[COLO_PX_REPLY_MAX];
};

struct conn {
    int fd;
    int eof;                   /* the client shut its side: close once answered */
    int dead;                  /* closed at the next reap */
    int queued;                /* on the send list */
    int paused;                /* output backed up: neither read nor served until it drains */
    uint32_t watching;         /* epoll events now */
    size_t owed;               /* reply bytes of head..tail, not yet in out */
    struct colo_bytes in, out;
    struct entry *head, *tail; /* replies not yet written, in request order */
    struct conn *prev, *next;  /* every client */
    struct conn *send_next;    /* clients with replies to write */
};

struct colo_proxy {
    pthread_mutex_t mu;
    pthread_t thread;
    int running, stop;
    colo_arm *arm;             /* the checkpoint side's: held replies are reported to it (or NULL) */
    colo_domain *dom;
    int epfd, listen_fd, link_fd, wake_fd, event_fd, sweep_fd, retry_fd;
    uint32_t link_watching, listen_watching, resumed_watching;
    int resumed_fd;            /* the guest's: readable after an unpause (not ours to close) */
    uint64_t reply_timeout_ns;
    uint64_t poll_ns;          /* busy-poll this long after activity before sleeping */
    int unprotected;           /* replies go straight out */
    int stalled;               /* some client waits for the guest or for ring room */
    int retry_due;             /* the retry timer fired or the ring got room */
    int retry_armed;
    int link_stalled;          /* clients wait for the link to take LINK_OUT_MAX */
    size_t output_max;         /* a client's unsent output at most (colo.h) */
    uint64_t lo;
    struct entry *ring;
    struct conn *conns, *send_list;
    struct colo_bytes link_in, link_out;
    struct colo_proxy_event *events;
    uint64_t nevents, events_cap;
    struct colo_proxy_stats st;
};

/* ---- small helpers ------------------------------------------------------- */

static int watch(struct colo_proxy *p, int op, int fd, uint32_t events, uint64_t tag)
{
    struct epoll_event ev = {.events = events, .data.u64 = tag};
    if (epoll_ctl(p->epfd, op, fd, &ev) < 0)
        return colo_fail_errno(COLO_E_IO, errno, "epoll_ctl on fd %d", fd);
    return COLO_OK;
}

static void set_watch(struct colo_proxy *p, int fd, uint32_t *now, uint32_t want, uint64_t tag)
{
    if (*now != want && watch(p, EPOLL_CTL_MOD, fd, want, tag) == COLO_OK)
        *now = want;
}

static void arm(int timer_fd, uint64_t first_ns, uint64_t interval_ns)
{
    struct itimerspec t = {
        .it_value = {.tv_sec = (time_t)(first_ns / 1000000000ULL), .tv_nsec = (long)(first_ns % 1000000000ULL)},
        .it_interval = {.tv_sec = (time_t)(interval_ns / 1000000000ULL),
                        .tv_nsec = (long)(interval_ns % 1000000000ULL)},
    };
    timerfd_settime(timer_fd, 0, &t, NULL);
}

static void drain_fd(int fd)
{
    uint64_t v;
    while (read(fd, &v, sizeof(v)) == (ssize_t)sizeof(v))
        ;
}

/* The loop comes round at once. */
static void wake(struct colo_proxy *p)
{
    uint64_t one = 1;
    if (write(p->wake_fd, &one, sizeof(one)) < 0) {
        /* an eventfd only fails when its counter is full: the loop is awake anyway */
    }
}

static void nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static int nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return colo_fail_errno(COLO_E_INVAL, errno, "fd %d", fd);
    return COLO_OK;
}

/* ---- what the arm hears ---------------------------------------------------- */

/* Whether replies are compared now, and if not why: the arm's await fails
 * with it.  Called after every change of stop, unprotected or the link. */
static void tell_arm(struct colo_proxy *p)
{
    if (p->arm != NULL)
        colo_arm_comparing(p->arm, p->stop ? "the proxy is closing"
                                   : p->unprotected ? "the domain runs unprotected"
                                   : p->link_fd < 0 ? "no link to the secondary" : NULL);
}

/* ---- events to Python ---------------------------------------------------- */

static void push_event(struct colo_proxy *p, const struct colo_proxy_event *ev)
{
    uint64_t one = 1;
    if (p->nevents == p->events_cap) {
        uint64_t cap = p->events_cap ? p->events_cap * 2 : 256;
        struct colo_proxy_event *grown = realloc(p->events, cap * sizeof(*grown));
        if (grown == NULL) {
            p->st.events_lost++;  /* Python sees it in the stats and asks for a checkpoint */
            return;
        }
        p->events = grown;
        p->events_cap = cap;
    }
    p->events[p->nevents++] = *ev;
    if (p->nevents == 1 && write(p->event_fd, &one, sizeof(one)) < 0)
        p->st.events_lost++;
}

static void hold_event(struct colo_proxy *p, uint64_t seq, uint32_t reason)
{
    struct colo_proxy_event ev = {.kind = COLO_PX_HOLD, .reason = reason, .seq = seq, .t_ns = colo_now_ns()};
    push_event(p, &ev);
}

/* ---- requests and their replies ------------------------------------------ */

static struct entry *lookup(struct colo_proxy *p, uint64_t seq)
{
    struct entry *e = &p->ring[seq & (RING - 1)];
    if (seq <= p->lo || seq > p->st.last_seq || !(e->flags & F_LIVE) || e->seq != seq)
        return NULL;
    return e;
}

static void free_entry(struct colo_proxy *p, struct entry *e)
{
    e->flags = 0;
    e->conn = NULL;
    while (p->lo < p->st.last_seq && !(p->ring[(p->lo + 1) & (RING - 1)].flags & F_LIVE)) {
        p->lo++;
        p->retry_due = 1;  /* room in the ring again */
    }
}

static void queue_send(struct colo_proxy *p, struct conn *c)
{
    if (!c->queued) {
        c->queued = 1;
        c->send_next = p->send_list;
        p->send_list = c;
    }
}

/* Moves the client's releasable replies, in order, to its output. */
static void conn_flush(struct colo_proxy *p, struct conn *c)
{
    struct entry *e;
    while ((e = c->head) != NULL && (e->flags & F_RELEASABLE)) {
        if (!c->dead && colo_bytes_append(&c->out, e->reply, e->reply_len) != COLO_OK)
            c->dead = 1;
        c->owed -= e->reply_len;
        c->head = e->next;
        free_entry(p, e);
    }
    if (c->head == NULL)
        c->tail = NULL;
    queue_send(p, c);
}

static void releasable(struct colo_proxy *p, struct entry *e)
{
    if (e->flags & F_RELEASABLE)
        return;
    e->flags |= F_RELEASABLE;
    if (e->flags & F_ASKED) {
        p->st.held--;
        if (p->arm != NULL)
            colo_arm_released(p->arm, 1);
    }
    if (e->conn != NULL)
        conn_flush(p, e->conn);
    else
        free_entry(p, e);
}

/* A reply differs or is late: hold it and report the divergence, once. */
static void ask(struct colo_proxy *p, struct entry *e, uint32_t reason)
{
    if ((e->flags & (F_ASKED | F_RELEASABLE)) || e->seq <= p->st.covered)
        return;
    e->flags |= F_ASKED;
    p->st.held++;
    hold_event(p, e->seq, reason);
    if (p->arm != NULL)
        colo_arm_diverged(p->arm, e->seq, reason);  /* an armed checkpoint starts at once */
}

/* One request line into the guest; COLO_E_PAUSED leaves it for later. */
static int serve_line(struct colo_proxy *p, struct conn *c, const uint8_t *line, uint32_t len)
{
    uint64_t seq = p->st.last_seq + 1, n = 0;
    struct entry *e = &p->ring[seq & (RING - 1)];
    int rc = colo_domain_serve(p->dom, seq, line, len, e->reply, COLO_PX_REPLY_MAX, &n);
    if (rc == COLO_E_PAUSED)
        return rc;
    e->reply_len = rc == COLO_OK ? (uint32_t)n : colo_px_error_reply(e->reply);  /* refused: nothing changed */
    e->seq = seq;
    e->conn = c;
    e->next = NULL;
    e->sent_ns = 0;
    e->flags = F_LIVE;
    p->st.last_seq = seq;
    p->st.requests++;
    if (c->tail)
        c->tail->next = e;
    else
        c->head = e;
    c->tail = e;
    c->owed += e->reply_len;
    if (p->unprotected) {
        releasable(p, e);
    } else if (p->link_fd >= 0) {
        if (colo_bytes_frame(&p->link_out, seq, line, len) == COLO_OK) {
            e->flags |= F_SENT;
            e->sent_ns = colo_now_ns();
        } else {
            ask(p, e, COLO_PX_TIMEOUT);  /* the secondary will never see it */
        }
    }
    return COLO_OK;
}

/* ---- clients ------------------------------------------------------------- */

static void conn_refuse(struct colo_proxy *p, struct conn *c)
{
    if (colo_bytes_append(&c->out, TOO_LONG, strlen(TOO_LONG)) != COLO_OK)
        c->dead = 1;  /* no memory even for the refusal: just close */
    c->in.off = c->in.len;
    c->eof = 1;
    p->st.clients_refused++;
    queue_send(p, c);
}

/* Replies the client is owed and no socket took yet: held, waiting for the
 * secondary, or queued in out. */
static size_t conn_backlog(const struct conn *c) { return c->owed + (c->out.len - c->out.off); }

/* Pauses the client once its backlog reaches output_max.  Each served line
 * adds at most COLO_PX_REPLY_MAX, so the backlog stays under output_max +
 * COLO_PX_REPLY_MAX: held replies are bounded by not serving more, never
 * by dropping any. */
static int conn_full(struct colo_proxy *p, struct conn *c)
{
    if (!c->paused && conn_backlog(c) >= p->output_max) {
        c->paused = 1;
        p->st.backpressure++;
    }
    return c->paused;
}

/* A paused client goes on once it read half its backlog (not a pause and a
 * resume at every reply of a slow reader).  Only settle_clients resumes
 * one, after its last write, and serves the lines waiting at once: nothing
 * else may wake the loop for them. */
static int conn_resumable(const struct colo_proxy *p, const struct conn *c)
{
    return c->paused && !c->dead && conn_backlog(c) <= p->output_max / 2;
}

/* The link to the secondary took too little of what it was given: serve
 * nobody until it drains (the secondary is behind for every client). */
static int link_backed_up(struct colo_proxy *p)
{
    if (p->unprotected || p->link_fd < 0 || p->link_out.len - p->link_out.off < LINK_OUT_MAX)
        return 0;
    p->link_stalled = 1;
    return 1;
}

/* Serves the whole lines the client sent, in order, while the guest runs,
 * the ring and the link have room and the client reads its replies. */
static void conn_lines(struct colo_proxy *p, struct conn *c)
{
    while (!c->dead && c->in.off < c->in.len && !conn_full(p, c)) {
        uint8_t *start = c->in.data + c->in.off;
        size_t avail = c->in.len - c->in.off;
        uint8_t *nl = memchr(start, '\n', avail);
        size_t len;
        if (nl == NULL) {
            if (avail > COLO_PX_LINE_MAX)
                conn_refuse(p, c);
            return;
        }
        len = (size_t)(nl - start);
        if (len && start[len - 1] == '\r')
            len--;
        if (len > COLO_PX_LINE_MAX) {
            conn_refuse(p, c);
            return;
        }
        if (p->st.last_seq - p->lo >= RING || link_backed_up(p) ||
            serve_line(p, c, start, (uint32_t)len) == COLO_E_PAUSED) {
            p->stalled = 1;
            return;
        }
        c->in.off += (size_t)(nl - start) + 1;
    }
}

/* Whether to read more of the client: not past its input or output bound. */
static int conn_wants_input(const struct conn *c)
{
    return !c->eof && c->in.len - c->in.off < CLIENT_BACKLOG && !c->paused;
}

static void conn_watch(struct colo_proxy *p, struct conn *c)
{
    uint32_t want = 0;
    if (conn_wants_input(c))
        want |= EPOLLIN;
    if (c->out.off < c->out.len)
        want |= EPOLLOUT;
    set_watch(p, c->fd, &c->watching, want, (uint64_t)(uintptr_t)c);
}

static void conn_readable(struct colo_proxy *p, struct conn *c)
{
    size_t got;
    int rc;
    if (!conn_wants_input(c))
        return;  /* an event of the batch that paused it: its watch changes at the settle */
    rc = colo_bytes_recv(&c->in, c->fd, COLO_PX_READ_CHUNK, &got);
    if (rc == COLO_E_EOF)
        c->eof = 1;
    else if (rc != COLO_OK)
        c->dead = 1;
    conn_lines(p, c);
    queue_send(p, c);
}

static void conn_new(struct colo_proxy *p, int fd)
{
    struct conn *c;
    if (p->st.clients >= MAX_CLIENTS || (c = calloc(1, sizeof(*c))) == NULL) {
        p->st.clients_refused++;
        close(fd);
        return;
    }
    c->fd = fd;
    c->watching = EPOLLIN;
    if (watch(p, EPOLL_CTL_ADD, fd, EPOLLIN, (uint64_t)(uintptr_t)c) != COLO_OK) {
        close(fd);
        free(c);
        return;
    }
    nodelay(fd);
    c->next = p->conns;
    if (p->conns)
        p->conns->prev = c;
    p->conns = c;
    p->st.clients++;
}

static void accept_all(struct colo_proxy *p)
{
    for (;;) {
        int fd = accept4(p->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            conn_new(p, fd);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK)  /* e.g. EMFILE: rest until the next sweep */
            set_watch(p, p->listen_fd, &p->listen_watching, 0, TAG_LISTEN);
        return;
    }
}

/* Closes a client; replies still owed to it are dropped (they stay in the
 * ring until released, so the comparison goes on). */
static void conn_close(struct colo_proxy *p, struct conn *c)
{
    struct entry *e = c->head, *next;
    for (; e != NULL; e = next) {
        next = e->next;
        e->conn = NULL;
        if (e->flags & F_RELEASABLE)
            free_entry(p, e);
    }
    close(c->fd);
    if (c->prev)
        c->prev->next = c->next;
    else
        p->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    colo_bytes_free(&c->in);
    colo_bytes_free(&c->out);
    p->st.clients--;
    free(c);
}

/* Writes what the clients on the send list are owed (they stay on it). */
static void send_queued(struct colo_proxy *p)
{
    for (struct conn *c = p->send_list; c != NULL; c = c->send_next)
        if (!c->dead && colo_bytes_send(&c->out, c->fd) != COLO_OK)
            c->dead = 1;
}

/* The loop's part, after writing: closes the finished clients and sets
 * what epoll watches of the others.  Only the loop closes a client, so an
 * epoll event it holds never names a freed one.  A paused client whose
 * backlog a write shrank enough goes on with the lines it sent, and stays
 * on the send list for their replies; returns 1 when one did. */
static int settle_clients(struct colo_proxy *p)
{
    struct conn *c, *next;
    int resumed = 0;
    send_queued(p);
    for (c = p->send_list, p->send_list = NULL; c != NULL; c = next) {
        next = c->send_next;
        c->queued = 0;
        if (conn_resumable(p, c)) {
            c->paused = 0;
            conn_lines(p, c);
            queue_send(p, c);
            resumed = 1;
        } else if (c->dead || (c->eof && c->head == NULL && c->out.off == c->out.len && c->in.off == c->in.len)) {
            conn_close(p, c);
        } else {
            conn_watch(p, c);
        }
    }
    return resumed;
}

/* Python's calls write at once and leave the rest to the loop. */
static void send_and_wake(struct colo_proxy *p)
{
    if (p->send_list == NULL)
        return;
    send_queued(p);
    wake(p);
}

/* ---- the link to the secondary ------------------------------------------- */

static void link_close(struct colo_proxy *p)
{
    if (p->link_fd >= 0)
        close(p->link_fd);
    p->link_fd = -1;
    p->link_watching = 0;
    if (p->link_stalled) {
        p->link_stalled = 0;
        p->retry_due = 1;  /* nothing to wait for any more */
    }
    colo_bytes_free(&p->link_in);
    colo_bytes_free(&p->link_out);
}

static void link_lost(struct colo_proxy *p, int code)
{
    struct colo_proxy_event ev = {.kind = COLO_PX_LINK_LOST, .code = code, .t_ns = colo_now_ns()};
    snprintf(ev.detail, sizeof(ev.detail), "%s", colo_last_error());
    link_close(p);
    push_event(p, &ev);
    tell_arm(p);
}

static void compare(struct colo_proxy *p, uint64_t seq, const uint8_t *reply, uint32_t len)
{
    struct entry *e = lookup(p, seq);
    if (e == NULL || (e->flags & (F_RELEASABLE | F_ANSWERED)))
        return;  /* released already (a checkpoint covered it, or unprotected) */
    e->flags |= F_ANSWERED;
    if (len == e->reply_len && memcmp(reply, e->reply, len) == 0) {
        releasable(p, e);
    } else {
        p->st.mismatches++;
        ask(p, e, COLO_PX_MISMATCH);
    }
}

static void link_readable(struct colo_proxy *p)
{
    size_t got;
    int have = 0, rc = colo_bytes_recv(&p->link_in, p->link_fd, COLO_PX_READ_CHUNK, &got);
    uint64_t seq;
    const uint8_t *reply;
    uint32_t len;
    if (rc != COLO_OK) {
        link_lost(p, rc);
        return;
    }
    while ((rc = colo_frame_next(&p->link_in, &have, &seq, &reply, &len)) == COLO_OK && have)
        compare(p, seq, reply, len);
    if (rc != COLO_OK)
        link_lost(p, rc);
}

static void link_flush(struct colo_proxy *p)
{
    int rc;
    if (p->link_fd < 0)
        return;
    if ((rc = colo_bytes_send(&p->link_out, p->link_fd)) != COLO_OK) {
        link_lost(p, rc);
        return;
    }
    if (p->link_stalled && p->link_out.len - p->link_out.off < LINK_OUT_MAX) {
        p->link_stalled = 0;
        p->retry_due = 1;  /* the clients it stalled go on */
    }
    set_watch(p, p->link_fd, &p->link_watching,
              EPOLLIN | (p->link_out.off < p->link_out.len ? EPOLLOUT : 0), TAG_LINK);
}

/* Replies the secondary did not answer within the timeout count as
 * diverged.  Requests are framed in seq order, so the scan stops at the
 * first one still in time. */
static void sweep(struct colo_proxy *p)
{
    uint64_t now = colo_now_ns(), seq;
    for (seq = p->lo + 1; seq <= p->st.last_seq; seq++) {
        struct entry *e = &p->ring[seq & (RING - 1)];
        if ((e->flags & (F_LIVE | F_SENT)) != (F_LIVE | F_SENT) || (e->flags & (F_ANSWERED | F_RELEASABLE | F_ASKED)))
            continue;
        if (now - e->sent_ns < p->reply_timeout_ns)
            break;
        p->st.timeouts++;
        ask(p, e, COLO_PX_TIMEOUT);
    }
    set_watch(p, p->listen_fd, &p->listen_watching, EPOLLIN, TAG_LISTEN);
}

/* ---- the loop ------------------------------------------------------------ */

static void dispatch(struct colo_proxy *p, const struct epoll_event *ev)
{
    switch (ev->data.u64) {
    case TAG_LISTEN:
        accept_all(p);
        return;
    case TAG_LINK:
        if (p->link_fd >= 0 && (ev->events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
            link_readable(p);
        return;
    case TAG_WAKE:
        drain_fd(p->wake_fd);
        return;
    case TAG_SWEEP:
        drain_fd(p->sweep_fd);
        sweep(p);
        return;
    case TAG_RETRY:
        drain_fd(p->retry_fd);
        p->retry_due = 1;
        p->retry_armed = 0;
        return;
    case TAG_RESUMED:
        drain_fd(p->resumed_fd);
        p->retry_due = 1;
        return;
    default: {
        struct conn *c = (struct conn *)(uintptr_t)ev->data.u64;
        if (ev->events & EPOLLIN)
            conn_readable(p, c);
        if (ev->events & (EPOLLERR | EPOLLHUP))
            c->dead = 1;  /* gone both ways: nobody to answer */
        queue_send(p, c);
    }
    }
}

/* After a batch: clients that waited go on, then everything is written
 * (again while clients resume: their lines make new replies and frames). */
static void settle(struct colo_proxy *p)
{
    link_flush(p);  /* room on the link first: a client it stalled goes on now */
    if (p->stalled && p->retry_due) {
        p->stalled = p->retry_due = 0;
        for (struct conn *c = p->conns; c != NULL; c = c->next) {
            conn_lines(p, c);
            queue_send(p, c);
        }
    }
    do
        link_flush(p);
    while (settle_clients(p));
    if (p->stalled && p->retry_due) {
        wake(p);  /* room came while settling: the next pass retries at once */
    } else if (p->stalled && !p->retry_armed) {
        arm(p->retry_fd, COLO_PX_PAUSED_RETRY_NS, 0);  /* in case the guest stays paused */
        p->retry_armed = 1;
    }
    /* A paused guest: the unpause wakes the loop, not a poll. */
    set_watch(p, p->resumed_fd, &p->resumed_watching, p->stalled && !p->retry_due ? EPOLLIN : 0, TAG_RESUMED);
}

/* Polls for poll_ns after the last batch before sleeping (colo.h says why). */
static int wait_events(struct colo_proxy *p, struct epoll_event *evs, int max)
{
    uint64_t until = p->poll_ns ? colo_now_ns() + p->poll_ns : 0;
    for (;;) {
        int n = epoll_wait(p->epfd, evs, max, 0);
        if (n != 0)
            return n;
        if (colo_now_ns() >= until)
            return epoll_wait(p->epfd, evs, max, -1);
        sched_yield();  /* whoever else is runnable goes first */
    }
}

static void *run(void *arg)
{
    struct colo_proxy *p = arg;
    struct epoll_event evs[64];
    for (;;) {
        int n = wait_events(p, evs, 64);
        if (n < 0 && errno != EINTR)
            break;  /* cannot happen with a valid epfd; free() still joins */
        pthread_mutex_lock(&p->mu);
        if (p->stop) {
            pthread_mutex_unlock(&p->mu);
            break;
        }
        for (int i = 0; i < n; i++)
            dispatch(p, &evs[i]);
        settle(p);
        pthread_mutex_unlock(&p->mu);
    }
    return NULL;
}

/* ---- Python's side ------------------------------------------------------- */

static int open_fds(struct colo_proxy *p)
{
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    p->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    p->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    p->sweep_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    p->retry_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (p->epfd < 0 || p->wake_fd < 0 || p->event_fd < 0 || p->sweep_fd < 0 || p->retry_fd < 0)
        return colo_fail_errno(COLO_E_IO, errno, "proxy: epoll, eventfd or timerfd");
    if (watch(p, EPOLL_CTL_ADD, p->wake_fd, EPOLLIN, TAG_WAKE) || watch(p, EPOLL_CTL_ADD, p->sweep_fd, EPOLLIN, TAG_SWEEP) ||
        watch(p, EPOLL_CTL_ADD, p->retry_fd, EPOLLIN, TAG_RETRY) ||
        watch(p, EPOLL_CTL_ADD, p->listen_fd, EPOLLIN, TAG_LISTEN) ||
        watch(p, EPOLL_CTL_ADD, p->resumed_fd, 0, TAG_RESUMED))
        return COLO_E_IO;
    p->listen_watching = EPOLLIN;
    arm(p->sweep_fd, p->reply_timeout_ns / 4, p->reply_timeout_ns / 4);
    return COLO_OK;
}

static int start_thread(struct colo_proxy *p)
{
    sigset_t all, old;
    int rc;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);  /* signals stay with Python's threads */
    rc = pthread_create(&p->thread, NULL, run, p);
    if (rc == 0)
        pthread_setname_np(p->thread, "colo-proxy");  /* top -H shows which thread is which */
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return colo_fail_errno(COLO_E_NOMEM, rc, "proxy thread");
    p->running = 1;
    return COLO_OK;
}

int colo_proxy_new(colo_domain *dom, int listen_fd, uint32_t reply_timeout_ms, uint32_t poll_us,
                   uint32_t output_max, colo_arm *arm, colo_proxy **out)
{
    struct colo_proxy *p;
    uint64_t last_seq = 0;
    int rc, resumed_fd = -1;
    *out = NULL;
    if (dom == NULL || listen_fd < 0 || reply_timeout_ms == 0)
        return colo_fail(COLO_E_INVAL, "proxy: a domain, a listening socket and a reply timeout > 0");
    if (output_max < COLO_PROXY_OUTPUT_MIN)
        return colo_fail(COLO_E_INVAL, "proxy: output bound of %u bytes (at least %d)", output_max,
                         COLO_PROXY_OUTPUT_MIN);
    if ((rc = colo_domain_need_guest_net(dom, "by the proxy")) != COLO_OK ||
        (rc = colo_domain_served_seq(dom, &last_seq)) != COLO_OK ||
        (rc = colo_domain_resumed_fd(dom, &resumed_fd)) != COLO_OK)
        return rc;
    if ((rc = nonblocking(listen_fd)) != COLO_OK)
        return rc;
    if ((p = calloc(1, sizeof(*p))) == NULL || (p->ring = calloc(RING, sizeof(*p->ring))) == NULL) {
        free(p);
        return colo_fail(COLO_E_NOMEM, "proxy of %u requests", RING);
    }
    pthread_mutex_init(&p->mu, NULL);
    p->dom = dom;
    p->listen_fd = listen_fd;
    p->resumed_fd = resumed_fd;
    p->link_fd = p->epfd = p->wake_fd = p->event_fd = p->sweep_fd = p->retry_fd = -1;
    p->reply_timeout_ns = (uint64_t)reply_timeout_ms * 1000000ULL;
    p->poll_ns = (uint64_t)poll_us * 1000ULL;
    p->output_max = output_max;
    p->unprotected = 1;
    p->lo = p->st.last_seq = p->st.covered = last_seq;  /* sequence numbers go on across failovers */
    p->arm = arm;
    tell_arm(p);  /* unprotected until attach */
    if ((rc = open_fds(p)) != COLO_OK || (rc = start_thread(p)) != COLO_OK) {
        p->listen_fd = -1;  /* still the caller's on failure */
        if (arm != NULL)
            colo_arm_comparing(arm, COLO_ARM_NO_COMPARER);  /* as it was: nobody compares */
        p->arm = NULL;
        colo_proxy_free(p);
        return rc;
    }
    *out = p;
    return COLO_OK;
}

static void close_fd(int fd)
{
    if (fd >= 0)
        close(fd);
}

void colo_proxy_free(colo_proxy *p)
{
    uint64_t one = 1;
    if (p == NULL)
        return;
    if (p->running) {
        pthread_mutex_lock(&p->mu);
        p->stop = 1;
        tell_arm(p);
        pthread_mutex_unlock(&p->mu);
        if (write(p->wake_fd, &one, sizeof(one)) < 0) {
            /* the eventfd cannot be full; the join below would show it */
        }
        pthread_join(p->thread, NULL);
    }
    while (p->conns)
        conn_close(p, p->conns);
    link_close(p);
    close_fd(p->listen_fd);
    close_fd(p->epfd);
    close_fd(p->wake_fd);
    close_fd(p->event_fd);
    close_fd(p->sweep_fd);
    close_fd(p->retry_fd);
    if (p->arm != NULL)
        colo_arm_released(p->arm, p->st.held);  /* they leave with the proxy */
    pthread_mutex_destroy(&p->mu);
    free(p->events);
    free(p->ring);
    free(p);
}

int colo_proxy_event_fd(const colo_proxy *p) { return p->event_fd; }

int colo_proxy_attach(colo_proxy *p, int link_fd)
{
    int rc;
    if (link_fd < 0)
        return colo_fail(COLO_E_INVAL, "proxy: no link socket");
    if ((rc = nonblocking(link_fd)) != COLO_OK)
        return rc;
    pthread_mutex_lock(&p->mu);
    link_close(p);
    if ((rc = watch(p, EPOLL_CTL_ADD, link_fd, EPOLLIN, TAG_LINK)) == COLO_OK) {
        nodelay(link_fd);
        p->link_fd = link_fd;
        p->link_watching = EPOLLIN;
        p->unprotected = 0;
    }
    tell_arm(p);
    pthread_mutex_unlock(&p->mu);
    return rc;
}

void colo_proxy_detach(colo_proxy *p)
{
    pthread_mutex_lock(&p->mu);
    link_close(p);
    tell_arm(p);
    pthread_mutex_unlock(&p->mu);
}

void colo_proxy_unprotect(colo_proxy *p, uint64_t *released)
{
    uint64_t n = 0;
    pthread_mutex_lock(&p->mu);
    p->unprotected = 1;
    tell_arm(p);
    for (uint64_t seq = p->lo + 1; seq <= p->st.last_seq; seq++) {
        struct entry *e = &p->ring[seq & (RING - 1)];
        if ((e->flags & F_LIVE) && !(e->flags & F_RELEASABLE)) {
            n++;
            releasable(p, e);
        }
    }
    send_and_wake(p);
    pthread_mutex_unlock(&p->mu);
    *released = n;
}

void colo_proxy_checkpoint_done(colo_proxy *p, uint64_t epoch, uint64_t last_seq)
{
    uint64_t now = colo_now_ns();
    pthread_mutex_lock(&p->mu);
    if (last_seq > p->st.covered)
        p->st.covered = last_seq;
    for (uint64_t seq = p->lo + 1; seq <= p->st.last_seq && seq <= p->st.covered; seq++) {
        struct entry *e = &p->ring[seq & (RING - 1)];
        if (!(e->flags & F_LIVE) || (e->flags & F_RELEASABLE))
            continue;
        if (e->flags & F_ASKED) {
            /* The release rule, on the record: tests check it against the sync points. */
            struct colo_proxy_event ev = {.kind = COLO_PX_RELEASE, .seq = seq, .epoch = epoch, .t_ns = now};
            push_event(p, &ev);
        }
        releasable(p, e);
    }
    send_and_wake(p);
    pthread_mutex_unlock(&p->mu);
}

void colo_proxy_events(colo_proxy *p, struct colo_proxy_event *out, uint64_t cap, uint64_t *n)
{
    uint64_t take;
    pthread_mutex_lock(&p->mu);
    drain_fd(p->event_fd);
    take = p->nevents < cap ? p->nevents : cap;
    memcpy(out, p->events, take * sizeof(*out));
    memmove(p->events, p->events + take, (p->nevents - take) * sizeof(*out));
    p->nevents -= take;
    if (p->nevents) {
        uint64_t one = 1;
        if (write(p->event_fd, &one, sizeof(one)) < 0)
            p->st.events_lost++;
    }
    pthread_mutex_unlock(&p->mu);
    *n = take;
}

void colo_proxy_stats(colo_proxy *p, struct colo_proxy_stats *out)
{
    pthread_mutex_lock(&p->mu);
    *out = p->st;
    out->clients_paused = out->output_bytes = 0;
    for (struct conn *c = p->conns; c != NULL; c = c->next) {  /* twice a second, a few thousand at most */
        out->clients_paused += (uint64_t)c->paused;
        out->output_bytes += conn_backlog(c);
    }
    pthread_mutex_unlock(&p->mu);
}
