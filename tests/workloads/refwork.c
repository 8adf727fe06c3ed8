/* Reference workload for dump/restore tests: run as pid 1 of a new pid namespace.
 *
 *   refwork DIR
 *
 * pid 1 ("reader") forks a "writer" and a "threads" process (the latter with two extra
 * pthreads). Every task appends one line per tick to DIR/ref.log through ONE shared,
 * non-O_APPEND open file description (so the restored offset matters):
 *
 *   <pid> <tid> <role> <tick> <checksum> <extra>
 *
 * Each process fills 2 MiB of anonymous memory with a pattern seeded by its pid and prints its
 * checksum every tick (it must never change). The writer writes byte wc%256 to a pipe every
 * tick; the reader reads one byte every other tick, so bytes stay buffered, and checks each is
 * the next expected value (extra "pipe=ok" or "pipe=BAD"). The writer also stores wc in a
 * MAP_SHARED|MAP_ANONYMOUS page the reader shows as "shared=N". The reader counts SIGUSR1s in a
 * handler ("usr1=N") and shows CLOCK_MONOTONIC in ms ("mono=N", read through the vDSO).
 * Ticks are 50 ms of clock_nanosleep.
 * DIR/ready appears once every task runs.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define REGION_BYTES (2u << 20)

static int logfd;
static volatile long *shared;
static volatile sig_atomic_t usr1;

static void on_usr1(int sig)
{
    (void)sig;
    usr1++;
}
static uint64_t *region;

static void logline(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (write(logfd, buf, n) != n)
        _exit(3);
}

static void fill(uint64_t seed)
{
    region = mmap(NULL, REGION_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED)
        _exit(4);
    uint64_t x = seed * 0x9E3779B97F4A7C15ull | 1;
    for (size_t i = 0; i < REGION_BYTES / 8; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        region[i] = x;
    }
}

static uint64_t checksum(void)
{
    uint64_t s = 0;
    for (size_t i = 0; i < REGION_BYTES / 8; i++)
        s = s * 31 + region[i];
    return s;
}

static void tick_sleep(void)
{
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

static void *thread_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "refwork-worker");  /* a thread's own comm: restore keeps it */
    for (long tick = 1;; tick++) {
        logline("%d %d thread %ld %016llx -\n", getpid(), gettid(), tick, (unsigned long long)checksum());
        tick_sleep();
    }
    return NULL;
}

int main(int argc, char **argv)
{
    char path[4096];
    int p[2];
    if (argc < 2)
        return 2;
    snprintf(path, sizeof path, "%s/ref.log", argv[1]);
    logfd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (logfd < 0 || pipe(p) < 0)
        return 1;
    shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED)
        return 1;
    if (fork() == 0) {
        close(p[0]);
        fill(getpid());
        for (long tick = 1, wc = 0;; tick++) {
            unsigned char c = wc & 0xff;
            if (write(p[1], &c, 1) == 1)
                wc++;
            *shared = wc;
            logline("%d %d writer %ld %016llx wc=%ld\n", getpid(), gettid(), tick,
                    (unsigned long long)checksum(), wc);
            tick_sleep();
        }
    }
    close(p[1]);
    if (fork() == 0) {
        close(p[0]);
        fill(getpid());
        pthread_t t;
        for (int i = 0; i < 2; i++)
            pthread_create(&t, NULL, thread_main, NULL);
        for (long tick = 1;; tick++) {
            logline("%d %d threads %ld %016llx -\n", getpid(), gettid(), tick, (unsigned long long)checksum());
            tick_sleep();
        }
    }
    fill(getpid());
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    usleep(200 * 1000);
    snprintf(path, sizeof path, "%s/ready", argv[1]);
    close(open(path, O_WRONLY | O_CREAT, 0644));
    int ok = 1;
    for (long tick = 1, rc = 0;; tick++) {
        if (tick % 2 == 0) {
            unsigned char c;
            if (read(p[0], &c, 1) == 1) {
                ok = ok && c == (rc & 0xff);
                rc++;
            }
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now); /* through the vDSO: needs vvar where it expects it */
        logline("%d %d reader %ld %016llx rc=%ld shared=%ld usr1=%d mono=%lld pipe=%s\n", getpid(), gettid(),
                tick, (unsigned long long)checksum(), rc, *shared, (int)usr1,
                (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000, ok ? "ok" : "BAD");
        tick_sleep();
    }
}
