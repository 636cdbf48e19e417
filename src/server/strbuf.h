/*
 * A growing text buffer for replies and reports (admin commands, reload
 * reports, canonical config texts). The text is NUL-terminated once
 * anything was added; p stays NULL until then. Out of memory drops the
 * piece being added, never what is there.
 */
#ifndef SHMIPC_SERVER_STRBUF_H
#define SHMIPC_SERVER_STRBUF_H

#include <stddef.h>

struct strbuf {
    char *p; /* malloc'd; the caller frees it */
    size_t len, cap;
};

void strbuf_add(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
