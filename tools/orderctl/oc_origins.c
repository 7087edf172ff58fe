/*
 * oc_origins.c - see oc_origins.h.
 */
#include "oc_origins.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *id; /* NULL: free slot */
    oc_origin v;
} entry;

struct oc_origins {
    entry *e;
    size_t cap; /* power of two */
    size_t used;
};

static entry *lookup(entry *e, size_t cap, const char *id)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    size_t i;

    for (const char *s = id; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    for (i = (size_t)h & (cap - 1); e[i].id && strcmp(e[i].id, id) != 0; i = (i + 1) & (cap - 1))
        ;
    return &e[i];
}

int oc_origins_new(oc_origins **ret)
{
    oc_origins *o = calloc(1, sizeof(*o));

    if (!o || !(o->e = calloc(64, sizeof(entry)))) {
        free(o);
        return -ENOMEM;
    }
    o->cap = 64;
    *ret = o;
    return 0;
}

void oc_origins_free(oc_origins *o)
{
    if (!o)
        return;
    for (size_t i = 0; i < o->cap; i++)
        free(o->e[i].id);
    free(o->e);
    free(o);
}

static int grow(oc_origins *o)
{
    entry *bigger = calloc(o->cap * 2, sizeof(entry));

    if (!bigger)
        return -ENOMEM;
    for (size_t i = 0; i < o->cap; i++)
        if (o->e[i].id)
            *lookup(bigger, o->cap * 2, o->e[i].id) = o->e[i];
    free(o->e);
    o->e = bigger;
    o->cap *= 2;
    return 0;
}

oc_origin *oc_origins_get(oc_origins *o, const char *id, bool *ret_new)
{
    entry *x = lookup(o->e, o->cap, id);

    *ret_new = !x->id;
    if (x->id)
        return &x->v; /* found: never moved by a grow */
    if ((o->used + 1) * 2 > o->cap) {
        if (grow(o) < 0)
            return NULL;
        x = lookup(o->e, o->cap, id);
    }
    if (!(x->id = strdup(id)))
        return NULL;
    x->v = (oc_origin){-1, false, -1, -1};
    o->used++;
    return &x->v;
}
