#ifndef KEEL_RECLAIM_H
#define KEEL_RECLAIM_H
/* Frees postponed until a Lua state is gone.
 *
 * When a Lua state closes, LuaJIT runs every cdata finalizer first and the
 * userdata finalizers after them, so a user's __gc that pushes to a queue or
 * arms a timer would touch C objects already freed. While the state closes,
 * the finalizers of Keel's C objects hand their pointer here instead of
 * freeing it; the host frees them all once the state is closed. */
#include <stddef.h>

typedef void (*keel_free_fn)(void *p);
typedef struct keel_reclaim keel_reclaim_t;

keel_reclaim_t *keel_reclaim_new(void);
/* Remembers fn(p) for keel_reclaim_run. Returns 0, or -1 when out of memory:
 * then fn(p) has run at once (the object is gone now rather than leaked). */
int keel_reclaim_add(keel_reclaim_t *q, keel_free_fn fn, void *p);
/* Runs every remembered free, in the order added, and forgets them. */
void keel_reclaim_run(keel_reclaim_t *q);
/* Runs what is left, then frees q. Safe on NULL. */
void keel_reclaim_free(keel_reclaim_t *q);

#endif
