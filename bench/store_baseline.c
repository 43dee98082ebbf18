/* The baseline for bench/store.lua: the same statements as the keel
 * benchmark (insert one ~200-byte row + update one row), from plain C on
 * SQLite, either one transaction each or `batch` per transaction.
 *   store-baseline PATH normal|full SECONDS BATCH  ->  prints transactions/s */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int run(sqlite3 *db, const char *sql) {
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK) {
        fprintf(stderr, "%s: %s\n", sql, err ? err : "?");
        sqlite3_free(err);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s PATH normal|full SECONDS BATCH\n", argv[0]);
        return 2;
    }
    const char *path = argv[1];
    int full = strcmp(argv[2], "full") == 0;
    double seconds = atof(argv[3]);
    int batch = atoi(argv[4]);
    if (batch < 1) batch = 1;
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK) return 1;
    if (run(db, "PRAGMA journal_mode = WAL") ||
        run(db, full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL") ||
        run(db, "create table if not exists t(id integer primary key, v text)") ||
        run(db, "create table if not exists u(id integer primary key, n integer)") ||
        run(db, "insert or ignore into u values (1, 0)"))
        return 1;
    sqlite3_stmt *ins, *upd, *begin, *commit;
    sqlite3_prepare_v2(db, "insert into t(v) values (?)", -1, &ins, NULL);
    sqlite3_prepare_v2(db, "update u set n = n + 1 where id = 1", -1, &upd, NULL);
    sqlite3_prepare_v2(db, "BEGIN IMMEDIATE", -1, &begin, NULL);
    sqlite3_prepare_v2(db, "COMMIT", -1, &commit, NULL);
    char row[201];
    memset(row, 'x', 200);
    row[200] = 0;
    long done = 0;
    double t0 = now_s(), t;
    do {
        sqlite3_step(begin);
        sqlite3_reset(begin);
        for (int i = 0; i < batch; i++) {
            sqlite3_bind_text(ins, 1, row, 200, SQLITE_STATIC);
            if (sqlite3_step(ins) != SQLITE_DONE) return 1;
            sqlite3_reset(ins);
            if (sqlite3_step(upd) != SQLITE_DONE) return 1;
            sqlite3_reset(upd);
        }
        if (sqlite3_step(commit) != SQLITE_DONE) return 1;
        sqlite3_reset(commit);
        done += batch;
        t = now_s();
    } while (t - t0 < seconds);
    printf("%.1f\n", (double)done / (t - t0));
    sqlite3_finalize(ins);
    sqlite3_finalize(upd);
    sqlite3_finalize(begin);
    sqlite3_finalize(commit);
    sqlite3_close(db);
    return 0;
}
