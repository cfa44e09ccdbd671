/* arm.c - the armed checkpoint (colo.h has the contract).  The checkpoint
 * side owns it: the agent arms an epoch and waits here; output comparers
 * (the sim proxy, proxy.c) only report into it, as QEMU's colo-compare
 * notifies migration/colo.c rather than drive the checkpoint.  Its own
 * mutex: a comparer reports while it holds its own lock, and the arm never
 * calls out, so that lock order cannot turn round. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

struct colo_arm {
    pthread_mutex_t mu;
    pthread_cond_t changed;    /* an await waits on it */
    uint64_t held;             /* diverged outputs not released yet */
    uint64_t seq;              /* the newest divergence, and why */
    uint32_t reason;
    uint64_t fire_token;       /* colo_arm_fire: the armed checkpoint of this token starts now */
    uint64_t disarm_token;     /* colo_arm_disarm: ... ends without a checkpoint */
    char stopped[96];          /* why no divergence can come now ("": a comparer compares) */
};

/* The await's deadline is on CLOCK_MONOTONIC, as every other time here. */
static int cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t attr;
    int rc = pthread_condattr_init(&attr);
    if (rc == 0 && (rc = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)) == 0)
        rc = pthread_cond_init(cv, &attr);
    pthread_condattr_destroy(&attr);
    return rc == 0 ? COLO_OK : colo_fail_errno(COLO_E_NOMEM, rc, "arm: condition variable");
}

int colo_arm_new(colo_arm **out)
{
    struct colo_arm *a;
    int rc;
    *out = NULL;
    if ((a = calloc(1, sizeof(*a))) == NULL)
        return colo_fail(COLO_E_NOMEM, "arm");
    if ((rc = cond_init(&a->changed)) != COLO_OK) {
        free(a);
        return rc;
    }
    pthread_mutex_init(&a->mu, NULL);
    snprintf(a->stopped, sizeof(a->stopped), "%s", COLO_ARM_NO_COMPARER);
    *out = a;
    return COLO_OK;
}

void colo_arm_free(colo_arm *a)
{
    if (a == NULL)
        return;
    pthread_cond_destroy(&a->changed);
    pthread_mutex_destroy(&a->mu);
    free(a);
}

/* ---- what comparers report ------------------------------------------------- */

void colo_arm_diverged(colo_arm *a, uint64_t seq, uint32_t reason)
{
    pthread_mutex_lock(&a->mu);
    a->held++;
    a->seq = seq;
    a->reason = reason;
    pthread_cond_broadcast(&a->changed);  /* an armed checkpoint starts at once */
    pthread_mutex_unlock(&a->mu);
}

void colo_arm_released(colo_arm *a, uint64_t n)
{
    pthread_mutex_lock(&a->mu);
    a->held = n < a->held ? a->held - n : 0;
    pthread_mutex_unlock(&a->mu);
}

void colo_arm_comparing(colo_arm *a, const char *stopped)
{
    pthread_mutex_lock(&a->mu);
    snprintf(a->stopped, sizeof(a->stopped), "%s", stopped ? stopped : "");
    pthread_cond_broadcast(&a->changed);
    pthread_mutex_unlock(&a->mu);
}

/* ---- the checkpoint side ------------------------------------------------------ */

/* Why an await ends now, or 0 to wait on; *rc is set when it ends without a checkpoint. */
static uint32_t outcome(struct colo_arm *a, uint64_t token, int *rc)
{
    if (a->stopped[0] || a->disarm_token == token) {
        *rc = colo_fail(COLO_E_DISARMED, "armed checkpoint %llu: %s", (unsigned long long)token,
                        a->stopped[0] ? a->stopped : "disarmed");
        return COLO_ARM_NONE;
    }
    if (a->held)
        return COLO_ARM_DIVERGENCE;
    if (a->fire_token == token)
        return COLO_ARM_FIRED;
    return 0;
}

static struct timespec deadline(uint32_t timeout_ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    return until;
}

int colo_arm_await(colo_arm *a, uint64_t token, uint32_t timeout_ms, struct colo_arm_result *out)
{
    struct timespec until;
    int rc = COLO_OK, waited = 0;
    memset(out, 0, sizeof(*out));
    if (token == 0)
        return colo_fail(COLO_E_INVAL, "armed checkpoint: token 0");
    until = deadline(timeout_ms);
    pthread_mutex_lock(&a->mu);
    while ((out->why = outcome(a, token, &rc)) == 0 && rc == COLO_OK) {
        if (waited == ETIMEDOUT) {
            out->why = COLO_ARM_TIMER;
            break;
        }
        waited = pthread_cond_timedwait(&a->changed, &a->mu, &until);
    }
    out->seq = a->seq;
    out->reason = a->reason;
    pthread_mutex_unlock(&a->mu);
    out->t_ns = colo_now_ns();
    return rc;
}

static void signal_token(colo_arm *a, uint64_t *slot, uint64_t token)
{
    pthread_mutex_lock(&a->mu);
    *slot = token;
    pthread_cond_broadcast(&a->changed);
    pthread_mutex_unlock(&a->mu);
}

void colo_arm_fire(colo_arm *a, uint64_t token) { signal_token(a, &a->fire_token, token); }

void colo_arm_disarm(colo_arm *a, uint64_t token) { signal_token(a, &a->disarm_token, token); }
