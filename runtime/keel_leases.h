#ifndef KEEL_LEASES_H
#define KEEL_LEASES_H
#include <stddef.h>
#include <stdint.h>
#include "keel_clock.h"
/* Time-bounded exclusive ownership of keys with fencing tokens. Every grant
 * gets a token larger than any earlier grant of this object, so a resource
 * that remembers the highest token it has seen can refuse a holder whose
 * lease lapsed. A lease granted at t with ttl is valid while
 * now_ms < t + ttl: at now_ms == expires it is gone.
 *
 * At most max keys are held at once: when full, an expired lease is
 * reclaimed to make room; if none is expired, acquire fails with FULL (live
 * leases are never evicted). Tokens are doubles (exact up to 2^53 grants). */

typedef struct keel_leases keel_leases_t;

#define KEEL_LEASE_HELD 0.0
#define KEEL_LEASE_FULL (-1.0)
#define KEEL_LEASE_ERROR (-2.0) /* key too long, bad ttl, out of memory */

keel_leases_t *keel_leases_new(uint32_t max, const keel_clock_t *clock, uint64_t seed);
void keel_leases_free(keel_leases_t *l);
/* Token (> 0) on success, else KEEL_LEASE_HELD / FULL / ERROR. ttl_ms must be
 * a finite number > 0. keel_leases_last_slot() then names the key's slot. */
double keel_leases_acquire(keel_leases_t *l, const char *key, size_t len, double ttl_ms);
/* Extends a lease still held under token to now + ttl_ms. Returns the new
 * expiry, or 0 when the lease is lost (expired, released, re-granted). */
double keel_leases_renew(keel_leases_t *l, const char *key, size_t len, double token, double ttl_ms);
/* 1 released, 0 lost. */
int keel_leases_release(keel_leases_t *l, const char *key, size_t len, double token);
/* Token of the live lease on key (0 when none); sets last_slot. */
double keel_leases_holder(keel_leases_t *l, const char *key, size_t len);
int keel_leases_valid(keel_leases_t *l, const char *key, size_t len, double token);
/* Slot (in [0, max)) of the key touched by the last acquire/holder; stable
 * while the lease lives, so callers can keep side data per slot. */
uint32_t keel_leases_last_slot(const keel_leases_t *l);
double keel_leases_expires(const keel_leases_t *l, uint32_t slot);
/* Live leases (expired ones reclaimed first). */
uint32_t keel_leases_count(keel_leases_t *l);
/* Counters: 0 grants, 1 renewals, 2 releases, 3 expirations, 4 held (refused),
 * 5 full (refused), 6 lost (renew/release with a stale token), 7 bytes. */
double keel_leases_stat(const keel_leases_t *l, int which);

#endif
