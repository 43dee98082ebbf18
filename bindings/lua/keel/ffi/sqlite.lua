-- FFI declarations for the parts of libsqlite3 keel.store uses. build/keel
-- links libsqlite3 with a real DT_NEEDED entry (see the Makefile), so the
-- symbols resolve through ffi.C like the runtime's own.
local ffi = require "ffi"

ffi.cdef [[
typedef struct sqlite3 sqlite3;
typedef struct sqlite3_stmt sqlite3_stmt;
typedef int64_t sqlite3_int64;

int sqlite3_open_v2(const char *filename, sqlite3 **ppDb, int flags, const char *zVfs);
int sqlite3_close_v2(sqlite3 *db);
int sqlite3_extended_result_codes(sqlite3 *db, int onoff);
int sqlite3_busy_timeout(sqlite3 *db, int ms);
const char *sqlite3_errmsg(sqlite3 *db);
const char *sqlite3_errstr(int rc);
int sqlite3_extended_errcode(sqlite3 *db);
int sqlite3_get_autocommit(sqlite3 *db);
int sqlite3_db_readonly(sqlite3 *db, const char *zDbName);
int sqlite3_changes(sqlite3 *db);
sqlite3_int64 sqlite3_last_insert_rowid(sqlite3 *db);
const char *sqlite3_libversion(void);
int sqlite3_threadsafe(void);

int sqlite3_prepare_v2(sqlite3 *db, const char *zSql, int nByte, sqlite3_stmt **ppStmt, const char **pzTail);
int sqlite3_finalize(sqlite3_stmt *pStmt);
int sqlite3_reset(sqlite3_stmt *pStmt);
int sqlite3_step(sqlite3_stmt *pStmt);
int sqlite3_stmt_readonly(sqlite3_stmt *pStmt);
int sqlite3_bind_parameter_count(sqlite3_stmt *pStmt);
int sqlite3_bind_null(sqlite3_stmt *pStmt, int i);
int sqlite3_bind_int64(sqlite3_stmt *pStmt, int i, sqlite3_int64 v);
int sqlite3_bind_double(sqlite3_stmt *pStmt, int i, double v);
int sqlite3_bind_text(sqlite3_stmt *pStmt, int i, const char *v, int n, void (*destructor)(void *));
int sqlite3_bind_blob(sqlite3_stmt *pStmt, int i, const void *v, int n, void (*destructor)(void *));
int sqlite3_column_count(sqlite3_stmt *pStmt);
const char *sqlite3_column_name(sqlite3_stmt *pStmt, int i);
int sqlite3_column_type(sqlite3_stmt *pStmt, int i);
sqlite3_int64 sqlite3_column_int64(sqlite3_stmt *pStmt, int i);
double sqlite3_column_double(sqlite3_stmt *pStmt, int i);
const unsigned char *sqlite3_column_text(sqlite3_stmt *pStmt, int i);
const void *sqlite3_column_blob(sqlite3_stmt *pStmt, int i);
int sqlite3_column_bytes(sqlite3_stmt *pStmt, int i);

int sqlite3_wal_checkpoint_v2(sqlite3 *db, const char *zDb, int eMode, int *pnLog, int *pnCkpt);
int keel_utf8_valid(const char *s, size_t n);

typedef struct keel_ckpt keel_ckpt_t;
keel_ckpt_t *keel_ckpt_start(const char *path, int32_t pages, char *errbuf, int32_t errlen);
void keel_ckpt_attach(keel_ckpt_t *c, struct sqlite3 *db);
void keel_ckpt_stop(keel_ckpt_t *c);
int64_t keel_ckpt_count(const keel_ckpt_t *c);
int64_t keel_ckpt_frames(const keel_ckpt_t *c);
]]

return ffi.C
