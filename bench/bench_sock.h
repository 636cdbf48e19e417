/*
 * shmipc-bench's baseline (bench_sock.c): the unix-socket and TCP server
 * and client rows.
 */
#ifndef SHMIPC_BENCH_SOCK_H
#define SHMIPC_BENCH_SOCK_H

#include "bench_util.h"

struct sock_opts {
    int tcp;          /* 0: unix socket at path; 1: TCP on 127.0.0.1 */
    const char *path; /* unix */
    unsigned threads; /* server threads */
    int sockbuf;      /* SO_SNDBUF/SO_RCVBUF bytes; 0 leaves the defaults */
};
/* Listens (in this process), forks the server child; the listener's
 * address is kept in *srv for clients. */
struct sock_server {
    int tcp;
    char path[108];
    uint16_t port;
    pid_t pid;
    int sockbuf;
};
int sock_server_start(const struct sock_opts *o, struct sock_server *srv);
struct sock_client;
int sock_client_open(const struct sock_server *srv, size_t size, unsigned conc,
                     struct sock_client **out);
void sock_client_close(struct sock_client *c);
int sock_row(struct sock_client *c, const struct row_params *p, struct row_result *r);

#endif
