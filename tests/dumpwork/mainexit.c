/* A process whose main thread has exited (pthread_exit in main) while another thread runs on:
 * the leader is a zombie, the process is alive. argv[1]: a file to create once that is so. */
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

static const char *ready;

static void *worker(void *arg)
{
    (void)arg;
    usleep(100000); /* the main thread is gone by then */
    FILE *f = fopen(ready, "w");
    if (f)
        fclose(f);
    for (;;)
        sleep(1);
    return NULL;
}

int main(int argc, char **argv)
{
    pthread_t t;
    if (argc < 2)
        return 2;
    ready = argv[1];
    if (pthread_create(&t, NULL, worker, NULL))
        return 1;
    pthread_exit(NULL);
}
