/* Robust futex lists across a checkpoint (tests/test_restore.py).
 *
 * Two process-shared PTHREAD_MUTEX_ROBUST mutexes live in a MAP_SHARED anonymous page. A child
 * process holds both: its main thread holds A, a second thread holds B. Both threads of pid 1
 * then block in pthread_mutex_lock, one on each. When the file DIR/die appears the child exits
 * without unlocking; the kernel walks each of its threads' robust lists (registered by glibc at
 * thread start, set_robust_list) and marks the mutexes owner-dead, so each waiter's lock returns
 * EOWNERDEAD, which it writes to DIR/robust.log ("A EOWNERDEAD"). A waiter that gets anything
 * else logs the number; one whose lock never returns logs nothing.
 *
 * DIR/ready appears once both mutexes are held and both waiters are about to block.
 *
 * usage: robustwork DIR
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

struct shared {
    pthread_mutex_t a, b;
    volatile int held_a, held_b, waiting; /* waiting: threads about to block in a lock */
};

static struct shared *sh;
static const char *dir;
static int logfd;

static void say(const char *fmt, ...)
{
    char line[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (write(logfd, line, n) != n)
        _exit(3);
}

static int exists(const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

static void *hold_b(void *arg)
{
    (void)arg;
    if (pthread_mutex_lock(&sh->b))
        _exit(4);
    say("%s held %d\n", "B", (int)gettid());
    sh->held_b = 1;
    for (;;)
        pause(); /* dies with its process */
    return NULL;
}

static void wait_on(pthread_mutex_t *m, const char *name)
{
    __sync_fetch_and_add(&sh->waiting, 1);
    int rc = pthread_mutex_lock(m);
    if (rc == EOWNERDEAD) {
        say("%s EOWNERDEAD\n", name);
        pthread_mutex_consistent(m);
        pthread_mutex_unlock(m);
    } else {
        say("%s lock returned %d\n", name, rc);
    }
}

static void *wait_b(void *arg)
{
    (void)arg;
    wait_on(&sh->b, "B");
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    dir = argv[1];
    char path[4096];
    snprintf(path, sizeof path, "%s/robust.log", dir);
    logfd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (logfd < 0)
        return 1;
    sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        return 1;
    pthread_mutexattr_t at;
    pthread_mutexattr_init(&at);
    pthread_mutexattr_setpshared(&at, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&at, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&sh->a, &at);
    pthread_mutex_init(&sh->b, &at);

    pid_t child = fork();
    if (child < 0)
        return 1;
    if (child == 0) {
        pthread_t t;
        if (pthread_mutex_lock(&sh->a))
            _exit(4);
        say("%s held %d\n", "A", (int)getpid());
        sh->held_a = 1;
        if (pthread_create(&t, NULL, hold_b, NULL))
            _exit(5);
        while (!exists("die"))
            usleep(10000);
        _exit(0); /* both threads die holding their mutex */
    }
    while (!sh->held_a || !sh->held_b)
        usleep(1000);
    pthread_t t;
    if (pthread_create(&t, NULL, wait_b, NULL))
        return 1;
    while (sh->waiting < 1)
        usleep(1000);
    snprintf(path, sizeof path, "%s/ready", dir);
    close(open(path, O_WRONLY | O_CREAT, 0644));
    wait_on(&sh->a, "A");
    pthread_join(t, NULL);
    waitpid(child, NULL, 0);
    for (;;)
        pause();
}
