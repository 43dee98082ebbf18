#include "keel_utf8.h"
#include <stdint.h>
#include <string.h>

int keel_utf8_valid(const char *s, size_t n) {
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        /* ASCII runs, 8 bytes at a time: most payloads are mostly ASCII */
        while (end - p >= 8) {
            uint64_t w;
            memcpy(&w, p, 8);
            /* any high bit set, or any zero byte */
            if ((w & 0x8080808080808080ull) ||
                ((w - 0x0101010101010101ull) & ~w & 0x8080808080808080ull))
                break;
            p += 8;
        }
        if (p >= end) break;
        unsigned c = *p;
        if (c == 0) return 0;
        if (c < 0x80) { p++; continue; }
        size_t len;
        unsigned min;
        if (c >= 0xC2 && c <= 0xDF) { len = 2; min = 0x80; }
        else if (c >= 0xE0 && c <= 0xEF) { len = 3; min = 0x800; }
        else if (c >= 0xF0 && c <= 0xF4) { len = 4; min = 0x10000; }
        else return 0;
        if ((size_t)(end - p) < len) return 0;
        unsigned cp = c & (0xFFu >> (len + 1));
        for (size_t i = 1; i < len; i++) {
            if ((p[i] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
        p += len;
    }
    return 1;
}
