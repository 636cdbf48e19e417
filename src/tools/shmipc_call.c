/*
 * shmipc-call [options] ADDR [REQUEST | -f FILE | -]: sends one request to
 * any shmipc service (shmipcd's plugins, a library server, a Go or Rust
 * peer) and prints its answer: as text with non-printable bytes escaped
 * (default), as hex, or as raw bytes. The request is the argument, the
 * file, or standard input (`-` or nothing).
 *
 * Exit status: 0 when an answer came; 1 when none did (a timeout, a stream
 * the service closed, or no connection: stderr says which); 2 on bad usage.
 * Only the public API: what any application linking libshmipc can do.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shmipc/shmipc.h"

#define MAX_REQUEST (1u << 30) /* more than any server takes (max_event_bytes) */

enum format { FMT_TEXT, FMT_HEX, FMT_RAW };

static void usage(FILE *f)
{
    fprintf(f, "usage: shmipc-call [--file|--memfd] [--timeout-ms N] [--hex|--raw|--text]\n"
               "                   ADDR [REQUEST | -f FILE | -]\n"
               "Sends one request to the shmipc service at ADDR (unix:/path, /path or\n"
               "tcp:host:port) and prints the answer.\n"
               "  REQUEST          the request's bytes; -f FILE reads them from FILE, - (or\n"
               "                   nothing) from standard input; -- before a REQUEST that\n"
               "                   starts with -\n"
               "  --memfd          pass the shared memory as memfds (default; unix sockets)\n"
               "  --file           use /dev/shm files (the only mode over tcp:, its default)\n"
               "  --timeout-ms N   wait N ms to connect and N ms for the answer (default 5000)\n"
               "  --text           the answer as text, \\n \\t \\r \\\\ and \\xHH escaped, then a\n"
               "                   newline (default)\n"
               "  --hex            the answer in hex, 32 bytes a line\n"
               "  --raw            the answer's bytes as they are\n"
               "  -h, --help       this text\n"
               "  --version        the version\n"
               "Exit status: 0 answered; 1 no answer (timeout, stream closed by the\n"
               "service, no connection; stderr says which); 2 bad usage.\n"
               "Example (shmipcd's kv plugin): shmipc-call unix:/run/shmipcd/kv.sock 'GET k'\n");
}

/* The whole of f into *buf (malloc'd), at most MAX_REQUEST bytes. */
static int read_all(FILE *f, char **buf, size_t *len)
{
    size_t cap = 4096, n = 0;
    char *b = malloc(cap);
    if (b == NULL)
        return -ENOMEM;
    for (;;) {
        if (n == cap) {
            if (cap >= MAX_REQUEST) {
                free(b);
                return -EFBIG;
            }
            char *nb = realloc(b, cap * 2);
            if (nb == NULL) {
                free(b);
                return -ENOMEM;
            }
            b = nb;
            cap *= 2;
        }
        size_t got = fread(b + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                free(b);
                return -EIO;
            }
            break;
        }
    }
    *buf = b;
    *len = n;
    return 0;
}

static void put_text(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        if (c == '\\')
            fputs("\\\\", stdout);
        else if (c == '\n')
            fputs("\\n", stdout);
        else if (c == '\t')
            fputs("\\t", stdout);
        else if (c == '\r')
            fputs("\\r", stdout);
        else if (c < 0x20 || c > 0x7e)
            printf("\\x%02x", c);
        else
            putchar(c);
    }
}

/* The answer on stdout; 0, or -1 when stdout failed. */
static int print_answer(const shmipc_msg *m, enum format fmt)
{
    size_t col = 0;
    for (unsigned k = 0; k < m->niov; k++) {
        const uint8_t *p = m->iov[k].base;
        size_t n = m->iov[k].len;
        if (fmt == FMT_RAW) {
            fwrite(p, 1, n, stdout);
        } else if (fmt == FMT_TEXT) {
            put_text(p, n);
        } else {
            for (size_t i = 0; i < n; i++) {
                printf("%02x", p[i]);
                if (++col % 32 == 0 && col < m->len)
                    putchar('\n');
            }
        }
    }
    if (fmt != FMT_RAW)
        putchar('\n');
    return fflush(stdout) == 0 && !ferror(stdout) ? 0 : -1;
}

/* Sends req to addr and prints the answer; the exit status. */
static int call(const char *addr, int mode, int timeout_ms, const char *req, size_t len,
                enum format fmt)
{
    struct shmipc_client_config cfg;
    shmipc_client_config_init(&cfg);
    cfg.address = addr;
    cfg.mode = mode;
    cfg.connect_timeout_ms = timeout_ms;
    shmipc_client *c;
    int rc = shmipc_client_open(&cfg, &c);
    if (rc < 0) {
        fprintf(stderr, "shmipc-call: %s: cannot connect: %s\n", addr, shmipc_strerror(rc));
        return 1;
    }
    shmipc_stream *st;
    shmipc_msg m;
    int status = 1;
    if ((rc = shmipc_client_get(c, &st)) < 0) {
        fprintf(stderr, "shmipc-call: %s: no stream: %s\n", addr, shmipc_strerror(rc));
        shmipc_client_close(c);
        return 1;
    }
    rc = shmipc_call(st, req, len, &m, timeout_ms);
    if (rc == 0) {
        status = 0;
        if (print_answer(&m, fmt) < 0) {
            fprintf(stderr, "shmipc-call: writing the answer: %s\n", strerror(errno));
            status = 1;
        }
        shmipc_msg_release(&m);
    } else if (rc == SHMIPC_ETIMEDOUT) {
        fprintf(stderr, "shmipc-call: %s: timeout: no answer within %d ms\n", addr, timeout_ms);
    } else if (rc == SHMIPC_ECLOSED) {
        fprintf(stderr,
                "shmipc-call: %s: closed: the service closed the stream without an "
                "answer\n",
                addr);
    } else {
        fprintf(stderr, "shmipc-call: %s: %s\n", addr, shmipc_strerror(rc));
    }
    shmipc_stream_close(st);
    shmipc_client_close(c);
    return status;
}

int main(int argc, char **argv)
{
    enum { OPT_FILE = 256, OPT_MEMFD, OPT_TIMEOUT, OPT_TEXT, OPT_HEX, OPT_RAW, OPT_VERSION };
    static const struct option opts[] = {
        {"file", no_argument, NULL, OPT_FILE},
        {"memfd", no_argument, NULL, OPT_MEMFD},
        {"timeout-ms", required_argument, NULL, OPT_TIMEOUT},
        {"text", no_argument, NULL, OPT_TEXT},
        {"hex", no_argument, NULL, OPT_HEX},
        {"raw", no_argument, NULL, OPT_RAW},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
    };
    int mode = -1, timeout_ms = 5000, opt;
    enum format fmt = FMT_TEXT;
    const char *file = NULL;
    while ((opt = getopt_long(argc, argv, "f:h", opts, NULL)) != -1) {
        char *end;
        long v;
        switch (opt) {
        case OPT_FILE:
        case OPT_MEMFD:
            mode = opt == OPT_FILE ? SHMIPC_MODE_FILE : SHMIPC_MODE_MEMFD;
            break;
        case OPT_TIMEOUT:
            errno = 0;
            v = strtol(optarg, &end, 10);
            if (errno != 0 || end == optarg || *end != '\0' || v < 1 || v > 86400000) {
                fprintf(stderr, "shmipc-call: --timeout-ms: %s is not 1..86400000\n", optarg);
                return 2;
            }
            timeout_ms = (int)v;
            break;
        case OPT_TEXT:
        case OPT_HEX:
        case OPT_RAW:
            fmt = opt == OPT_TEXT ? FMT_TEXT : opt == OPT_HEX ? FMT_HEX : FMT_RAW;
            break;
        case 'f':
            file = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case OPT_VERSION:
            printf("shmipc-call (shmipc) %s\n", SHMIPC_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    int npos = argc - optind;
    if (npos < 1 || npos > 2 || (file != NULL && npos == 2)) {
        usage(stderr);
        return 2;
    }
    const char *addr = argv[optind];
    int tcp = strncmp(addr, "tcp:", 4) == 0;
    if (tcp && mode == SHMIPC_MODE_MEMFD) {
        fprintf(stderr, "shmipc-call: --memfd needs a unix socket (fds cannot cross TCP)\n");
        return 2;
    }
    if (mode < 0)
        mode = tcp ? SHMIPC_MODE_FILE : SHMIPC_MODE_MEMFD;

    char *req = NULL;
    size_t len = 0;
    if (npos == 2 && strcmp(argv[optind + 1], "-") != 0) {
        len = strlen(argv[optind + 1]);
        req = malloc(len + 1);
        if (req == NULL)
            return 1;
        memcpy(req, argv[optind + 1], len);
    } else {
        FILE *f = file != NULL ? fopen(file, "rb") : stdin;
        if (f == NULL) {
            fprintf(stderr, "shmipc-call: %s: %s\n", file, strerror(errno));
            return 2;
        }
        int rc = read_all(f, &req, &len);
        if (f != stdin)
            fclose(f);
        if (rc < 0) {
            fprintf(stderr, "shmipc-call: reading %s: %s\n", file ? file : "standard input",
                    rc == -EFBIG ? "larger than 1 GiB" : strerror(-rc));
            return rc == -EFBIG ? 2 : 1;
        }
    }
    signal(SIGPIPE, SIG_IGN); /* a closed stdout is an error from fwrite */
    int status = call(addr, mode, timeout_ms, req, len, fmt);
    free(req);
    return status;
}
