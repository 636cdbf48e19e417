/*
 * shmipc-reuse-peer: the Go and Rust libraries' read-slice reuse pattern
 * (reuse_peer.h) as a program, to run against any shmipc server or client
 * for as long as wanted.
 *
 *   shmipc-reuse-peer --connect ADDR [--file [--v3] --prefix /dev/shm/NAME]
 *                     [--size N[K|M]] [--count N] [--streams N] [--leave-files]
 *   shmipc-reuse-peer --serve unix:PATH [--sessions N] [--allowed-dir DIR]
 *
 * Prints one line of results; exits 0 when every answer was right and
 * every slice was back on a free list at the end, 1 otherwise, 2 on bad
 * arguments.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "reuse_peer.h"
#include "shmipc/shmipc.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: shmipc-reuse-peer --connect ADDR [--file [--v3] --prefix /dev/shm/NAME]\n"
            "                         [--size N[K|M]] [--count N] [--streams N] [--leave-files]\n"
            "                         [--timeout-ms MS]\n"
            "       shmipc-reuse-peer --serve unix:PATH [--sessions N] [--allowed-dir DIR]\n"
            "                         [--timeout-ms MS]\n"
            "Plays a shmipc peer that reuses each read slice for its next write, as the\n"
            "Go and Rust libraries do, and checks every answer and the pool at the end.\n");
}

static int parse_size(const char *s, uint32_t *out)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s)
        return -1;
    if (*end == 'K' || *end == 'k')
        v <<= 10, end++;
    else if (*end == 'M' || *end == 'm')
        v <<= 20, end++;
    if (*end != '\0' || v > (64u << 20))
        return -1;
    *out = (uint32_t)v;
    return 0;
}

static int parse_uint(const char *s, unsigned *out)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (end == s || *end != '\0' || v > 100000000ul)
        return -1;
    *out = (unsigned)v;
    return 0;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"connect", required_argument, NULL, 'c'},  {"serve", required_argument, NULL, 's'},
        {"file", no_argument, NULL, 'f'},           {"v3", no_argument, NULL, '3'},
        {"prefix", required_argument, NULL, 'p'},   {"size", required_argument, NULL, 'z'},
        {"count", required_argument, NULL, 'n'},    {"streams", required_argument, NULL, 'm'},
        {"sessions", required_argument, NULL, 'e'}, {"allowed-dir", required_argument, NULL, 'd'},
        {"leave-files", no_argument, NULL, 'l'},    {"timeout-ms", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},           {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    struct rp_client_opts co = {.size = 64, .count = 1000};
    struct rp_server_opts so = {.sessions = 1, .ready_fd = -1};
    unsigned tmo = 0;
    int c, bad = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            co.addr = optarg;
            break;
        case 's':
            so.addr = optarg;
            break;
        case 'f':
            co.file_mode = 1;
            break;
        case '3':
            co.version = 3;
            break;
        case 'p':
            co.shm_prefix = optarg;
            break;
        case 'z':
            bad |= parse_size(optarg, &co.size);
            break;
        case 'n':
            bad |= parse_uint(optarg, &co.count);
            break;
        case 'm':
            bad |= parse_uint(optarg, &co.streams);
            break;
        case 'e':
            bad |= parse_uint(optarg, &so.sessions);
            break;
        case 'd':
            so.allowed_dir = optarg;
            break;
        case 'l':
            co.leave_files = 1;
            break;
        case 't':
            bad |= parse_uint(optarg, &tmo);
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("shmipc-reuse-peer (shmipc) %s\n", SHMIPC_VERSION);
            return 0;
        default:
            bad = 1;
        }
    }
    if (bad || optind != argc || (co.addr == NULL) == (so.addr == NULL) ||
        (co.file_mode && co.shm_prefix == NULL)) {
        usage(stderr);
        return 2;
    }
    co.timeout_ms = so.timeout_ms = (int)tmo;
    struct rp_report r;
    int rc;
    if (co.addr != NULL) {
        rc = rp_client_run(&co, &r);
        printf("reuse-peer client: %s %s size=%u roundtrips=%llu reused=%llu ns_per_rt=%.0f "
               "free=%u/%u%s%s\n",
               co.addr, co.file_mode ? "file" : "memfd", co.size, (unsigned long long)r.roundtrips,
               (unsigned long long)r.reused,
               r.roundtrips ? (double)r.ns / (double)r.roundtrips : 0.0, r.free_slices,
               r.total_slices, rc < 0 ? " FAILED: " : "", rc < 0 ? r.why : "");
    } else {
        rc = rp_server_run(&so, &r);
        printf("reuse-peer server: %s sessions=%u answers=%llu reused=%llu free=%u/%u%s%s\n",
               so.addr, so.sessions, (unsigned long long)r.roundtrips, (unsigned long long)r.reused,
               r.free_slices, r.total_slices, rc < 0 ? " FAILED: " : "", rc < 0 ? r.why : "");
    }
    return rc < 0 ? 1 : 0;
}
