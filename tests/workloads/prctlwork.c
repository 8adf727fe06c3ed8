/* State a process or thread has only prctl(2) to show (tests/test_restore.py).
 *
 *   prctlwork DIR MDWE TSC
 *
 * The process maps a page writable and executable (as a JIT does), then sets memory-deny-write-
 * execute with PR_SET_MDWE(MDWE) unless MDWE is 0, and starts a second thread, "worker". Thread
 * TSC ("main", "worker" or "none") then makes its rdtsc fault with PR_SET_TSC(PR_TSC_SIGSEGV),
 * after the worker was started (a clone inherits it). Each thread logs "NAME mdwe=M wx=W tsc=T"
 * to DIR/prctl.log every 50 ms, M being what PR_GET_MDWE says, W whether a new writable and
 * executable mapping can be made (1) or is refused (0), T what PR_GET_TSC says; DIR/ready once
 * both run. Nothing here reads a clock through the vdso, which uses rdtsc: usleep is a system call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define PR_SET_MDWE 65
#define PR_GET_MDWE 66

static int out;
static const char *tsc_who;
static pthread_barrier_t started;

static void must(long ret, const char *what) {
    if (ret != 0) { perror(what); exit(1); }
}

static int can_map_wx(void) {
    void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return 0;
    munmap(p, 4096);
    return 1;
}

static void report(const char *who) {
    char line[128];
    int tsc;
    if (strcmp(who, tsc_who) == 0)
        must(syscall(SYS_prctl, PR_SET_TSC, PR_TSC_SIGSEGV, 0, 0, 0), "PR_SET_TSC");
    for (;;) {
        tsc = 0;
        must(syscall(SYS_prctl, PR_GET_TSC, &tsc, 0, 0, 0), "PR_GET_TSC");
        int n = snprintf(line, sizeof line, "%s mdwe=%ld wx=%d tsc=%d\n", who,
                         (long)syscall(SYS_prctl, PR_GET_MDWE, 0, 0, 0, 0), can_map_wx(), tsc);
        if (write(out, line, n) != n) exit(1); /* one write a line: O_APPEND keeps them whole */
        usleep(50000);
    }
}

static void *worker(void *arg) {
    prctl(PR_SET_NAME, "worker");
    pthread_barrier_wait(&started);
    report("worker");
    return arg;
}

int main(int argc, char **argv) {
    char path[4096];
    pthread_t t;
    long mdwe;
    unsigned char *jit;
    if (argc != 4) return 2;
    mdwe = strtol(argv[2], NULL, 0);
    tsc_who = argv[3];
    snprintf(path, sizeof path, "%s/prctl.log", argv[1]);
    out = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (out < 0) return 1;
    jit = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (jit == MAP_FAILED) return 1;
    jit[0] = 0xc3; /* ret: its memory written, as a JIT's is */
    if (mdwe)
        must(syscall(SYS_prctl, PR_SET_MDWE, mdwe, 0, 0, 0), "PR_SET_MDWE");
    pthread_barrier_init(&started, NULL, 2);
    pthread_create(&t, NULL, worker, NULL);
    pthread_barrier_wait(&started);
    snprintf(path, sizeof path, "%s/ready", argv[1]);
    close(open(path, O_WRONLY | O_CREAT, 0644));
    report("main");
    return 0;
}
