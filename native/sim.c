/* sim.c - the simulated domain: N pages of real memory and a vCPU thread in
 * C that writes pages at a configured rate and pattern from a per-host
 * random stream.  Guest memory is reached through a page table (pfn ->
 * page), the sim's p2m, so a committed checkpoint swaps pages in without
 * copying them. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define SIM_MAX_PAGES ((uint64_t)1 << 24)     /* 64 GiB */
#define SIM_MAX_RATE 1000000000ULL
#define SIM_TICK_NS 1000000L                  /* the vCPU wakes every 1 ms */
#define SIM_CONTEXT_REGS 32

/* The vCPU context blob: what a guest keeps in its registers. */
struct sim_context {
    uint64_t regs[SIM_CONTEXT_REGS];
};

enum { REG_RIP = 0, REG_WRITES = 1, REG_LAST_PFN = 2, REG_LAST_VALUE = 3, REG_ROLLING = 4 };

struct sim {
    struct colo_sim_config cfg;
    pthread_t vcpu;
    pthread_mutex_t mu;          /* guards everything below against the vCPU */
    pthread_cond_t wake;
    int running;                 /* not paused */
    int gone;                    /* destroyed (colo_sim_destroy): never runs again */
    int stop;
    int logdirty;
    uint8_t **page;              /* the page table */
    colo_bitmap *dirty;
    struct sim_context ctx;
    uint64_t rng;                /* the host's random stream, not guest state */
    uint64_t writes;             /* total page writes, for tests */
    int resumed_fd;              /* eventfd written at every unpause: a waiting proxy goes on at once */
    double owed;                 /* fractional writes carried between ticks */
    struct timespec last;
};

static struct sim *sim_of(colo_domain *dom) { return dom->priv; }

/* What every backend call on a destroyed domain answers. */
static int gone_error(void) { return colo_fail(COLO_E_NOT_FOUND, "the sim domain was destroyed"); }

static uint64_t next_random(uint64_t *s)
{
    /* xorshift64*: fast, good enough to spread writes. */
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static double seconds_between(const struct timespec *a, const struct timespec *b)
{
    return (double)(b->tv_sec - a->tv_sec) + (double)(b->tv_nsec - a->tv_nsec) / 1e9;
}

static uint64_t pick_pfn(struct sim *s)
{
    uint64_t base = s->cfg.service_pages, span = s->cfg.pages - base;
    uint64_t r = next_random(&s->rng);
    if (s->cfg.pattern == COLO_PATTERN_HOTSET && (r >> 32) % 100 < s->cfg.hot_percent) {
        uint64_t hot = s->cfg.hot_pages < span ? s->cfg.hot_pages : span;
        return base + (r & 0xffffffffULL) % (hot ? hot : 1);
    }
    return base + r % span;
}

/* One guest store into page pfn; called with mu held. */
static void store(struct sim *s, uint64_t pfn, uint64_t r)
{
    uint64_t value = (s->ctx.regs[REG_WRITES] + 1) * 0x9E3779B97F4A7C15ULL ^ pfn;
    memcpy(s->page[pfn] + (r % (COLO_PAGE_SIZE / 8)) * 8, &value, 8);
    if (s->logdirty)
        s->dirty->words[pfn / 64] |= (uint64_t)1 << (pfn % 64);
    s->ctx.regs[REG_RIP] += 4;
    s->ctx.regs[REG_WRITES]++;
    s->ctx.regs[REG_LAST_PFN] = pfn;
    s->ctx.regs[REG_LAST_VALUE] = value;
    s->ctx.regs[REG_ROLLING + s->ctx.regs[REG_WRITES] % (SIM_CONTEXT_REGS - REG_ROLLING)] ^= value;
    s->writes++;
}

/* One guest store: 8 bytes somewhere in a random page, noted in the dirty log. */
static void guest_write(struct sim *s)
{
    uint64_t pfn = pick_pfn(s);
    store(s, pfn, next_random(&s->rng));
}

/* Writes what the rate owes since the last tick; called with mu held. */
static void run_tick(struct sim *s)
{
    struct timespec now;
    uint64_t due;
    clock_gettime(CLOCK_MONOTONIC, &now);
    s->owed += (double)s->cfg.rate * seconds_between(&s->last, &now);
    s->last = now;
    due = (uint64_t)s->owed;
    if (due > s->cfg.rate / 10 + 1)  /* never burst more than 100 ms worth */
        due = s->cfg.rate / 10 + 1;
    s->owed -= (double)due;
    if (s->owed > (double)s->cfg.rate)
        s->owed = 0;
    while (due--)
        guest_write(s);
}

static void *vcpu_main(void *arg)
{
    struct sim *s = arg;
    struct timespec tick = {0, SIM_TICK_NS};
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        if (!s->running || s->cfg.rate == 0 || s->cfg.service_pages >= s->cfg.pages) {
            pthread_cond_wait(&s->wake, &s->mu);
            continue;
        }
        run_tick(s);
        pthread_mutex_unlock(&s->mu);
        nanosleep(&tick, NULL);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- backend ops -------------------------------------------------------- */

static void sim_close(colo_domain *dom)
{
    struct sim *s = sim_of(dom);
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->vcpu, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->wake);
    colo_bitmap_free(s->dirty);
    close(s->resumed_fd);
    free(s->page);
    free(s);
}

static int sim_pause(colo_domain *dom)
{
    struct sim *s = sim_of(dom);
    /* Once we hold mu the vCPU is between ticks; it checks running first. */
    int gone;
    pthread_mutex_lock(&s->mu);
    s->running = 0;
    gone = s->gone;
    pthread_mutex_unlock(&s->mu);
    return gone ? gone_error() : COLO_OK;
}

static int sim_unpause(colo_domain *dom)
{
    struct sim *s = sim_of(dom);
    uint64_t one = 1;
    pthread_mutex_lock(&s->mu);
    if (s->gone) {
        pthread_mutex_unlock(&s->mu);
        return gone_error();
    }
    s->running = 1;
    s->owed = 0;
    clock_gettime(CLOCK_MONOTONIC, &s->last);
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
    if (write(s->resumed_fd, &one, sizeof(one)) < 0) {
        /* a full eventfd is already readable: the waiter wakes all the same */
    }
    return COLO_OK;
}

static int sim_logdirty(colo_domain *dom, int on)
{
    struct sim *s = sim_of(dom);
    pthread_mutex_lock(&s->mu);
    s->logdirty = on;
    if (!on)
        colo_bitmap_clear_all(s->dirty);
    pthread_mutex_unlock(&s->mu);
    return COLO_OK;
}

static int sim_logdirty_enable(colo_domain *dom) { return sim_logdirty(dom, 1); }
static int sim_logdirty_disable(colo_domain *dom) { return sim_logdirty(dom, 0); }

static int sim_dirty_read_clear(colo_domain *dom, colo_bitmap *out)
{
    struct sim *s = sim_of(dom);
    int rc = COLO_OK;
    pthread_mutex_lock(&s->mu);
    if (s->gone) {
        rc = gone_error();
    } else if (!s->logdirty) {
        rc = colo_fail(COLO_E_INVAL, "dirty log read before log-dirty was enabled");
    } else {
        memcpy(out->words, s->dirty->words, out->nwords * sizeof(uint64_t));
        colo_bitmap_clear_all(s->dirty);
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static int sim_context_get(colo_domain *dom, uint8_t *buf, uint64_t cap, uint64_t *len)
{
    struct sim *s = sim_of(dom);
    if (cap < sizeof(s->ctx))
        return colo_fail(COLO_E_INVAL, "context buffer of %llu bytes, need %zu",
                         (unsigned long long)cap, sizeof(s->ctx));
    int gone;
    pthread_mutex_lock(&s->mu);
    memcpy(buf, &s->ctx, sizeof(s->ctx));
    gone = s->gone;
    pthread_mutex_unlock(&s->mu);
    *len = sizeof(s->ctx);
    return gone ? gone_error() : COLO_OK;
}

static int sim_context_check(colo_domain *dom, const uint8_t *buf, uint64_t len)
{
    COLO_UNUSED(dom);
    COLO_UNUSED(buf);
    if (len != sizeof(struct sim_context))
        return colo_fail(COLO_E_INVAL, "sim context is %zu bytes, got %llu",
                         sizeof(struct sim_context), (unsigned long long)len);
    return COLO_OK;
}

static int sim_context_set(colo_domain *dom, const uint8_t *buf, uint64_t len)
{
    struct sim *s = sim_of(dom);
    int rc = sim_context_check(dom, buf, len);
    if (rc)
        return rc;
    pthread_mutex_lock(&s->mu);
    if (!s->gone)
        memcpy(&s->ctx, buf, sizeof(s->ctx));
    rc = s->gone;
    pthread_mutex_unlock(&s->mu);
    return rc ? gone_error() : COLO_OK;
}

static int sim_map(colo_domain *dom, const uint64_t *pfns, uint64_t n, int writable,
                   struct colo_mapping *m)
{
    struct sim *s = sim_of(dom);
    COLO_UNUSED(writable);
    if (__atomic_load_n(&s->gone, __ATOMIC_ACQUIRE))  /* maps run without mu */
        return gone_error();
    for (uint64_t i = 0; i < n; i++)
        m->ptrs[i] = s->page[pfns[i]];
    m->n = n;
    m->handle = NULL;
    return COLO_OK;
}

static void sim_unmap(colo_domain *dom, struct colo_mapping *m)
{
    COLO_UNUSED(dom);
    m->n = 0;
}

/* The staged page becomes guest memory; the old guest page becomes the
 * slot's spare buffer for the next checkpoint. */
static int sim_commit_pages(colo_domain *dom)
{
    struct sim *s = sim_of(dom);
    struct colo_staging *st = &dom->staging;
    pthread_mutex_lock(&s->mu);
    for (uint64_t i = 0; i < st->n; i++) {
        uint8_t *old = s->page[st->pfns[i]];
        s->page[st->pfns[i]] = st->slots[i];
        st->slots[i] = old;
    }
    pthread_mutex_unlock(&s->mu);
    return COLO_OK;
}

static int sim_present(colo_domain *dom, int *present)
{
    struct sim *s = sim_of(dom);
    pthread_mutex_lock(&s->mu);
    *present = !s->gone;
    pthread_mutex_unlock(&s->mu);
    return COLO_OK;
}

/* The guest network hooks' wake-up: written at every unpause. */
static int sim_resumed_fd(const colo_domain *dom) { return ((const struct sim *)dom->priv)->resumed_fd; }

/* What both kinds of sim domain do; only the guest network differs. */
#define SIM_OPS                                  \
    .name = "sim",                               \
    .type = COLO_DOMTYPE_SIM,                    \
    .close = sim_close,                          \
    .pause = sim_pause,                          \
    .unpause = sim_unpause,                      \
    .logdirty_enable = sim_logdirty_enable,      \
    .logdirty_disable = sim_logdirty_disable,    \
    .dirty_read_clear = sim_dirty_read_clear,    \
    .context_get = sim_context_get,              \
    .context_set = sim_context_set,              \
    .context_check = sim_context_check,          \
    .map = sim_map,                              \
    .unmap = sim_unmap,                          \
    .commit_pages = sim_commit_pages,            \
    .present = sim_present

/* A sim domain with COLO_SIM_SERVICE_MIN_PAGES service pages or more:
 * its key-value service (service.c) is the guest's network endpoint. */
static const struct colo_backend_ops sim_ops = {
    SIM_OPS,
    .serve = colo_sim_service,
    .served_seq = colo_sim_service_seq,
    .resumed_fd = sim_resumed_fd,
};

/* With fewer it runs no service, so it has no network endpoint: a proxy
 * or mirror on it is refused, rather than answering every request with an
 * error. */
static const struct colo_backend_ops sim_ops_no_service = {
    SIM_OPS,
    .no_guest_net = "this sim domain runs no guest service: open it with 2 or more service pages",
};

static int is_sim(const colo_domain *dom) { return dom->ops == &sim_ops || dom->ops == &sim_ops_no_service; }

static const struct colo_backend_ops sim_unstarted_ops = {.name = "sim", .type = COLO_DOMTYPE_SIM};

/* ---- open --------------------------------------------------------------- */

static int check_config(const struct colo_sim_config *c)
{
    if (c->pages == 0 || c->pages > SIM_MAX_PAGES)
        return colo_fail(COLO_E_INVAL, "sim pages %llu out of range 1..%llu",
                         (unsigned long long)c->pages, (unsigned long long)SIM_MAX_PAGES);
    if (c->rate > SIM_MAX_RATE)
        return colo_fail(COLO_E_INVAL, "sim rate %llu pages/s past %llu",
                         (unsigned long long)c->rate, SIM_MAX_RATE);
    if (c->pattern != COLO_PATTERN_UNIFORM && c->pattern != COLO_PATTERN_HOTSET)
        return colo_fail(COLO_E_INVAL, "sim pattern %u unknown (0 uniform, 1 hotset)", c->pattern);
    if (c->hot_percent > 100 || c->hot_pages > c->pages)
        return colo_fail(COLO_E_INVAL, "hot set of %llu pages at %u%% does not fit",
                         (unsigned long long)c->hot_pages, c->hot_percent);
    if (c->divergence_ppm > 1000000)
        return colo_fail(COLO_E_INVAL, "divergence %u ppm past 1000000", c->divergence_ppm);
    if (c->service_pages >= c->pages)
        return colo_fail(COLO_E_INVAL, "service pages %llu leave no guest memory of %llu",
                         (unsigned long long)c->service_pages, (unsigned long long)c->pages);
    return COLO_OK;
}

/* Deterministic initial contents that differ by seed, so two domains are
 * equal only once one was copied to the other. */
static void fill_initial(uint8_t *mem, uint64_t pages, uint64_t seed)
{
    uint64_t *w = (uint64_t *)mem, words = pages * (COLO_PAGE_SIZE / 8);
    for (uint64_t i = 0; i < words; i++)
        w[i] = (i + seed) * 0xD6E8FEB86659FD93ULL;
}

static int sim_init(struct sim *s, colo_domain *dom, const struct colo_sim_config *cfg)
{
    uint8_t *mem;
    int rc;
    s->cfg = *cfg;
    s->rng = cfg->seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL;
    if (s->rng == 0)
        s->rng = 1;
    if ((rc = colo_bitmap_new(cfg->pages, &s->dirty)) != COLO_OK)
        return rc;
    if ((s->resumed_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0)
        return colo_fail_errno(COLO_E_IO, errno, "sim resume eventfd");
    if ((s->page = malloc(cfg->pages * sizeof(*s->page))) == NULL)
        return colo_fail(COLO_E_NOMEM, "sim page table");
    if ((rc = colo_domain_alloc_pages(dom, cfg->pages, &mem)) != COLO_OK)
        return rc;
    fill_initial(mem, cfg->pages, cfg->seed);
    for (uint64_t i = 0; i < cfg->pages; i++)
        s->page[i] = mem + i * COLO_PAGE_SIZE;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    if ((rc = pthread_create(&s->vcpu, NULL, vcpu_main, s)) == 0)
        pthread_setname_np(s->vcpu, "colo-vcpu");  /* top -H shows which thread is which */
    if (rc != 0) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->wake);
        return colo_fail_errno(COLO_E_NOMEM, rc, "starting the sim vCPU thread");
    }
    return COLO_OK;
}

int colo_sim_open(const struct colo_sim_config *cfg, colo_domain **out)
{
    colo_domain *dom;
    struct sim *s;
    int rc;
    if (cfg == NULL || out == NULL)
        return colo_fail(COLO_E_INVAL, "colo_sim_open: NULL argument");
    if ((rc = check_config(cfg)) != COLO_OK)
        return rc;
    dom = calloc(1, sizeof(*dom));
    s = calloc(1, sizeof(*s));
    if (dom == NULL || s == NULL) {
        free(dom);
        free(s);
        return colo_fail(COLO_E_NOMEM, "sim domain");
    }
    /* Until the vCPU thread runs, close must not try to stop it. */
    rc = colo_domain_init(dom, &sim_unstarted_ops, cfg->pages, s);
    if (rc == COLO_OK)
        rc = sim_init(s, dom, cfg);
    if (rc) {
        colo_bitmap_free(s->dirty);
        if (s->resumed_fd > 0)
            close(s->resumed_fd);
        free(s->page);
        free(s);
        dom->priv = NULL;
        colo_domain_close(dom);
        return rc;
    }
    dom->ops = cfg->service_pages >= COLO_SIM_SERVICE_MIN_PAGES ? &sim_ops : &sim_ops_no_service;
    dom->paused = 1;  /* a new domain starts paused, as xl create -p does */
    *out = dom;
    return COLO_OK;
}

int colo_sim_dirty(colo_domain *dom, const colo_bitmap *pages)
{
    struct sim *s;
    if (!is_sim(dom))
        return colo_fail(COLO_E_UNSUPPORTED, "only a sim domain can be told which pages to dirty");
    if (pages->nbits != dom->pages)
        return colo_fail(COLO_E_INVAL, "page set of %llu bits for a domain of %llu pages",
                         (unsigned long long)pages->nbits, (unsigned long long)dom->pages);
    s = dom->priv;
    pthread_mutex_lock(&s->mu);
    for (uint64_t w = 0; w < pages->nwords; w++)
        for (uint64_t bits = pages->words[w]; bits; bits &= bits - 1)
            store(s, w * 64 + (uint64_t)__builtin_ctzll(bits), next_random(&s->rng));
    pthread_mutex_unlock(&s->mu);
    return COLO_OK;
}

int colo_sim_destroy(colo_domain *dom)
{
    struct sim *s;
    if (!is_sim(dom))
        return colo_fail(COLO_E_UNSUPPORTED, "only a sim domain can be destroyed here (xl destroy a Xen one)");
    s = dom->priv;
    pthread_mutex_lock(&s->mu);
    __atomic_store_n(&s->gone, 1, __ATOMIC_RELEASE);
    s->running = 0;
    pthread_mutex_unlock(&s->mu);
    return COLO_OK;
}

uint64_t colo_sim_writes(const colo_domain *dom)
{
    const struct sim *s;
    if (!is_sim(dom))
        return 0;
    s = dom->priv;
    return s->writes;
}

/* ---- what the guest service (service.c) reaches -------------------------- */

int colo_sim_enter(colo_domain *dom, int need_running)
{
    struct sim *s;
    if (!is_sim(dom))
        return colo_fail(COLO_E_UNSUPPORTED, "the guest service runs in sim domains only");
    s = dom->priv;
    pthread_mutex_lock(&s->mu);
    if (need_running && !s->running) {
        /* A destroyed guest answers nothing, as a paused one that never resumes. */
        pthread_mutex_unlock(&s->mu);
        return colo_fail(COLO_E_PAUSED, s->gone ? "the guest was destroyed" : "the guest is paused");
    }
    return COLO_OK;
}

void colo_sim_leave(colo_domain *dom) { pthread_mutex_unlock(&sim_of(dom)->mu); }
uint8_t *colo_sim_page(colo_domain *dom, uint64_t pfn) { return sim_of(dom)->page[pfn]; }
uint64_t colo_sim_random(colo_domain *dom) { return next_random(&sim_of(dom)->rng); }
uint64_t colo_sim_service_pages(const colo_domain *dom) { return ((struct sim *)dom->priv)->cfg.service_pages; }
uint32_t colo_sim_divergence_ppm(const colo_domain *dom) { return ((struct sim *)dom->priv)->cfg.divergence_ppm; }

void colo_sim_touch(colo_domain *dom, uint64_t pfn)
{
    struct sim *s = sim_of(dom);
    if (s->logdirty)
        s->dirty->words[pfn / 64] |= (uint64_t)1 << (pfn % 64);
}
