/*
 * Tests of shmipc_strerror() and shmipc_err_name(): every library code from
 * SHMIPC_ERRNO_MAP, negated errno values, and codes that are neither. The
 * runner never calls setlocale(), so libc messages are the C locale's.
 */
#include <errno.h>
#include <limits.h>
#include <string.h>

#include <stdio.h>

#include "shmipc/errors.h"
#include "shmipc/shmipc.h"
#include "testutil.h"

struct err_row {
    int code;
    int off;
    const char *name;
    const char *msg;
};

static const struct err_row rows[] = {
#define ROW_(name, off, msg) {SHMIPC_##name, off, "SHMIPC_" #name, msg},
    SHMIPC_ERRNO_MAP(ROW_)
#undef ROW_
};

#define NROWS (sizeof(rows) / sizeof(rows[0]))

static void test_success(void)
{
    CU_ASSERT_STRING_EQUAL(shmipc_strerror(0), "success");
    CU_ASSERT_STRING_EQUAL(shmipc_err_name(0), "OK");
}

/* The map is dense: offsets 0..n-1, and SHMIPC_ERR_LAST_ follows the last. */
static void test_own_codes_dense(void)
{
    unsigned char seen[NROWS] = {0};
    CU_ASSERT_EQUAL(NROWS, (size_t)(SHMIPC_ERR_BASE - SHMIPC_ERR_LAST_));
    for (size_t i = 0; i < NROWS; i++) {
        CU_ASSERT_EQUAL(rows[i].code, SHMIPC_ERR_BASE - rows[i].off);
        CU_ASSERT(rows[i].off >= 0 && (size_t)rows[i].off < NROWS);
        if (rows[i].off >= 0 && (size_t)rows[i].off < NROWS) {
            CU_ASSERT_EQUAL(seen[rows[i].off], 0);
            seen[rows[i].off] = 1;
        }
    }
}

static void test_own_codes_named(void)
{
    for (size_t i = 0; i < NROWS; i++) {
        const char *msg = shmipc_strerror(rows[i].code);
        const char *name = shmipc_err_name(rows[i].code);
        CU_ASSERT_PTR_NOT_NULL_FATAL(msg);
        CU_ASSERT_PTR_NOT_NULL_FATAL(name);
        CU_ASSERT_STRING_EQUAL(msg, rows[i].msg);
        CU_ASSERT_STRING_EQUAL(name, rows[i].name);
        CU_ASSERT(msg[0] != '\0');
        CU_ASSERT_STRING_NOT_EQUAL(msg, "unknown error");
        CU_ASSERT_EQUAL(strncmp(name, "SHMIPC_E", 8), 0);
        CU_ASSERT(strlen(name) > 8);
    }
}

static void test_own_codes_distinct(void)
{
    for (size_t i = 0; i < NROWS; i++) {
        for (size_t j = i + 1; j < NROWS; j++) {
            CU_ASSERT_STRING_NOT_EQUAL(shmipc_strerror(rows[i].code),
                                       shmipc_strerror(rows[j].code));
            CU_ASSERT_STRING_NOT_EQUAL(shmipc_err_name(rows[i].code),
                                       shmipc_err_name(rows[j].code));
        }
    }
}

static void test_errno_passthrough(void)
{
    CU_ASSERT_STRING_EQUAL(shmipc_strerror(-ENOENT), "No such file or directory");
    CU_ASSERT_STRING_EQUAL(shmipc_err_name(-ENOENT), "ENOENT");
    CU_ASSERT_STRING_EQUAL(shmipc_strerror(-EINVAL), "Invalid argument");
    CU_ASSERT_STRING_EQUAL(shmipc_err_name(-EINVAL), "EINVAL");
    /* Same spelling as a library code, different code. */
    CU_ASSERT_STRING_EQUAL(shmipc_err_name(-ENOBUFS), "ENOBUFS");
    CU_ASSERT_STRING_EQUAL(shmipc_err_name(SHMIPC_ENOBUFS), "SHMIPC_ENOBUFS");
    CU_ASSERT_STRING_EQUAL(shmipc_err_name(-ETIMEDOUT), "ETIMEDOUT");
    CU_ASSERT_STRING_EQUAL(shmipc_strerror(-EPROTO), "Protocol error");
}

static void test_unknown(void)
{
    const int codes[] = {SHMIPC_ERR_LAST_, SHMIPC_ERR_LAST_ - 1, -5000, INT_MIN, 1, 7, INT_MAX,
                         /* in the errno range, but no errno has that number */
                         SHMIPC_ERR_BASE + 1, -500};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        CU_ASSERT_STRING_EQUAL(shmipc_strerror(codes[i]), "unknown error");
        CU_ASSERT_STRING_EQUAL(shmipc_err_name(codes[i]), "UNKNOWN");
    }
}

/* "A static string": a later call must not overwrite an earlier result. */
static void test_results_are_static(void)
{
    const char *a = shmipc_strerror(-ENOENT);
    const char *b = shmipc_strerror(-998);
    const char *own = shmipc_strerror(SHMIPC_EQFULL);
    shmipc_strerror(-EINVAL);
    shmipc_strerror(-997);
    shmipc_err_name(-997);
    CU_ASSERT_STRING_EQUAL(a, "No such file or directory");
    CU_ASSERT_STRING_EQUAL(b, "unknown error");
    CU_ASSERT_STRING_EQUAL(own, "queue full");
    CU_ASSERT_PTR_EQUAL(shmipc_strerror(SHMIPC_EQFULL), own);
}

/* The public log controls: a sink gets the library's lines up to the
 * level set, nothing above it, and NULL gives stderr back. */
struct sunk {
    int lines, worst;
    char last[256];
};

static void sink(void *arg, int level, const char *line)
{
    struct sunk *k = arg;
    k->lines++;
    if (k->lines == 1 || level < k->worst)
        k->worst = level;
    snprintf(k->last, sizeof(k->last), "%s", line);
}

static void test_log_sink(void)
{
    struct sunk k = {0};
    struct shmipc_client_config cfg;
    shmipc_client *c = NULL;
    shmipc_client_config_init(&cfg);
    cfg.address = "unix:/nonexistent-shmipc-dir/none.sock";
    cfg.connect_timeout_ms = 100;
    shmipc_set_log_sink(sink, &k);
    shmipc_set_log_level(0); /* errors only: a refused connect is a warning */
    CU_ASSERT(shmipc_client_open(&cfg, &c) < 0);
    CHECK_EQ(k.lines, 0);
    shmipc_set_log_level(1);
    CU_ASSERT(shmipc_client_open(&cfg, &c) < 0);
    CU_ASSERT(k.lines >= 1);
    CHECK_EQ(k.worst, 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(k.last, "none.sock"));
    CU_ASSERT(strchr(k.last, '\n') == NULL);
    shmipc_set_log_sink(NULL, NULL);
    shmipc_set_log_level(0); /* what the test runner had set */
}

static const struct test_case cases[] = {
    {"success", test_success},
    {"own codes dense", test_own_codes_dense},
    {"own codes named", test_own_codes_named},
    {"own codes distinct", test_own_codes_distinct},
    {"errno passthrough", test_errno_passthrough},
    {"unknown codes", test_unknown},
    {"results are static", test_results_are_static},
    {"log level and sink", test_log_sink},
    {NULL, NULL},
};

const struct test_suite suite_errors = {"errors", cases};
