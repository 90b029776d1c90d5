/*
 * batch.c: the items one apply transaction touched (cs__batch, projection_int.h), a hash table
 * over their 9-byte keys (type code, head id) with a dense array of entries and the list of
 * those waiting for a sync point.
 *
 * Why a table in memory: a transaction applies up to thousands of events, many on the same
 * items, with sync points between them. Writing every event's state to the mirror and the dirty
 * set, and every sync point's copies, costs several LMDB operations per event; keeping the
 * touched items here costs a hash lookup per event, and the database work becomes one mirror
 * write and at most one copy write per item and transaction (syncpoint.c writes them).
 *
 * The table is reset by clearing only the slots its entries used, so a transaction of one
 * event after a catch-up of thousands does not pay for the catch-up's table size.
 */
#include "projections/projection_int.h"

#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#define BATCH_SLOTS_MIN 1024u

static void free_owned(cs__batch *bt)
{
    for (uint32_t i = 0; i < bt->nowned; i++)
        free(bt->owned[i]);
    bt->nowned = 0;
}

cs_err cs__batch_own(cs__batch *bt, uint8_t *p)
{
    if (bt->nowned == bt->owned_cap) {
        uint32_t cap = bt->owned_cap ? 2 * bt->owned_cap : 16;
        uint8_t **o = realloc(bt->owned, cap * sizeof(*o));
        if (!o) {
            free(p);
            return CS_NO_MEMORY;
        }
        bt->owned = o;
        bt->owned_cap = cap;
    }
    bt->owned[bt->nowned++] = p;
    return CS_OK;
}

void cs__batch_free(cs__batch *bt)
{
    free_owned(bt);
    free(bt->owned);
    free(bt->items);
    free(bt->slots);
    free(bt->dirty);
    free(bt->scratch);
    memset(bt, 0, sizeof(*bt));
}

void cs__batch_reset(cs__batch *bt)
{
    for (uint32_t i = 0; i < bt->n; i++)
        bt->slots[bt->items[i].slot] = 0;
    bt->n = 0;
    free_owned(bt);
    bt->ndirty = 0;
    bt->syncs = 0;
    bt->db_loaded = false;
}

static uint32_t slot_of(const cs__batch *bt, const uint8_t key[9])
{
    return (uint32_t)XXH3_64bits(key, 9) & (bt->nslots - 1);
}

uint32_t cs__batch_find(const cs__batch *bt, const uint8_t key[9])
{
    if (bt->nslots == 0)
        return UINT32_MAX;
    for (uint32_t s = slot_of(bt, key);; s = (s + 1) & (bt->nslots - 1)) {
        uint32_t v = bt->slots[s];
        if (v == 0)
            return UINT32_MAX;
        if (memcmp(bt->items[v - 1].key, key, 9) == 0)
            return v - 1;
    }
}

/* Doubles the slots (or makes the first ones) and places every entry again. */
static cs_err grow_slots(cs__batch *bt)
{
    uint32_t n = bt->nslots ? bt->nslots * 2 : BATCH_SLOTS_MIN;
    if (n == 0 || n > (UINT32_MAX >> 1))
        return CS_NO_MEMORY;
    uint32_t *slots = calloc(n, sizeof(*slots));
    if (!slots)
        return CS_NO_MEMORY;
    free(bt->slots);
    bt->slots = slots;
    bt->nslots = n;
    for (uint32_t i = 0; i < bt->n; i++) {
        uint32_t s = slot_of(bt, bt->items[i].key);
        while (bt->slots[s])
            s = (s + 1) & (n - 1);
        bt->slots[s] = i + 1;
        bt->items[i].slot = s;
    }
    return CS_OK;
}

/* Room for one index more in *arr of capacity *cap (doubling). */
static cs_err reserve_u32(uint32_t **arr, uint32_t *cap, size_t need)
{
    if (need <= *cap)
        return CS_OK;
    size_t c = *cap ? *cap : 256;
    while (c < need)
        c *= 2;
    if (c > UINT32_MAX)
        return CS_NO_MEMORY;
    uint32_t *p = realloc(*arr, c * sizeof(*p));
    if (!p)
        return CS_NO_MEMORY;
    *arr = p;
    *cap = (uint32_t)c;
    return CS_OK;
}

cs_err cs__batch_get(cs__batch *bt, const uint8_t key[9], uint32_t *idx_out)
{
    uint32_t i = cs__batch_find(bt, key);
    if (i != UINT32_MAX) {
        *idx_out = i;
        return CS_OK;
    }
    cs_err err = CS_OK;
    /* Load at most one half: probes stay short. */
    if ((size_t)(bt->n + 1) * 2 > bt->nslots)
        err = grow_slots(bt);
    if (err == CS_OK && bt->n == bt->cap) {
        size_t c = bt->cap ? (size_t)bt->cap * 2 : 256;
        cs__bitem *p = c <= UINT32_MAX ? realloc(bt->items, c * sizeof(*p)) : NULL;
        if (!p)
            return CS_NO_MEMORY;
        bt->items = p;
        bt->cap = (uint32_t)c;
    }
    if (err != CS_OK)
        return err;
    uint32_t s = slot_of(bt, key);
    while (bt->slots[s])
        s = (s + 1) & (bt->nslots - 1);
    cs__bitem *it = &bt->items[bt->n];
    memset(it, 0, sizeof(*it));
    memcpy(it->key, key, 9);
    it->slot = s;
    bt->slots[s] = bt->n + 1;
    *idx_out = bt->n++;
    return CS_OK;
}

cs_err cs__batch_mark_dirty(cs__batch *bt, uint32_t idx)
{
    cs_assert(idx < bt->n);
    if (bt->items[idx].flags & CS__BI_DIRTY)
        return CS_OK;
    cs_err err = reserve_u32(&bt->dirty, &bt->dirty_cap, (size_t)bt->ndirty + 1);
    if (err != CS_OK)
        return err;
    bt->items[idx].flags |= CS__BI_DIRTY;
    bt->dirty[bt->ndirty++] = idx;
    return CS_OK;
}

cs_err cs__batch_scratch(cs__batch *bt, size_t n)
{
    return reserve_u32(&bt->scratch, &bt->scratch_cap, n);
}
