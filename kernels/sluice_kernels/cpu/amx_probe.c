/* AMX usability probe, run in a throwaway process by amx_probe.py: a fault here (SIGILL in a VM
 * that lists AMX in CPUID but does not context-switch its tile state) must not reach the server.
 * It asks Linux for the tile data permission, then configures and zeroes a tile in the main thread
 * and in a second thread (ggml's AMX path faults in worker threads, so both are checked). */
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static int use_tiles(void) {
    unsigned char cfg[64];
    memset(cfg, 0, sizeof cfg);
    cfg[0] = 1;                       /* palette 1 */
    cfg[16] = 64; cfg[48] = 16;       /* tile 0: 16 rows of 64 bytes */
    int32_t out[16][16];
    _tile_loadconfig(cfg);
    _tile_zero(0);
    _tile_stored(0, out, 64);
    _tile_release();
    return out[3][3] == 0 ? 0 : 1;
}

static void *worker(void *arg) {
    *(int *)arg = use_tiles();
    return NULL;
}

int main(void) {
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) {
        puts("arch_prctl(ARCH_REQ_XCOMP_PERM) refused");
        return 3;
    }
    if (use_tiles() != 0) return 4;
    int rc = -1;
    pthread_t t;
    if (pthread_create(&t, NULL, worker, &rc) != 0 || pthread_join(t, NULL) != 0) return 5;
    if (rc != 0) return 6;
    puts("ok");
    return 0;
}
