/* nettable.c - the NIC proxy's bounded flow table: a chained hash table
 * with a use order, so the bound evicts the least recently used entry
 * that is idle (counted), never one still holding output. */
#include <stdlib.h>
#include <string.h>

#include "netproxy_internal.h"

#define NP_EVICT_LOOKS 16   /* entries looked at for an idle one at the bound */

int np_table_init(struct np_table *t, uint32_t max, uint32_t entry_size, np_idle_fn idle,
                  np_free_fn on_free, void *ctx)
{
    uint32_t n = 64;
    memset(t, 0, sizeof(*t));
    if (max == 0 || entry_size < sizeof(struct np_entry))
        return colo_fail(COLO_E_INVAL, "flow table: a bound of at least 1 entry");
    while (n < max && n < (1u << 24))
        n <<= 1;
    if ((t->buckets = calloc(n, sizeof(*t->buckets))) == NULL)
        return colo_fail(COLO_E_NOMEM, "flow table of %u buckets", n);
    t->nbuckets = n;
    t->max = max;
    t->entry_size = entry_size;
    t->idle = idle;
    t->on_free = on_free;
    t->ctx = ctx;
    return COLO_OK;
}

static void lru_unlink(struct np_table *t, struct np_entry *e)
{
    if (e->lprev) e->lprev->lnext = e->lnext; else t->lru = e->lnext;
    if (e->lnext) e->lnext->lprev = e->lprev; else t->mru = e->lprev;
    e->lprev = e->lnext = NULL;
}

static void lru_push(struct np_table *t, struct np_entry *e)
{
    e->lprev = t->mru;
    e->lnext = NULL;
    if (t->mru) t->mru->lnext = e; else t->lru = e;
    t->mru = e;
}

void np_table_destroy(struct np_table *t)
{
    while (t->lru != NULL)
        np_table_remove(t, t->lru);
    free(t->buckets);
    t->buckets = NULL;
}

struct np_entry *np_table_find(struct np_table *t, const struct np_key *k)
{
    struct np_entry *e = t->buckets[np_key_hash(k) & (t->nbuckets - 1)];
    while (e != NULL && !np_key_eq(&e->key, k))
        e = e->hnext;
    if (e != NULL && e != t->mru) {
        lru_unlink(t, e);
        lru_push(t, e);
    }
    return e;
}

void np_table_remove(struct np_table *t, struct np_entry *e)
{
    struct np_entry **pp = &t->buckets[np_key_hash(&e->key) & (t->nbuckets - 1)];
    while (*pp != NULL && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp == e)
        *pp = e->hnext;
    lru_unlink(t, e);
    t->count--;
    if (t->on_free)
        t->on_free(e, t->ctx);
    free(e);
}

static int evict_one(struct np_table *t)
{
    struct np_entry *e = t->lru;
    for (int i = 0; e != NULL && i < NP_EVICT_LOOKS; i++, e = e->lnext) {
        if (t->idle == NULL || t->idle(e)) {
            np_table_remove(t, e);
            t->evicted++;
            return 1;
        }
    }
    return 0;
}

struct np_entry *np_table_get(struct np_table *t, const struct np_key *k, int *created)
{
    struct np_entry *e = np_table_find(t, k);
    uint32_t b;
    *created = 0;
    if (e != NULL)
        return e;
    if (t->count >= t->max && !evict_one(t))
        return NULL;
    if ((e = calloc(1, t->entry_size)) == NULL)
        return NULL;
    e->key = *k;
    b = np_key_hash(k) & (t->nbuckets - 1);
    e->hnext = t->buckets[b];
    t->buckets[b] = e;
    lru_push(t, e);
    t->count++;
    *created = 1;
    return e;
}
