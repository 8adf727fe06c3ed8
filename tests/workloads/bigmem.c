/* A process holding N MiB of filled anonymous memory, for speed measurements.
 *
 *   bigmem DIR MIB
 *
 * Fills the memory with a pattern (every page distinct, nothing zero), writes DIR/ready, then
 * sleeps in 100 ms ticks, appending "<tick> <checksum of the first MiB>" to DIR/big.log.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char path[4096];
    if (argc < 3)
        return 2;
    size_t bytes = (size_t)atol(argv[2]) << 20;
    uint64_t *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return 1;
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < bytes / 8; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        mem[i] = x;
    }
    snprintf(path, sizeof path, "%s/big.log", argv[1]);
    int log = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    snprintf(path, sizeof path, "%s/ready", argv[1]);
    close(open(path, O_WRONLY | O_CREAT, 0644));
    for (long tick = 1;; tick++) {
        uint64_t s = 0;
        for (size_t i = 0; i < (1u << 20) / 8 && i < bytes / 8; i++)
            s = s * 31 + mem[i];
        dprintf(log, "%ld %016llx\n", tick, (unsigned long long)s);
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}
