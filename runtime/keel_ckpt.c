#include "keel_ckpt.h"
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

struct keel_ckpt {
    sqlite3 *conn;
    int32_t pages;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int requested, stopping;
    _Atomic int64_t count, frames;
};

static void *ckpt_main(void *arg) {
    keel_ckpt_t *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->requested && !c->stopping) pthread_cond_wait(&c->cv, &c->mu);
        if (c->stopping) break;
        c->requested = 0;
        pthread_mutex_unlock(&c->mu);
        int nlog = 0, nckpt = 0;
        /* BUSY (another checkpoint running) is fine: the next commit asks again */
        sqlite3_wal_checkpoint_v2(c->conn, NULL, SQLITE_CHECKPOINT_PASSIVE, &nlog, &nckpt);
        atomic_fetch_add(&c->count, 1);
        if (nckpt > 0) atomic_fetch_add(&c->frames, nckpt);
        pthread_mutex_lock(&c->mu);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

keel_ckpt_t *keel_ckpt_start(const char *path, int32_t pages, char *errbuf, int32_t errlen) {
    keel_ckpt_t *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(errbuf, (size_t)errlen, "out of memory");
        return NULL;
    }
    c->pages = pages > 0 ? pages : 1;
    int rc = sqlite3_open_v2(path, &c->conn, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI, NULL);
    if (rc != SQLITE_OK) {
        snprintf(errbuf, (size_t)errlen, "%s", c->conn ? sqlite3_errmsg(c->conn) : sqlite3_errstr(rc));
        sqlite3_close_v2(c->conn);
        free(c);
        return NULL;
    }
    /* this connection must never checkpoint on its own commits (it makes none) */
    sqlite3_wal_autocheckpoint(c->conn, 0);
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    if (pthread_create(&c->thread, NULL, ckpt_main, c) != 0) {
        snprintf(errbuf, (size_t)errlen, "cannot start the checkpoint thread");
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->cv);
        sqlite3_close_v2(c->conn);
        free(c);
        return NULL;
    }
    return c;
}

/* Runs on the loop thread inside COMMIT: only a signal, never I/O. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int nframes) {
    (void)db;
    (void)name;
    keel_ckpt_t *c = arg;
    if (nframes >= c->pages) {
        pthread_mutex_lock(&c->mu);
        c->requested = 1;
        pthread_cond_signal(&c->cv);
        pthread_mutex_unlock(&c->mu);
    }
    return SQLITE_OK;
}

void keel_ckpt_attach(keel_ckpt_t *c, struct sqlite3 *db) {
    sqlite3_wal_hook(db, wal_hook, c);
}

void keel_ckpt_stop(keel_ckpt_t *c) {
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    c->stopping = 1;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    sqlite3_close_v2(c->conn);
    free(c);
}

int64_t keel_ckpt_count(const keel_ckpt_t *c) { return atomic_load(&((keel_ckpt_t *)c)->count); }
int64_t keel_ckpt_frames(const keel_ckpt_t *c) { return atomic_load(&((keel_ckpt_t *)c)->frames); }
