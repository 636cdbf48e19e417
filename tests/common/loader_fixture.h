/*
 * The fixture of the loader suite (tests/unit/test_loader.c): a test host
 * API table, the built plugins' paths, temporary directories, requests
 * handed to a plugin in pieces, and the per-test scaffolding (struct
 * fixture). The prefix lfx_ stands for loader fixture.
 *
 * The plugins are the built .so files under $SHMIPC_PLUGINS and
 * $SHMIPC_TEST_PLUGINS. Each test loads into its own mkdtemp directory and
 * lfx_end() checks that the directory is empty again, that no fd is left
 * open and that no private copy is still mapped. The host API table is the
 * test's own: responses go to a malloc'd buffer (struct shmipc_response is
 * opaque to plugins, so the test defines it), log lines to a buffer, and
 * requests are split into separately allocated pieces so that a plugin
 * reading past a piece would be caught (by a wrong answer or by ASan).
 *
 * Who owns what: paths from lfx_plugin() and lfx_test_plugin() are
 * malloc'd; lfx_begin() takes one, and lfx_end() (or lfx_run_loaded())
 * frees it with the fixture's directories and config. A response's buf is
 * the caller's to free. The log (lfx_log_buf, lfx_log_count) is one per
 * process, emptied by lfx_begin(). CUnit assertions are made by
 * lfx_plugin/lfx_test_plugin (a missing plugin directory), lfx_begin,
 * lfx_scratch (FATAL: no scratch directory), lfx_end and lfx_load; the
 * other helpers make no CUnit call (lfx_call_ts runs on the kv tests'
 * threads).
 */
#ifndef SHMIPC_TESTS_LOADER_FIXTURE_H
#define SHMIPC_TESTS_LOADER_FIXTURE_H

#include <libconfig.h>
#include <stddef.h>
#include <stdint.h>

#include "../unit/testutil.h"
#include "server/config.h"
#include "server/loader.h"
#include "shmipc/errors.h"
#include "shmipc/plugin.h"

/* config.c provides the accessors the daemon's host table uses. Weak (in
 * every file that includes this header), so that the suite still links
 * while config.o is not part of the program; then the test host reads the
 * group with libconfig directly. */
#pragma weak conf_plugin_int
#pragma weak conf_plugin_bool
#pragma weak conf_plugin_float
#pragma weak conf_plugin_string

/* ---- the test host ---- */

struct shmipc_response {
    uint8_t *buf;
    size_t len, cap;
    int fail; /* write/reserve return SHMIPC_ENOBUFS */
};

/* The host's log: "<level> <line>\n" per line, NUL-terminated, cut at its
 * size; written under a lock, read by tests once plugins are quiet. */
extern char lfx_log_buf[16384];
/* Lines logged since lfx_begin(). */
unsigned lfx_log_count(void);

/* The host API table: log, write, reserve and copy above, shmipc_strerror,
 * and the conf_* accessors (config.c's when linked). */
extern const struct shmipc_host_api lfx_test_host;

/* ---- helpers ---- */

/* $SHMIPC_PLUGINS/<name>.so (else ../plugins next to this program), or
 * NULL and a failed assertion when the directory is missing. Malloc'd. */
char *lfx_plugin(const char *name);
/* The same in $SHMIPC_TEST_PLUGINS (else plugins next to this program). */
char *lfx_test_plugin(const char *name);

/* Entries in dir, "." and ".." aside; -1 when unreadable. */
int lfx_count_entries(const char *dir);
/* Whether this process's memory map names `path` itself; -1 if unreadable. */
int lfx_is_mapped(const char *path);
/* Whether it maps something below the directory: a private copy left open. */
int lfx_mapped_under(const char *dir);
int lfx_file_exists(const char *path);
/* Writes the file in place (O_TRUNC, same inode): what a careless upgrade
 * does. 0 or -errno. */
int lfx_write_all(const char *path, const void *data, size_t len);
/* Copies from over to in place (lfx_write_all). 0 or -errno. */
int lfx_copy_file(const char *from, const char *to);

/* Runs handle() on `data`, split into separately allocated pieces of at
 * most `piece` bytes (0: one piece). The response is left in *resp
 * (free resp->buf). No CUnit calls: the kv threads use it too. */
int lfx_call_ts(struct plugin_gen *g, void *ts, const void *data, size_t len, size_t piece,
                struct shmipc_response *resp);
/* lfx_call_ts with the first worker's thread state (NULL without workers). */
int lfx_call(struct plugin_gen *g, const void *data, size_t len, size_t piece,
             struct shmipc_response *resp);
/* Whether the request `req` (a string) gets exactly `want` (else says what
 * came on stderr). */
int lfx_replies(struct plugin_gen *g, const char *req, size_t piece, const char *want);
#define CU_ASSERT_REPLY(g, req, piece, want)                                                       \
    CU_ASSERT_TRUE(lfx_replies((g), (req), (piece), (want)))
/* Same with binary request and reply. */
int lfx_replies_bin(struct plugin_gen *g, const void *req, size_t len, size_t piece,
                    const void *want, size_t wlen);

/* ---- fixture ---- */

/* Per-test scaffolding: the plugin under test, a tmpdir, and the fd count
 * at the start. `scratch`, made on demand, holds the test's own files apart
 * from tmp, so that tmp's count stays about private copies. */
struct fixture {
    char *path;
    char *tmp;
    char *scratch;
    int fds;
    config_t cfg; /* the last lfx_conf(), while has_cfg */
    int has_cfg;
};

/* Takes `path` (from lfx_plugin() or lfx_test_plugin(); NULL when that
 * has failed the test already). 0 when the test cannot run; then nothing
 * is left to free. Empties the host's log. */
int lfx_begin(struct fixture *f, char *path);
/* The plugin config group from "config = { ... };" text, or NULL. It lives
 * until the next call or lfx_end. */
const struct shmipc_plugin_conf *lfx_conf(struct fixture *f, const char *text);
/* The scratch directory, made on first use; ends the test (CUnit's FATAL)
 * when it cannot be made. */
const char *lfx_scratch(struct fixture *f);
/* Removes the scratch directory, then checks that tmp is empty and not
 * mapped and that the fd count is back, and frees everything. */
void lfx_end(struct fixture *f);

/* gen_load with the test host, asserting that it loaded. The generation
 * or NULL. */
struct plugin_gen *lfx_load(const char *path, const char *tmp, unsigned number, unsigned nworkers,
                            const struct shmipc_plugin_conf *conf);
/* Runs `checks` on generation 1 of the plugin at `path` (taken), loaded
 * with no config for `nworkers` workers, then unloads it. */
void lfx_run_loaded(char *path, unsigned nworkers, void (*checks)(struct plugin_gen *g));

#endif
