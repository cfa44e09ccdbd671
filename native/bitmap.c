/* bitmap.c - dirty page sets, one bit a pfn, worked on a 64-bit word at a time. */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static uint64_t words_for(uint64_t nbits) { return (nbits + 63) / 64; }

int colo_bitmap_new(uint64_t nbits, colo_bitmap **out)
{
    colo_bitmap *bm;
    if (out == NULL || nbits == 0 || nbits > ((uint64_t)1 << 40))
        return colo_fail(COLO_E_INVAL, "bitmap size %llu out of range (1 .. 2^40 bits)",
                         (unsigned long long)nbits);
    bm = calloc(1, sizeof(*bm));
    if (bm == NULL)
        return colo_fail(COLO_E_NOMEM, "bitmap header");
    bm->nbits = nbits;
    bm->nwords = words_for(nbits);
    bm->words = calloc(bm->nwords, sizeof(uint64_t));
    if (bm->words == NULL) {
        free(bm);
        return colo_fail(COLO_E_NOMEM, "bitmap of %llu bits", (unsigned long long)nbits);
    }
    *out = bm;
    return COLO_OK;
}

void colo_bitmap_free(colo_bitmap *bm)
{
    if (bm == NULL)
        return;
    free(bm->words);
    free(bm);
}

uint64_t colo_bitmap_size(const colo_bitmap *bm) { return bm->nbits; }

void colo_bitmap_clear_all(colo_bitmap *bm) { memset(bm->words, 0, bm->nwords * sizeof(uint64_t)); }

int colo_bitmap_set(colo_bitmap *bm, uint64_t bit)
{
    if (bit >= bm->nbits)
        return colo_fail(COLO_E_PFN_RANGE, "bit %llu past bitmap size %llu",
                         (unsigned long long)bit, (unsigned long long)bm->nbits);
    bm->words[bit / 64] |= (uint64_t)1 << (bit % 64);
    return COLO_OK;
}

int colo_bitmap_test(const colo_bitmap *bm, uint64_t bit)
{
    if (bit >= bm->nbits)
        return -1;
    return (int)((bm->words[bit / 64] >> (bit % 64)) & 1);
}

uint64_t colo_bitmap_count(const colo_bitmap *bm)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < bm->nwords; i++)
        n += (uint64_t)__builtin_popcountll(bm->words[i]);
    return n;
}

static int same_size(const colo_bitmap *a, const colo_bitmap *b)
{
    if (a->nbits == b->nbits)
        return COLO_OK;
    return colo_fail(COLO_E_INVAL, "bitmap sizes differ: %llu and %llu bits",
                     (unsigned long long)a->nbits, (unsigned long long)b->nbits);
}

int colo_bitmap_union(colo_bitmap *dst, const colo_bitmap *a, const colo_bitmap *b)
{
    int rc = same_size(dst, a);
    if (rc == COLO_OK)
        rc = same_size(dst, b);
    if (rc)
        return rc;
    for (uint64_t i = 0; i < dst->nwords; i++)
        dst->words[i] = a->words[i] | b->words[i];
    return COLO_OK;
}

int colo_bitmap_copy(colo_bitmap *dst, const colo_bitmap *src)
{
    int rc = same_size(dst, src);
    if (rc)
        return rc;
    memcpy(dst->words, src->words, dst->nwords * sizeof(uint64_t));
    return COLO_OK;
}

int colo_bitmap_equal(const colo_bitmap *a, const colo_bitmap *b)
{
    return a->nbits == b->nbits && memcmp(a->words, b->words, a->nwords * sizeof(uint64_t)) == 0;
}

int colo_bitmap_set_pfns(colo_bitmap *bm, const uint64_t *pfns, uint64_t n)
{
    /* Check everything first: a bad list changes nothing. */
    for (uint64_t i = 0; i < n; i++)
        if (pfns[i] >= bm->nbits)
            return colo_fail(COLO_E_PFN_RANGE, "pfn %llu (entry %llu) past domain size %llu",
                             (unsigned long long)pfns[i], (unsigned long long)i,
                             (unsigned long long)bm->nbits);
    for (uint64_t i = 0; i < n; i++)
        bm->words[pfns[i] / 64] |= (uint64_t)1 << (pfns[i] % 64);
    return COLO_OK;
}

int colo_bitmap_to_pfns(const colo_bitmap *bm, uint64_t *pfns, uint64_t cap, uint64_t *n_out)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < bm->nwords; i++) {
        uint64_t w = bm->words[i];
        while (w) {
            if (n < cap)
                pfns[n] = i * 64 + (uint64_t)__builtin_ctzll(w);
            n++;
            w &= w - 1;
        }
    }
    *n_out = n;
    return COLO_OK;
}

uint64_t colo_bitmap_next(const colo_bitmap *bm, uint64_t from)
{
    uint64_t i, w;
    if (from >= bm->nbits)
        return bm->nbits;
    i = from / 64;
    w = bm->words[i] & (~(uint64_t)0 << (from % 64));
    while (w == 0) {
        if (++i >= bm->nwords)
            return bm->nbits;
        w = bm->words[i];
    }
    return i * 64 + (uint64_t)__builtin_ctzll(w);
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

int colo_bitmap_fill_random(colo_bitmap *bm, uint64_t n, uint64_t seed)
{
    uint64_t state = seed, have;
    if (n > bm->nbits)
        return colo_fail(COLO_E_INVAL, "cannot set %llu of %llu bits",
                         (unsigned long long)n, (unsigned long long)bm->nbits);
    colo_bitmap_clear_all(bm);
    if (n == bm->nbits) {
        memset(bm->words, 0xff, bm->nwords * sizeof(uint64_t));
        if (bm->nbits % 64)
            bm->words[bm->nwords - 1] = ((uint64_t)1 << (bm->nbits % 64)) - 1;
        return COLO_OK;
    }
    for (have = 0; have < n;) {
        uint64_t bit = splitmix64(&state) % bm->nbits;
        uint64_t mask = (uint64_t)1 << (bit % 64);
        if (!(bm->words[bit / 64] & mask)) {
            bm->words[bit / 64] |= mask;
            have++;
        }
    }
    return COLO_OK;
}
