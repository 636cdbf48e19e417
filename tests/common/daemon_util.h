/*
 * Helpers for the programs that test the real shmipcd (the daemon and
 * reload suites, the soak programs, shmipc-hostile): where the binaries
 * and plugins are, programs run with a deadline, a shmipcd in a mkdtemp
 * directory with a configuration written for it, its admin socket, and
 * what /proc says of a process. The prefix du_ stands for daemon_util.
 *
 * The one rule: nothing here asserts or exits. Results come back as
 * return values (0 or a count, negative on failure) for the caller to
 * judge, since the soak programs have no CUnit. Every wait has a deadline.
 * A `const char *` returned by a path helper lives in a static buffer that
 * the next few calls reuse (not thread-safe); du_read_file's result is the
 * caller's to free.
 */
#ifndef SHMIPC_DAEMON_UTIL_H
#define SHMIPC_DAEMON_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/* ---- time ---- */

uint64_t du_now_ns(void);
uint64_t du_deadline(int ms);
int du_past(uint64_t deadline_ns);
/* Whole ms until the deadline, 0 once it passed. */
int du_left_ms(uint64_t deadline_ns);
/* Sleeps ms, resumed after a signal. */
void du_sleep_ms(int ms);

/* ---- where things are ---- */

/* The directory of this program (/proc/self/exe). */
const char *du_exe_dir(void);
/* $SHMIPC_BIN/<name>, else du_exe_dir()/../bin/<name>: the defaults suit a
 * program in $TOP/tests (unit_tests). The buffer is one of 2. */
const char *du_bin_path(const char *name);
/* $SHMIPC_PLUGINS/<name>.so, else du_exe_dir()/../plugins (one of 4). */
const char *du_plugin_path(const char *name);
/* $SHMIPC_TEST_PLUGINS/<name>.so, else du_exe_dir()/plugins (one of 4). */
const char *du_test_plugin_path(const char *name);

/* ---- files and text ---- */

/* The whole file, NUL-terminated (its length in *len when len is not
 * NULL); NULL when it cannot be read. */
char *du_read_file(const char *path, size_t *len);
/* Writes a whole new file and renames it into place: a reader (a reload)
 * sees the old text or the new one, never half of it. 0 or -errno. */
int du_write_file(const char *path, const char *text);
/* Copies src over dst the way a deployment does: a new file renamed into
 * place. 0 or -errno. */
int du_copy_file(const char *src, const char *dst);
int du_exists(const char *path);
/* Occurrences of needle in hay (0 for a NULL hay or an empty needle). */
int du_count_str(const char *hay, const char *needle);
/* Lines of text (a NULL text has none) equal to `line`. */
int du_count_lines(const char *text, const char *line);
/* The sanitizer runtimes' report marker found in text, or NULL. */
const char *du_sanitizer_report(const char *text);
/* Entries of dir (not . and ..) whose name starts with prefix. */
int du_count_prefix(const char *dir, const char *prefix);
/* Names those entries on stderr ("    <dir>/<name>", a line each), for a
 * leftover check's failure report; how many there were. */
int du_show_prefix(const char *dir, const char *prefix);
/* Removes those entries (empty directories too); how many went. */
int du_remove_prefix(const char *dir, const char *prefix);
/* Removes dir's entries and dir itself: 0 or -errno (from rmdir). */
int du_remove_dir(const char *dir);
/* Directories /tmp/shmipcd-<pid>-* (shmipcd's private plugin copies)
 * still there; with `remove`, they go with their files. */
int du_daemon_tmpdirs(pid_t pid, int remove);

/* ---- processes ---- */

/* Open fds of pid (/proc/<pid>/fd entries), -1 when unreadable. */
int du_count_fds(pid_t pid);
/* Shared mappings of pid: what regions and pools create, while malloc and
 * the sanitizer runtimes add and drop private ones as they please. */
int du_count_shared_maps(pid_t pid);
/* The kB value of `key` ("VmRSS", "RssAnon", ...) in the text of a
 * /proc/<pid>/status file; -1 when absent. */
long du_status_kib(const char *status, const char *key);
/* The same, read from /proc/<pid>/status. */
long du_proc_kib(pid_t pid, const char *key);

/* Closes every fd of this process but stdio and keep[0..nkeep) (in a
 * forked child: it must not hold the parent's pipes or sockets). */
void du_close_fds_except(const int *keep, int nkeep);

struct du_spawn_opts {
    /* posix_spawn instead of fork: the only safe way in a process with
     * threads. No code of ours runs in the child then, so the three
     * fields below must stay 0. */
    int no_fork;
    int die_with_parent;       /* PR_SET_PDEATHSIG SIGKILL */
    unsigned alarm_s;          /* alarm() in the child: it survives exec */
    const char *asan_defaults; /* put before $ASAN_OPTIONS, whose own settings win */
};

/* Starts argv[0] with stdin from /dev/null and stdout+stderr on out_fd;
 * a forked child keeps no other fd. opts may be NULL. pid or -1. */
pid_t du_spawn(const char *const *argv, int out_fd, const struct du_spawn_opts *opts);
/* A soak program's command line, [SECONDS] (5 .. 86400) or --help:
 * -1 to go on (*secs set when given), else the exit code (0 after the
 * help, 2 after a bad argument, usage said). */
int du_soak_seconds(int argc, char **argv, void (*usage)(FILE *f), unsigned *secs);
/* The rest of a soak program's start: every file of need[] readable
 * (else said, as `who: path: why`), SIGPIPE ignored, on_signal for SIGINT
 * and SIGTERM. 0, or 2 (the exit code) when a file is missing. */
int du_soak_prepare(const char *who, const char *const *need, unsigned n, void (*on_signal)(int));
/* 1 when pid is gone (or a zombie: not ours to reap). */
int du_gone(pid_t pid);
/* Waits until du_gone(pid), up to timeout_ms. 0 or -1. */
int du_wait_gone(pid_t pid, int timeout_ms);
/* Reaps pid within timeout_ms, SIGKILL after (said on stderr). Its exit
 * code, 128+signal, or -1 (killed at the deadline, or not our child). */
int du_reap(pid_t pid, int timeout_ms);
/* Runs argv with stdout+stderr into out (NUL-terminated, cut at cap).
 * Its exit code (128+signal), or -1 when it outlived timeout_ms (then it
 * was killed) or could not start. */
int du_run_capture(const char *const *argv, char *out, size_t cap, int timeout_ms,
                   const struct du_spawn_opts *opts);

/* ---- sockets ---- */

/* Connects to "unix:/path" or "/path": the fd (close-on-exec) or -errno. */
int du_connect(const char *addr);
/* One command on shmipcd's admin socket (addr as for du_connect): the
 * reply, NUL-terminated and cut at cap, read until shmipcd closes or
 * timeout_ms passed. Its length or -errno. */
int du_admin(const char *addr, const char *cmd, char *out, size_t cap, int timeout_ms);

/* ---- a shmipcd of a test ---- */

struct du_daemon {
    char dir[64];         /* mkdtemp; "" when none */
    char conf[128];       /* what it starts on: <dir>/shmipcd.conf unless set */
    char log[128];        /* <dir>/shmipcd.log: its stdout and stderr, appended */
    char admin_path[128]; /* <dir>/admin.sock */
    char admin[160];      /* "unix:<dir>/admin.sock" */
    char shmipcd[4200];   /* the binary: du_bin_path("shmipcd") unless set */
    struct du_spawn_opts spawn;
    pid_t pid;      /* running, 0 when none */
    int pid_is_child; /* pid is ours (du_start), not an upgrade's successor */
    pid_t last_pid; /* the last one started, for leftover checks */
};

/* Makes the directory from dir_template ("/tmp/...-XXXXXX") and fills in
 * the paths. 0 or -errno (then d->dir is ""). */
int du_init(struct du_daemon *d, const char *dir_template);
/* "<dir>/<name>" (one of 8 buffers). */
const char *du_path(const struct du_daemon *d, const char *name);
/* "unix:<dir>/<svc>.sock" (one of 8 buffers). */
const char *du_addr(const struct du_daemon *d, const char *svc);
/* Starts shmipcd -c d->conf. 0 once it answers `status` on its admin
 * socket (every listener is open by then: the admin socket comes last).
 * When it exited instead: its exit code (128+signal; -1 for 0), d->pid is
 * 0. -1 when it did not answer within timeout_ms (said on stderr; it is
 * left running). */
int du_start(struct du_daemon *d, int timeout_ms);
/* Sends sig and reaps: the exit code, -1 if SIGKILL was needed after
 * timeout_ms, 0 when nothing runs. */
int du_stop(struct du_daemon *d, int sig, int timeout_ms);
/* Waits for shmipcd to exit by itself: its exit code, -1 on a timeout or
 * when nothing runs. */
int du_wait_exit(struct du_daemon *d, int timeout_ms);

/* Reads d->log: the sanitizer report marker in it, or NULL. With a
 * report, or with `show`, its last part goes to stderr. */
const char *du_log_check(const struct du_daemon *d, int show);

/* A configuration text, built up in a fixed buffer (cut at its size). */
struct du_conf {
    char b[8192];
    size_t n;
};

void du_conf_add(struct du_conf *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* workers = 2, log level info, d's admin socket, limits (a text of
 * "key = value;" pairs; no limits group when NULL), and the opening of the
 * service list. */
void du_conf_head(struct du_conf *c, const struct du_daemon *d, const char *limits);
/* One service entry listening on du_addr(d, name), with the plugin's
 * config group (empty when NULL), without separator or newline. */
void du_service_entry(char *b, size_t cap, const struct du_daemon *d, const char *name,
                      const char *plugin, const char *config);
/* Appends a service entry; `first` for the first of the list. */
void du_conf_service(struct du_conf *c, const struct du_daemon *d, int first, const char *name,
                     const char *plugin, const char *config);
/* Closes the service list and writes the text to <dir>/<file>, which
 * becomes d->conf. 0 or -errno. */
int du_conf_write(struct du_conf *c, struct du_daemon *d, const char *file);

/* A soak program's failure: "<who>: FAIL: <message>" on stderr, and
 * *failures counted up. */
void du_fail(const char *who, int *failures, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
