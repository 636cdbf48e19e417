/*
 * Loading handler plugins. A generation is one loaded copy of a plugin:
 * the .so is copied to a private per-generation file (so replacing the
 * original and dlopen's cache never mix versions), opened with
 * dlopen(RTLD_NOW|RTLD_LOCAL), its descriptor checked, and init() run.
 *
 * Ownership: a generation owns its dl handle, private copy and plugin
 * state; gen_unload() runs fini(), dlclose()s and removes the copy. Worker
 * thread states are created and destroyed by the workers themselves
 * (gen_thread_init / gen_thread_fini on their own thread). What a plugin's
 * handoff shares between two generations is the plugin's to count.
 */
#ifndef SHMIPC_SERVER_LOADER_H
#define SHMIPC_SERVER_LOADER_H

#include <stddef.h>

#include "shmipc/plugin.h"

/* How a generation got its state (gen_carry_state). */
enum gen_carry { GEN_CARRY_NONE, GEN_CARRY_HANDOFF, GEN_CARRY_RESTORE };

struct plugin_gen {
    void *dl;
    const struct shmipc_plugin *desc;
    void *state;                 /* from init() */
    void **thread_states;        /* one per worker, NULL until thread_init */
    unsigned nworkers;
    unsigned number;             /* generation number within its service */
    char *source;                /* the configured .so */
    char *private_path;          /* the private copy that was dlopen()ed */
    int refs;                    /* atomic: in-flight requests + the service */
    int checked_only;            /* loaded and checked, never init()ed (host NULL):
                                    the plugin runs in a worker process */
    void *host_ref;              /* the host's: what must outlive this generation */
    struct {
        enum gen_carry how;
        unsigned from;           /* the generation it came from */
        size_t bytes;            /* GEN_CARRY_RESTORE: the size of the saved state */
        char why[192];           /* GEN_CARRY_NONE while the new plugin has state
                                  * hooks: why they were not used; else "" */
    } carry;
};

/* Checks a descriptor against the host ABI. 0, or -EPROTO with err naming
 * the file and the mismatch ("wrong magic 0x..., expected 0x...", "ABI
 * major 2, host has 1", "ABI minor 5 is newer than the host's 1",
 * "descriptor size 40, expected 168"). */
int gen_check_descriptor(const struct shmipc_plugin *d, const char *file, char *err, size_t errlen);

/* Loads a generation: private copy under `tmpdir`, dlopen, descriptor
 * check, init(host, conf). On failure nothing is left behind (copy
 * removed, handle closed) and err says what and why, naming the file.
 * With host NULL the plugin is only checked: no init (nor fini at
 * unload); the master does that for a plugin that runs in a worker
 * process. */
int gen_load(const char *so_path, const char *tmpdir, unsigned number, unsigned nworkers,
             const struct shmipc_host_api *host, const struct shmipc_plugin_conf *conf,
             struct plugin_gen **out, char *err, size_t errlen);

/* Carries the state of `old` (serving) over to `neu` (loaded, not yet
 * serving), master thread: the plugin's handoff when both descriptors
 * have it and their names are equal; else, or when it declined, old's
 * save and neu's restore; else nothing. Records what happened in
 * neu->carry. 0 (also when nothing was carried), or -ECANCELED when a
 * hook failed, -ENOMEM; err then names neu's file, the plugin, the hook
 * and the plugin's message ("kv.so: plugin 'kv' 1.0.0: restore failed:
 * ..."). Both generations are left as they were: unload neu on failure. */
int gen_carry_state(struct plugin_gen *old, struct plugin_gen *neu, char *err, size_t errlen);

/* Process mode (the generations live in other processes; these are the
 * master's checked copies): 1 when old's save and neu's restore should
 * carry the state across, else 0 with neu->carry filled as
 * gen_carry_state() would (handoff cannot cross a process). */
int gen_carry_across(const struct plugin_gen *old, struct plugin_gen *neu);
/* The two halves of save/restore, for a generation in this process:
 * gen_save runs g's save hook (*data malloc'd, the caller frees it);
 * gen_restore runs g's restore on the bytes and records them in
 * g->carry (from: the generation saved). 0, or negative with err set
 * (-ENOSYS: g has no such hook). */
int gen_save(struct plugin_gen *g, uint8_t **data, size_t *len, char *err, size_t errlen);
int gen_restore(struct plugin_gen *g, unsigned from, const void *data, size_t len, char *err,
                size_t errlen);

/* Worker `w`, on its own thread: create / destroy its thread state. */
int gen_thread_init(struct plugin_gen *g, unsigned w, char *err, size_t errlen);
void gen_thread_fini(struct plugin_gen *g, unsigned w);

/* fini(), dlclose(), remove the private copy, free. Thread states must
 * have been finished already. */
void gen_unload(struct plugin_gen *g);

#endif
