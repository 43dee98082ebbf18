-- FFI declarations shared by every module: the clock, the PRNG, the timer heap.
local ffi = require "ffi"

ffi.cdef [[
typedef struct keel_clock {
    double now_ms;
    double wall_base_ms;
    int is_virtual;
} keel_clock_t;
void keel_clock_init(keel_clock_t *clock, int is_virtual, double virtual_epoch_ms);
double keel_clock_update(keel_clock_t *clock);
int keel_clock_advance_to(keel_clock_t *clock, double t_ms);
double keel_clock_wall(const keel_clock_t *clock);

typedef struct keel_rand { uint64_t s[4]; } keel_rand_t;
void keel_rand_seed(keel_rand_t *r, uint64_t seed);
uint64_t keel_rand_next(keel_rand_t *r);
double keel_rand_double(keel_rand_t *r);
int64_t keel_rand_range(keel_rand_t *r, int64_t lo, int64_t hi);

typedef struct keel_timers keel_timers_t;
keel_timers_t *keel_timers_new(void);
void keel_timers_free(keel_timers_t *t);
int32_t keel_timers_add(keel_timers_t *t, double deadline_ms);
int keel_timers_cancel(keel_timers_t *t, int32_t id);
int32_t keel_timers_pop_expired(keel_timers_t *t, double now_ms);
double keel_timers_next(const keel_timers_t *t);
int32_t keel_timers_count(const keel_timers_t *t);

typedef void (*keel_free_fn)(void *p);
typedef struct keel_reclaim keel_reclaim_t;
int keel_reclaim_add(keel_reclaim_t *q, keel_free_fn fn, void *p);
]]

return ffi.C
