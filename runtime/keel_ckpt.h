#ifndef KEEL_CKPT_H
#define KEEL_CKPT_H
#include <stdint.h>
/* WAL checkpoints off the event loop: a thread with its own connection to
 * the database runs PASSIVE checkpoints whenever a commit on the attached
 * (loop-thread) connection leaves at least `pages` frames in the WAL. The
 * writer runs with wal_autocheckpoint = 0, so no COMMIT ever checkpoints
 * inline. PASSIVE never blocks the writer nor the readers. */

typedef struct keel_ckpt keel_ckpt_t;
struct sqlite3;

/* Opens the thread's connection to path. NULL on failure (errbuf gets why). */
keel_ckpt_t *keel_ckpt_start(const char *path, int32_t pages, char *errbuf, int32_t errlen);
/* Installs the WAL hook on the loop's connection (replaces any other). */
void keel_ckpt_attach(keel_ckpt_t *c, struct sqlite3 *db);
/* Stops and joins the thread (waits for a checkpoint in progress). */
void keel_ckpt_stop(keel_ckpt_t *c);
/* Checkpoints run, and frames they copied back into the database so far. */
int64_t keel_ckpt_count(const keel_ckpt_t *c);
int64_t keel_ckpt_frames(const keel_ckpt_t *c);
#endif
