/* Threads whose credentials differ from their leader's (tests/test_restore.py).
 *
 * The kernel keeps credentials per thread: glibc's setuid() makes every thread call it, but a raw
 * system call changes the calling thread alone. Thread "dropped" takes groups {7, 8}, gids 1000
 * and uids 65534 (losing every capability), thread "secbits" keeps its ids but sets its own
 * securebits (SECBIT_NOROOT), drops CAP_NET_RAW from its bounding set and CAP_SYS_ADMIN from its
 * effective set; the main thread stays root with everything. Each thread logs its securebits to
 * DIR/creds.log every 50 ms; DIR/ready is made once all are set.
 *
 *   threadcreds DIR
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static FILE *out;
static pthread_barrier_t set;

static void must(long ret, const char *what) {
    if (ret != 0) { perror(what); exit(1); }
}

static void report(const char *who) {
    for (;;) {
        fprintf(out, "%s securebits=%ld\n", who, (long)syscall(SYS_prctl, PR_GET_SECUREBITS, 0, 0, 0, 0));
        fflush(out);
        usleep(50000);
    }
}

static void *dropped(void *arg) {
    gid_t groups[] = {7, 8};
    must(syscall(SYS_setgroups, 2, groups), "setgroups");
    must(syscall(SYS_setresgid, 1000, 1000, 1000), "setresgid");
    must(syscall(SYS_setresuid, 65534, 65534, 65534), "setresuid");
    prctl(PR_SET_NAME, "dropped");
    pthread_barrier_wait(&set);
    report("dropped");
    return arg;
}

static void *secbits(void *arg) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    must(syscall(SYS_prctl, PR_SET_SECUREBITS, 1 /* SECBIT_NOROOT */, 0, 0, 0), "securebits");
    must(syscall(SYS_prctl, PR_CAPBSET_DROP, 13 /* CAP_NET_RAW */, 0, 0, 0), "capbset_drop");
    must(syscall(SYS_capget, &h, d), "capget");
    d[0].effective &= ~(1u << 21); /* CAP_SYS_ADMIN */
    must(syscall(SYS_capset, &h, d), "capset");
    prctl(PR_SET_NAME, "secbits");
    pthread_barrier_wait(&set);
    report("secbits");
    return arg;
}

int main(int argc, char **argv) {
    char path[4096];
    pthread_t t;
    if (argc != 2) return 2;
    snprintf(path, sizeof path, "%s/creds.log", argv[1]);
    out = fopen(path, "a");
    if (!out) return 1;
    pthread_barrier_init(&set, NULL, 3);
    pthread_create(&t, NULL, dropped, NULL);
    pthread_create(&t, NULL, secbits, NULL);
    pthread_barrier_wait(&set);
    snprintf(path, sizeof path, "%s/ready", argv[1]);
    fclose(fopen(path, "w"));
    report("main");
    return 0;
}
