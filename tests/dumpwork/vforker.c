/* A vfork loop, as dash runs commands: the parent sleeps in the kernel (wait_for_vfork_done),
 * where no ptrace stop reaches it, until its child execs. argv[1]: ready file; argv[2]: how long
 * each child waits before its exec, in ms (0: at once; a large value keeps the parent unstoppable). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long ms = argc > 2 ? atol(argv[2]) : 0;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    FILE *f = fopen(argv[1], "w");
    if (!f)
        return 1;
    fclose(f);
    for (;;) {
        pid_t p = vfork();
        if (p == 0) {
            if (ms)
                syscall(SYS_nanosleep, &ts, NULL);  /* a raw call: nothing touches the shared stack */
            execl("/bin/true", "true", (char *)0);
            _exit(127);
        }
        waitpid(p, 0, 0);
    }
}
