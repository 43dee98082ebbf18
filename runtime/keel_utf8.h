#ifndef KEEL_UTF8_H
#define KEEL_UTF8_H
#include <stddef.h>
/* 1 when s[0..n) is well-formed UTF-8 with no NUL byte (what SQLite may
 * treat as TEXT without changing it), 0 otherwise. keel.store binds other
 * strings as BLOBs so they come back byte for byte. */
int keel_utf8_valid(const char *s, size_t n);
#endif
