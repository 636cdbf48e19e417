/*
 * The SIGBUS guard (see guard.h). The one rule: the handler only reads the
 * slot table with atomic loads and calls mmap(), so it is safe whatever
 * the interrupted thread was doing. Slots are claimed with a CAS on their
 * base, so adding and removing take no lock either.
 */
#include "shm/guard.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct slot {
    uintptr_t base; /* 0: free */
    size_t size;
    int tripped;
};

static struct slot slots[GUARD_SLOTS];
static struct sigaction previous;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static int install_rc;

static void on_sigbus(int sig, siginfo_t *si, void *ctx)
{
    uintptr_t addr = (uintptr_t)si->si_addr;
    for (int i = 0; i < GUARD_SLOTS; i++) {
        uintptr_t base = __atomic_load_n(&slots[i].base, __ATOMIC_ACQUIRE);
        size_t size = __atomic_load_n(&slots[i].size, __ATOMIC_RELAXED);
        if (base == 0 || addr < base || addr - base >= size)
            continue;
        uintptr_t page = addr & ~(uintptr_t)(sysconf(_SC_PAGESIZE) - 1);
        if (mmap((void *)page, (size_t)sysconf(_SC_PAGESIZE), PROT_READ | PROT_WRITE,
                 MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == MAP_FAILED)
            break; /* cannot repair: fall through to the default action */
        __atomic_store_n(&slots[i].tripped, 1, __ATOMIC_RELEASE);
        return;
    }
    if (previous.sa_flags & SA_SIGINFO && previous.sa_sigaction != NULL) {
        previous.sa_sigaction(sig, si, ctx);
        return;
    }
    if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN &&
        previous.sa_handler != NULL) {
        previous.sa_handler(sig);
        return;
    }
    signal(SIGBUS, SIG_DFL);
    raise(SIGBUS);
}

static void install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    install_rc = sigaction(SIGBUS, &sa, &previous) < 0 ? -errno : 0;
}

int guard_install(void)
{
    pthread_once(&once, install);
    return install_rc;
}

int guard_add(void *base, size_t size)
{
    for (int i = 0; i < GUARD_SLOTS; i++) {
        uintptr_t expect = 0;
        /* Claim with a placeholder so the handler never sees half a slot. */
        if (!__atomic_compare_exchange_n(&slots[i].base, &expect, (uintptr_t)1, 0,
                                         __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
            continue;
        __atomic_store_n(&slots[i].size, size, __ATOMIC_RELAXED);
        __atomic_store_n(&slots[i].tripped, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&slots[i].base, (uintptr_t)base, __ATOMIC_RELEASE);
        return i;
    }
    return -ENOSPC;
}

void guard_remove(int slot)
{
    if (slot < 0 || slot >= GUARD_SLOTS)
        return;
    __atomic_store_n(&slots[slot].size, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&slots[slot].base, 0, __ATOMIC_RELEASE);
}

int guard_tripped(int slot)
{
    if (slot < 0 || slot >= GUARD_SLOTS)
        return 0;
    return __atomic_load_n(&slots[slot].tripped, __ATOMIC_ACQUIRE);
}
