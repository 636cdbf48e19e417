/*
 * shmipc_strerror() and shmipc_err_name(): one table, generated from
 * SHMIPC_ERRNO_MAP, for the library's own codes; errno values go to libc.
 */
#include <string.h>

#include "shmipc/errors.h"

struct err_entry {
    const char *name;
    const char *msg;
};

static const struct err_entry err_table[] = {
#define ERR_ROW_(name, off, msg) [off] = {"SHMIPC_" #name, msg},
    SHMIPC_ERRNO_MAP(ERR_ROW_)
#undef ERR_ROW_
};

#define ERR_COUNT (sizeof(err_table) / sizeof(err_table[0]))

static const struct err_entry *own_entry(int code)
{
    if (code > SHMIPC_ERR_BASE)
        return NULL;
    unsigned idx = (unsigned)(SHMIPC_ERR_BASE - code);
    return idx < ERR_COUNT ? &err_table[idx] : NULL;
}

const char *shmipc_strerror(int code)
{
    if (code == 0)
        return "success";
    const struct err_entry *e = own_entry(code);
    if (e != NULL)
        return e->msg;
    /* strerror() formats an unknown errno into a buffer that the next call
     * overwrites; only numbers glibc names have a static message. */
    if (code < 0 && code > SHMIPC_ERR_BASE && strerrorname_np(-code) != NULL)
        return strerror(-code);
    return "unknown error";
}

const char *shmipc_err_name(int code)
{
    if (code == 0)
        return "OK";
    const struct err_entry *e = own_entry(code);
    if (e != NULL)
        return e->name;
    if (code < 0 && code > SHMIPC_ERR_BASE) {
        const char *n = strerrorname_np(-code);
        return n != NULL ? n : "UNKNOWN";
    }
    return "UNKNOWN";
}
