/* Test workload for `ckptrace dump`: run as pid 1 of a new pid namespace.
 * argv[1] = directory for the ready file and the data file; argv[2] = optional mode:
 *   "plain" (default), "nested" (also starts a nested pid namespace), "pidfd" (holds a pidfd),
 *   "big" (1 MiB x argv[3] of filled anonymous memory), "strict" (a thread in seccomp strict mode).
 * Process 1: a busy thread and a sleeping thread, an open file at a known offset, a pipe with
 * bytes left in it, a unix socketpair, a listening TCP socket, an eventfd, a filled heap buffer.
 * Its child: one extra thread, the pipe's write end, a shared anonymous mapping it shares with
 * its parent. Everyone writes progress to memory so the test can compare pages. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile unsigned long counter;
static unsigned char *heap_pattern;

static void on_usr2(int sig) { (void)sig; }

static void *busy(void *arg) {
    (void)arg;
    for (;;) counter++;
    return NULL;
}

static void *sleeper(void *arg) {
    (void)arg;
    for (;;) pause();
    return NULL;
}

/* Strict mode allows read, write, exit and sigreturn only: block in read for good. */
static void *strict_thread(void *arg) {
    int pp[2];
    char c;
    (void)arg;
    if (pipe(pp) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0)
        return NULL;
    for (;;)
        read(pp[0], &c, 1);
}

int main(int argc, char **argv) {
    const char *dir = argv[1];
    const char *mode = argc > 2 ? argv[2] : "plain";
    char path[4096];
    pthread_t t;

    snprintf(path, sizeof path, "%s/data", dir);
    int f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (write(f, "hello checkpoint\n", 17) != 17) return 1;
    lseek(f, 6, SEEK_SET);

    int p[2];
    if (pipe(p)) return 1;
    if (write(p[1], "buffered", 8) != 8) return 1;

    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(l, (struct sockaddr *)&a, sizeof a);
    listen(l, 7);
    int e = eventfd(5, EFD_CLOEXEC);
    (void)e;

    size_t n = 256 << 10;
    if (!strcmp(mode, "big") && argc > 3) n = (size_t)atol(argv[3]) << 20;
    int big = !strcmp(mode, "big");
    heap_pattern = malloc(n);
    /* "big": filled after the fork, so only pid 1 holds the bulk (not two COW copies). */
    if (!big)
        for (size_t i = 0; i < n; i++) heap_pattern[i] = (unsigned char)(i * 7 + 3);

    unsigned char *shared = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    memcpy(shared, "shared page", 12);

    if (!strcmp(mode, "strict"))
        pthread_create(&t, NULL, strict_thread, NULL);
    if (!strcmp(mode, "pidfd")) {
        int pfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
        (void)pfd;
    }

    pid_t child = fork();
    if (child == 0) {
        close(p[0]);
        pthread_create(&t, NULL, sleeper, NULL);
        for (;;) { shared[100]++; shared[4096 + 100]++; usleep(10000); }  /* page 2: only the child maps it */
    }
    if (!strcmp(mode, "nested")) {
        if (fork() == 0) {
            execlp("unshare", "unshare", "-p", "-f", "sleep", "1000", (char *)NULL);
            _exit(127);
        }
    }
    if (big)
        for (size_t i = 0; i < n; i += 8) *(unsigned long *)(heap_pattern + i) = i * 0x9E3779B97F4A7C15ul;
    pthread_create(&t, NULL, busy, NULL);
    pthread_create(&t, NULL, sleeper, NULL);

    /* Process state the test compares: a handler, an alternate stack, a blocked signal, umask and
     * an rlimit. Their values go to the ready file. */
    struct sigaction sa = {.sa_handler = on_usr2, .sa_flags = SA_RESTART | SA_ONSTACK};
    sigaction(SIGUSR2, &sa, NULL);
    static char altstack[65536];
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof altstack};
    sigaltstack(&ss, NULL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    umask(027);
    struct rlimit rl = {.rlim_cur = 1000, .rlim_max = 4096};
    setrlimit(RLIMIT_NOFILE, &rl);

    snprintf(path, sizeof path, "%s/ready", dir);
    FILE *r = fopen(path, "w");
    fprintf(r, "%lx %lx\n", (unsigned long)on_usr2, (unsigned long)altstack);
    fclose(r);
    for (;;) {
        usleep(5000);
        while (waitpid(-1, NULL, WNOHANG) > 0) {}
    }
}
