/* The event ABI between bpf/watch.bpf.c and ckptrace/kernel/bpfload.py.
 *
 * This is the ONLY declaration of these layouts: the Python side parses this file
 * (ckptrace/kernel/bpfload.py: parse_header) instead of repeating it, and a test compiles it
 * with gcc to prove both agree. Keep to the subset that parser understands: `#define NAME number`
 * lines and structs of __u32/__u64/char[N] fields, one field per line.
 */
#ifndef CKPT_EVENTS_H
#define CKPT_EVENTS_H

#include <linux/types.h>

/* event types (struct ckpt_event.type) */
#define CKPT_EV_FORK 1
#define CKPT_EV_EXEC 2
#define CKPT_EV_EXIT 3
#define CKPT_EV_MMAP 4
#define CKPT_EV_MUNMAP 5
#define CKPT_EV_MPROTECT 6
#define CKPT_EV_MREMAP 7
#define CKPT_EV_BRK 8
#define CKPT_EV_MADVISE 9
#define CKPT_EV_NEWNS 10
#define CKPT_EV_RENAME 11
#define CKPT_EV_DISCOVER 12

/* indexes of the `lost` array map: every drop is counted, never silent */
#define CKPT_LOST_RING 0
#define CKPT_LOST_DIRTY 1
#define CKPT_LOST_TRACKED 2
#define CKPT_LOST_SLOTS 3

/* Structural events travel through one ring per CPU, each an array of CKPT_RING_SLOTS records
 * (the `ring` map, CPU c's records at [c * CKPT_RING_SLOTS, (c + 1) * CKPT_RING_SLOTS)), both maps
 * memory-mapped by the controller. `ringpos` holds, per CPU c, the count of records written at
 * [c * CKPT_POS_STRIDE] (only programs on that CPU store it, after the record) and of records
 * read at [c * CKPT_POS_STRIDE + CKPT_POS_READ] (only the controller stores it): different cache
 * lines. After the last CPU's, at [CKPT_NCPU * CKPT_POS_STRIDE], the global sequence counter:
 * every record takes the next number (struct ckpt_event.seq), so the controller can merge the
 * rings in the order the events happened. */
#define CKPT_POS_STRIDE 16
#define CKPT_POS_READ 8

/* write faults are kept as one 64-bit page mask per (process, 256 KiB chunk) */
#define CKPT_CHUNK_SHIFT 18
#define CKPT_PAGE_SHIFT 12

/* Structural event sent through the event rings. ns == 0: the task's namespace is not known to
 * the kernel side yet (pid is 0 then); the controller resolves it from /proc.
 * seq: the record's number, taken when its ring slot is secured; consecutive over all CPUs.
 * newgen: 1 when the event changed the process's VMA table (mmap, munmap, mprotect, mremap, brk,
 *   exec): it starts the process's next mm generation, numbered seq + 1. Write faults
 *   are keyed by the generation they happened in, so the controller can attribute pages drained
 *   late to the mapping they were written in. Taken from seq, a process's generations come in the
 *   order the controller applies its events, even when two of its threads race.
 * Arguments by type:
 *   FORK     a0 child pid as the parent sees it, a1 child host pid, a2 clone flags
 *   EXEC     comm
 *   EXIT     code = exit status, or 128 + signal when killed
 *   MMAP     a0 addr, a1 len, a2 prot, a3 flags
 *   MUNMAP   a0 addr, a1 len
 *   MPROTECT a0 addr, a1 len, a2 prot
 *   MREMAP   a0 old addr, a1 old len, a2 new addr, a3 new len
 *   BRK      a0 requested break, a1 resulting break
 *   MADVISE  a0 addr, a1 len, a2 advice
 *   NEWNS    a0 namespace flags (CLONE_NEW*), code: 1 unshare, 2 setns, 3 clone
 *   RENAME   comm (new)
 *   DISCOVER (a task in a namespace the kernel side does not know yet)
 */
struct ckpt_event {
	__u64 seq;
	__u64 ts;
	__u64 ns;
	__u32 type;
	__u32 hostpid;
	__u32 hosttid;
	__u32 pid;
	__u32 code;
	__u32 newgen;
	__u64 a0;
	__u64 a1;
	__u64 a2;
	__u64 a3;
	char comm[16];
};

/* key of the `dirty` hash: value is a __u64 mask of written pages in the chunk. gen is the
 * process's mm generation when the pages were written (see ckpt_task.gen). */
struct ckpt_dirty_key {
	__u32 tgid;
	__u32 pad;
	__u64 gen;
	__u64 chunk;
};

/* value of the `tracked` hash (key: host tgid); ns 0: not resolved yet; pid: in-namespace pid,
 * cached (0: not known yet); gen: the process's mm generation, 1 + the seq of the last event
 * that changed its VMA table (0: none since it was first tracked) */
struct ckpt_task {
	__u64 ns;
	__u64 gen;
	__u32 pid;
	__u32 announced;
};

#endif
