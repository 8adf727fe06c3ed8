/* A process whose second thread has something of its own that the image keeps once per process
 * (tests/test_dump.py). argv[1]: a directory (DIR/ready made once the thread is set up);
 * argv[2], what the thread does:
 *   pdeath forks a child that asks for SIGUSR1 when its parent dies (PR_SET_PDEATHSIG): the
 *          kernel's "parent" is that thread
 * or what it unshares:
 *   files  its file table (unshare(CLONE_FILES)), then opens DIR/thread.txt in it
 *   pidfd  its file table, then a pidfd in it (a kind the dump refuses in any table)
 *   fs     its root, cwd and umask (unshare(CLONE_FS)), then chdir(DIR) and umask(077)
 *   uts    its uts namespace, with another host name
 *   ipc    its IPC namespace
 *   net    its network namespace
 *   mnt    its mount namespace (with CLONE_FS, which that needs)
 *   cgroup its cgroup namespace
 *   time   the time namespace its children would enter, with a monotonic offset */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *dir, *mode;

static void *thread(void *arg)
{
    char path[4096];
    int ok = 0;
    (void)arg;
    if (!strcmp(mode, "pdeath")) {
        pid_t child = fork();
        if (child == 0) {
            signal(SIGUSR1, SIG_IGN);
            prctl(PR_SET_PDEATHSIG, SIGUSR1);
            snprintf(path, sizeof path, "%s/ready", dir);
            close(open(path, O_WRONLY | O_CREAT, 0600));
            for (;;)
                pause();
        }
        for (;;)
            pause();
    } else if (!strcmp(mode, "files") || !strcmp(mode, "pidfd")) {
        ok = unshare(CLONE_FILES) == 0;
        snprintf(path, sizeof path, "%s/thread.txt", dir);
        if (!strcmp(mode, "files"))
            ok = ok && open(path, O_WRONLY | O_CREAT | O_APPEND, 0600) >= 0;
        else
            ok = ok && syscall(SYS_pidfd_open, getpid(), 0) >= 0;
    } else if (!strcmp(mode, "fs")) {
        ok = unshare(CLONE_FS) == 0 && chdir(dir) == 0;
        umask(077);
    } else if (!strcmp(mode, "uts")) {
        ok = unshare(CLONE_NEWUTS) == 0 && sethostname("thread-uts", 10) == 0;
    } else if (!strcmp(mode, "ipc")) {
        ok = unshare(CLONE_NEWIPC) == 0;
    } else if (!strcmp(mode, "net")) {
        ok = unshare(CLONE_NEWNET) == 0;
    } else if (!strcmp(mode, "mnt")) {
        ok = unshare(CLONE_NEWNS) == 0;
    } else if (!strcmp(mode, "cgroup")) {
        ok = unshare(CLONE_NEWCGROUP) == 0;
    } else if (!strcmp(mode, "time")) {
        /* its own /proc/TID/timens_offsets: /proc/self is the process's, its leader's */
        snprintf(path, sizeof path, "/proc/%ld/timens_offsets", (long)syscall(SYS_gettid));
        int fd = unshare(CLONE_NEWTIME) == 0 ? open(path, O_WRONLY) : -1;
        ok = fd >= 0 && write(fd, "monotonic 3000 0\n", 17) == 17;
    }
    if (!ok) {
        perror(mode);
        _exit(1);
    }
    snprintf(path, sizeof path, "%s/ready", dir);
    close(open(path, O_WRONLY | O_CREAT, 0600));
    for (;;)
        pause();
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t t;
    if (argc < 3)
        return 2;
    dir = argv[1];
    mode = argv[2];
    if (pthread_create(&t, NULL, thread, NULL))
        return 1;
    for (;;)
        pause();
}
