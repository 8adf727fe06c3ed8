/* ckptrace watch: task and memory events of watched pid namespaces, from tracepoints only.
 *
 * Loaded by ckptrace/kernel/bpfload.py with bcc. Settings arrive as -D cflags:
 *   CKPT_HOST_DEV, CKPT_HOST_INO  nsfs dev and inode of the host's pid namespace
 *   CKPT_FOCUS_NS                 0: every non-host namespace; else only this one
 *   CKPT_MAX_NS                   slots of ns_list (namespaces known to the kernel side)
 *   CKPT_NCPU                     CPUs that can run programs (the kernel's nr_cpu_ids)
 *   CKPT_RING_SLOTS               records per CPU ring (a power of two)
 *   CKPT_FAULTS                   1: compile the write-fault program
 *   CKPT_EVENT_SIZE               sizeof(struct ckpt_event) as the Python side parsed it
 * Only tracepoint arguments and helpers are read, never kernel struct fields: the headers bcc
 * compiles against may be an older kernel's. The one struct read is ABI: the x86-64 register frame
 * a syscall was made with (struct pt_regs, laid out as ptrace's user_regs_struct; checked below).
 */
#include <asm/ptrace.h>
#include <asm/unistd.h>
#include "events.h"

_Static_assert(sizeof(struct ckpt_event) == CKPT_EVENT_SIZE,
	       "bpf/events.h and the Python parse of it disagree");

#define CLONE_NEWPID_FLAG 0x20000000ULL
#define CLONE_THREAD_FLAG 0x00010000ULL

/* the per-CPU event rings and their positions: layout in bpf/events.h */
BPF_F_TABLE("array", __u32, struct ckpt_event, ring, CKPT_NCPU * CKPT_RING_SLOTS, BPF_F_MMAPABLE);
BPF_F_TABLE("array", __u32, __u64, ringpos, CKPT_NCPU * CKPT_POS_STRIDE + 1, BPF_F_MMAPABLE);
BPF_ARRAY(lost, __u64, CKPT_LOST_SLOTS);
/* host tgid -> (namespace, in-namespace pid, mm generation); kept by fork/exit here and
 * seeded/resolved by the controller */
BPF_HASH(tracked, __u32, struct ckpt_task, 65536);
/* namespaces the controller told us about, for tasks not in `tracked` yet */
BPF_ARRAY(ns_list, __u64, CKPT_MAX_NS);
/* tgids whose future children land in another pid namespace (after unshare/setns) */
BPF_HASH(nschanged, __u32, __u32, 4096);
/* tgid -> exit status as the last exit syscall or fatal signal set it */
BPF_HASH(exitcode, __u32, __u32, 65536);
/* tid -> the last signal sent to it whose default action kills (see ckpt_signal). LRU: filled
 * for any task, since the sender's context cannot tell a watched target thread from another */
BPF_TABLE("lru_hash", __u32, __u64, lastsig, 65536);  /* (when sent, ns) << 8 | signal */
#define EXIT_FINAL 0x80000000U  /* in exitcode: the status is decided (see set_exitcode) */

struct ident {
	__u64 ns;
	__u32 hostpid, hosttid, pid;
};

/* parent thread -> (child host pid, clone flags) between task_newtask and the clone exit */
struct forkinfo {
	__u32 child;
	__u32 pad;
	__u64 flags;
};
/* LRU: a parent killed between the two never deletes its entry */
BPF_TABLE("lru_hash", __u32, struct forkinfo, forks, 16384);

/* child host pid -> its parent's identity and the clone flags, for a child that stays in its
 * parent's namespace, from task_newtask until the parent returns from the clone call: the child
 * returns from it too, often first (a vfork parent only once the child has exec'd), and whichever
 * of the two returns first reports the fork (`claimed`), so that it comes before anything the
 * child does. LRU: a parent killed meanwhile never deletes its entry. */
struct birth {
	__u64 ns;
	__u64 flags;
	__u64 claimed;
	__u32 hostpid, hosttid, pid, pad;
};
BPF_TABLE("lru_hash", __u32, struct birth, births, 16384);

#if CKPT_FAULTS
/* (tgid, chunk) -> mask of pages write-faulted since the controller last drained it */
BPF_HASH(dirty, struct ckpt_dirty_key, __u64, 262144);
#endif

static __always_inline void count_lost(__u32 slot)
{
	__u64 *n = lost.lookup(&slot);
	if (n)
		lock_xadd(n, 1);
}

static __always_inline int in_ns(__u64 ino, struct ident *id)
{
	struct bpf_pidns_info ni = {};
	if (bpf_get_ns_current_pid_tgid(CKPT_HOST_DEV, ino, &ni, sizeof(ni)) != 0)
		return 0;
	id->ns = ino;
	id->pid = ni.tgid;
	return 1;
}

/* Place tgid in namespace ns. An entry it has already (t, made at fork before its namespace was
 * known) is filled in place: an update replaces the element, and a generation another of its
 * threads stores meanwhile would go to the old one and be lost. */
static __always_inline void track(__u32 tgid, __u64 ns, __u32 pid, struct ckpt_task *t)
{
	if (t) {
		t->pid = pid;
		t->announced = 1;
		t->ns = ns;  /* last: whoami_t's hot path reads pid once it sees ns */
		return;
	}
	struct ckpt_task nt = {.ns = ns, .gen = 0, .pid = pid, .announced = 1};
	if (tracked.update(&tgid, &nt) != 0)
		count_lost(CKPT_LOST_TRACKED);
}

/* Why not a BPF ring buffer: its reserve and submit (a lock, two helper calls, a wake-up now and
 * then) made up most of this side's cost on an mmap/munmap loop (~20 % of a 1.5 us iteration
 * here, against ~2 % for this). One ring per CPU needs no lock: a program runs to its end with
 * preemption off, and the kernel does not start another tracing program on the same CPU meanwhile
 * (trace_call_bpf skips it), so each CPU's ring has one writer at a time. The controller is not
 * woken; it looks every few milliseconds. A full ring drops the record before it takes a sequence
 * number, so the numbers the controller sees have no holes. */
static __always_inline struct ckpt_event *ring_slot(void)
{
	__u32 cpu = bpf_get_smp_processor_id();
	__u32 at = cpu * CKPT_POS_STRIDE, read_at = at + CKPT_POS_READ, seq_at = CKPT_NCPU * CKPT_POS_STRIDE;
	__u64 *written = ringpos.lookup(&at), *read = ringpos.lookup(&read_at), *seq = ringpos.lookup(&seq_at);
	if (!written || !read || !seq || cpu >= CKPT_NCPU)
		return 0;
	__u64 w = *written;
	if (w - *(volatile __u64 *)read >= CKPT_RING_SLOTS) {
		count_lost(CKPT_LOST_RING);
		return 0;
	}
	__u32 idx = cpu * CKPT_RING_SLOTS + (__u32)(w & (CKPT_RING_SLOTS - 1));
	struct ckpt_event *e = ring.lookup(&idx);
	if (e)
		e->seq = __sync_fetch_and_add(seq, 1);
	return e;
}

/* the record is complete: count it written (the store comes after the record's: x86-64 keeps
 * stores in order, and the compiler is told not to move them) */
static __always_inline void submit(struct ckpt_event *e)
{
	__u32 at = bpf_get_smp_processor_id() * CKPT_POS_STRIDE;
	__u64 *written = ringpos.lookup(&at);
	asm volatile("" ::: "memory");
	if (written)
		*(volatile __u64 *)written = *written + 1;
}

static __always_inline struct ckpt_event *reserve(__u32 type, struct ident *id)
{
	struct ckpt_event *e = ring_slot();
	if (!e)
		return 0;
	__u64 seq = e->seq;
	__builtin_memset(e, 0, sizeof(*e));
	e->seq = seq;
	e->ts = bpf_ktime_get_ns();
	e->type = type;
	e->ns = id->ns;
	e->hostpid = id->hostpid;
	e->hosttid = id->hosttid;
	e->pid = id->pid;
	return e;
}

static __always_inline void announce(struct ident *id)
{
	struct ckpt_event *e = reserve(CKPT_EV_DISCOVER, id);
	if (e) {
		bpf_get_current_comm(e->comm, sizeof(e->comm));
		submit(e);
	}
}

/* Is the current task watched? Fills its identity; tasks of watched namespaces the kernel side
 * has not seen yet are added to `tracked` (and announced when their namespace is unknown). */
static __always_inline int whoami_t(struct ident *id, struct ckpt_task **tp)
{
	__u64 pt = bpf_get_current_pid_tgid();
	__u32 tgid = pt >> 32;
	id->hostpid = tgid;
	id->hosttid = (__u32)pt;
	id->ns = 0;
	id->pid = 0;
	*tp = 0;
	struct ckpt_task *t = tracked.lookup(&tgid);
	if (t && t->ns) {
		/* the hot path: a process's pid in its namespace never changes, so it is cached */
		id->ns = t->ns;
		id->pid = t->pid;
		if (!id->pid && in_ns(t->ns, id))
			t->pid = id->pid;
		*tp = t;
		return 1;
	}
	if (!t && in_ns(CKPT_HOST_INO, id)) {
		id->ns = id->pid = 0;
		return 0;
	}
#if CKPT_FOCUS_NS
	if (!in_ns(CKPT_FOCUS_NS, id)) {
		if (t)
			tracked.delete(&tgid);  /* a child that went to another namespace */
		return 0;
	}
	track(tgid, CKPT_FOCUS_NS, id->pid, t);
	return 1;
#else
	#pragma unroll
	for (int i = 0; i < CKPT_MAX_NS; i++) {
		int k = i;
		__u64 *ino = ns_list.lookup(&k);
		if (!ino || !*ino)
			break;
		if (in_ns(*ino, id)) {
			track(tgid, *ino, id->pid, t);
			return 1;
		}
	}
	if (!t || !t->announced) {
		/* a namespace nobody told us about: tell the controller once (an entry made at fork is
		 * marked in place: replacing it would lose a generation another thread stores) */
		if (t) {
			t->announced = 1;
		} else {
			struct ckpt_task nt = {.ns = 0, .gen = 0, .pid = 0, .announced = 1};
			if (tracked.update(&tgid, &nt) != 0)
				count_lost(CKPT_LOST_TRACKED);
		}
		announce(id);
	}
	return 1;
#endif
}

static __always_inline int whoami(struct ident *id)
{
	struct ckpt_task *t;
	return whoami_t(id, &t);
}

/* Event e changed the process's VMA table: its number, plus one (0 is "none yet"), is the
 * process's next mm generation
 * (t: the process's entry if whoami_t found it, else looked up). Numbers are taken in one order
 * over all CPUs, so two threads changing the table at once get different generations in the
 * order the controller applies their events (a per-process count bumped by both could give them
 * one number, and a mapping made by one and removed by the other a lifetime of zero). The store
 * is not atomic: a thread interrupted between taking its number and this line can leave the
 * lower of two numbers in place until the process's next change; the check narrows that to the
 * few instructions in between. */
static __always_inline void new_gen(struct ckpt_task *t, __u32 tgid, struct ckpt_event *e)
{
	if (!t)
		t = tracked.lookup(&tgid);
	if (t && t->gen <= e->seq)
		t->gen = e->seq + 1;
	e->newgen = 1;
}

/* ---- tasks ---------------------------------------------------------------------------------- */

int ckpt_exec(struct tracepoint__sched__sched_process_exec *args)
{
	/* exec ended the other threads with SIGKILLs (ckpt_signal took them for a death) and the
	 * signals sent before belong to the old program: the process's status starts afresh */
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	exitcode.delete(&tgid);
	lastsig.delete(&tgid);
	struct ident id;
	if (!whoami(&id))
		return 0;
	struct ckpt_event *e = reserve(CKPT_EV_EXEC, &id);
	if (!e)
		return 0;
	new_gen(0, id.hostpid, e);
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	submit(e);
	return 0;
}

int ckpt_exit(struct tracepoint__sched__sched_process_exit *args)
{
	if (!args->group_dead)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 *code = exitcode.lookup(&tgid);
	__u32 status = code ? *code & ~EXIT_FINAL : 0;
	/* forgotten whether or not the process is reported: its tgid will be someone else's */
	exitcode.delete(&tgid);
	lastsig.delete(&tgid);
	nschanged.delete(&tgid);
	struct ident id;
	if (!whoami(&id)) {
		tracked.delete(&tgid);
		return 0;
	}
	struct ckpt_event *e = reserve(CKPT_EV_EXIT, &id);
	if (e) {
		e->code = status;
		bpf_get_current_comm(e->comm, sizeof(e->comm));
		submit(e);
	}
	tracked.delete(&tgid);
	return 0;
}

/* The exit status is made of what the process did last: exit_group's status is final; a thread's
 * own exit leaves its status to the process if it is the last thread; a fatal signal is final.
 * Final values carry EXIT_FINAL and are not overwritten by the SIGKILLs that follow: exit_group
 * and a fatal signal both end the other threads with a SIGKILL the kernel queues itself. */
static __always_inline void set_exitcode(__u32 tgid, __u32 code)
{
	if (tracked.lookup(&tgid))
		exitcode.update(&tgid, &code);
}

int ckpt_exit_group(struct tracepoint__syscalls__sys_enter_exit_group *args)
{
	set_exitcode(bpf_get_current_pid_tgid() >> 32, (args->error_code & 0xff) | EXIT_FINAL);
	return 0;
}

int ckpt_exit_sys(struct tracepoint__syscalls__sys_enter_exit *args)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 *code = exitcode.lookup(&tgid);
	if (!code || !(*code & EXIT_FINAL))
		set_exitcode(tgid, args->error_code & 0xff);
	return 0;
}

/* signals whose default action ends the process (the real-time ones included) */
static __always_inline int kills_by_default(int sig)
{
	if (sig <= 0 || sig > 64)
		return 0;
	return !(sig == 17 || (sig >= 18 && sig <= 23) || sig == 28);  /* SIGCHLD, SIGCONT..SIGURG, SIGWINCH */
}

int ckpt_signal_sent(struct tracepoint__signal__signal_generate *args)
{
	__u32 tid = args->pid;
	int sig = args->sig;
	if (args->result == 1 || !kills_by_default(sig))
		return 0;  /* ignored, or a signal that cannot be the one that killed */
	__u64 v = (bpf_ktime_get_ns() << 8) | sig;
	lastsig.update(&tid, &v);  /* kill(2) targets the leader (tid == tgid), tgkill(2) a thread */
	return 0;
}

/* A fatal signal that does not dump core is not delivered as itself: the kernel queues SIGKILL to
 * every thread when it is sent (complete_signal), so only SIGKILL is ever delivered. The signal
 * that did it is the last one sent to the process (ckpt_signal_sent); a real SIGKILL is sent too. */
int ckpt_signal(struct tracepoint__signal__signal_deliver *args)
{
	int sig = args->sig;
	__u64 pt = bpf_get_current_pid_tgid();
	__u32 tgid = pt >> 32, tid = (__u32)pt;
	if (args->sa_handler != 0) {
		/* handled (or ignored): this one killed nobody; forget it so that a later SIGKILL is
		 * not taken for it */
		__u64 *sent = lastsig.lookup(&tid);
		if (sent && (*sent & 0xff) == sig)
			lastsig.delete(&tid);
		sent = lastsig.lookup(&tgid);
		if (sent && (*sent & 0xff) == sig)
			lastsig.delete(&tgid);
		return 0;
	}
	if (!kills_by_default(sig))
		return 0;
	__u32 *code = exitcode.lookup(&tgid);
	if (code && (*code & EXIT_FINAL))
		return 0;  /* exit_group or an earlier fatal signal decided it */
	__u32 final = EXIT_FINAL;
	if (sig == 9) {
		/* Every thread gets the SIGKILL. The signal was sent to the process (its leader) or to
		 * one thread: until the thread it was sent to delivers its SIGKILL, the status is only
		 * provisional (a plain SIGKILL, sent by nobody we saw). */
		__u64 *to_thread = lastsig.lookup(&tid), *to_process = lastsig.lookup(&tgid);
		__u64 *sent = to_thread;
		if (!sent || (to_process && *to_process > *sent))
			sent = to_process;  /* the later of the two */
		if (sent)
			sig = *sent & 0xff;
		else
			final = 0;
	}
	set_exitcode(tgid, (128 + sig) | final);
	return 0;
}

int ckpt_newtask(struct tracepoint__task__task_newtask *args)
{
	struct ident id;
	if (!whoami(&id))
		return 0;
	__u64 flags = args->clone_flags;
	__u32 tid = id.hosttid;
	struct forkinfo fi = {.child = args->pid, .flags = flags};
	forks.update(&tid, &fi);
	if (flags & CLONE_THREAD_FLAG)
		return 0;
	__u32 tgid = id.hostpid;
	__u32 child = args->pid;
	if ((flags & CLONE_NEWPID_FLAG) || nschanged.lookup(&tgid) || !id.ns) {
		/* the child is in another namespace: it is found on its first event. Pre-register it so
		 * its write faults count from the start; whoami resolves the namespace. */
		struct ckpt_task t = {.ns = 0, .gen = 0, .pid = 0, .announced = 0};
		if (tracked.update(&child, &t) != 0)
			count_lost(CKPT_LOST_TRACKED);
	} else {
		track(child, id.ns, 0, 0);  /* its pid is learnt on its first event */
		struct birth b = {.ns = id.ns, .flags = flags, .claimed = 0,
				  .hostpid = id.hostpid, .hosttid = id.hosttid, .pid = id.pid};
		births.update(&child, &b);
	}
	if (flags & CLONE_NEWPID_FLAG) {
		struct ckpt_event *e = reserve(CKPT_EV_NEWNS, &id);
		if (e) {
			e->a0 = flags & 0x7e020000ULL;  /* the CLONE_NEW* bits */
			e->code = 3;
			submit(e);
		}
	}
	return 0;
}

static __always_inline void report_fork(struct ident *parent, __u64 child_pid, __u32 child_host, __u64 flags)
{
	struct ckpt_event *e = reserve(CKPT_EV_FORK, parent);
	if (!e)
		return;
	e->a0 = child_pid;
	e->a1 = child_host;
	e->a2 = flags;
	bpf_get_current_comm(e->comm, sizeof(e->comm));  /* the parent's: the child's is a copy */
	submit(e);
}

/* A return from clone/clone3/fork/vfork. The parent's gives the child's pid as the parent sees
 * it; the child's own (ret 0) is in the child's context, where that pid is its own pid (same
 * namespace: `births`) and its parent's identity was kept at task_newtask. */
int ckpt_clone_exit(struct tracepoint__syscalls__sys_exit_clone *args)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	if (args->ret == 0) {
		struct birth *b = births.lookup(&tid);
		if (!b || __sync_fetch_and_add(&b->claimed, 1) != 0)
			return 0;  /* not a new process of a watched namespace, or its parent told it */
		struct ident child, parent = {.ns = b->ns, .hostpid = b->hostpid, .hosttid = b->hosttid, .pid = b->pid};
		if (whoami(&child) && child.ns == parent.ns)
			report_fork(&parent, child.pid, tid, b->flags);
		return 0;
	}
	struct forkinfo *fi = forks.lookup(&tid);
	if (!fi)
		return 0;
	struct forkinfo f = *fi;
	forks.delete(&tid);
	if (args->ret < 0 || (f.flags & CLONE_THREAD_FLAG))
		return 0;
	struct birth *b = births.lookup(&f.child);
	if (b) {
		int first = __sync_fetch_and_add(&b->claimed, 1) == 0;
		births.delete(&f.child);
		if (!first)
			return 0;  /* the child told it, as it returned first */
	}
	struct ident id;
	if (!whoami(&id))
		return 0;
	report_fork(&id, args->ret, f.child, f.flags);
	return 0;
}

int ckpt_rename(struct tracepoint__task__task_rename *args)
{
	struct ident id;
	if (args->pid != (__u32)bpf_get_current_pid_tgid())
		return 0;  /* someone wrote another task's comm: rare, seen at its next exec */
	if (!whoami(&id))
		return 0;
	struct ckpt_event *e = reserve(CKPT_EV_RENAME, &id);
	if (!e)
		return 0;
	bpf_probe_read_kernel(e->comm, sizeof(e->comm), args->newcomm);
	submit(e);
	return 0;
}

/* ---- memory-map syscalls ------------------------------------------------------------------ */

/* One program at the exit of each call (mmap, munmap, mprotect, mremap, brk, madvise, unshare,
 * setns): only calls that worked are reported, with their result (mmap's address, mremap's new
 * address, brk's new break), and a call costs one program run, not two.
 * The arguments are read from the registers the call was made with, which the kernel keeps in
 * the task's struct pt_regs until it returns to user space. That struct's x86-64 layout is ABI:
 * ptrace's PTRACE_GETREGS hands it out as struct user_regs_struct, field for field, and the
 * checks below stop the build if the headers bcc compiles against ever said otherwise. */
_Static_assert(offsetof(struct pt_regs, r10) == 7 * 8 && offsetof(struct pt_regs, r8) == 9 * 8 &&
	       offsetof(struct pt_regs, dx) == 12 * 8 && offsetof(struct pt_regs, si) == 13 * 8 &&
	       offsetof(struct pt_regs, di) == 14 * 8, "struct pt_regs is not user_regs_struct's layout");

int ckpt_mm_exit(struct tracepoint__syscalls__sys_exit_mmap *args)
{
	int nr = args->__syscall_nr;
	long ret = args->ret;
	__u32 code = 0;
	if (ret < 0 && ret > -4096) {
		/* Failed: nothing changed, except that mprotect and madvise work through the range
		 * mapping by mapping and stop at a hole (ENOMEM) or, mprotect, at a mapping that may not
		 * get the protection (EACCES), with what came before already changed. Those are
		 * reported with the error (code), and the controller reads the mappings again. */
		if (!((nr == __NR_mprotect || nr == __NR_pkey_mprotect) && (ret == -ENOMEM || ret == -EACCES)) &&
		    !(nr == __NR_madvise && ret == -ENOMEM))
			return 0;
		code = -ret;
	}
	struct ident id;
	struct ckpt_task *t;
	if (!whoami_t(&id, &t))
		return 0;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	__u64 di = regs->di, si = regs->si, dx = regs->dx;
	__u32 type;
	__u64 a0 = di, a1 = si, a2 = 0, a3 = 0;
	switch (nr) {
	case __NR_mmap:
		type = CKPT_EV_MMAP;
		a0 = ret;
		a2 = dx;
		a3 = regs->r10;
		break;
	case __NR_munmap:
		type = CKPT_EV_MUNMAP;
		break;
	case __NR_mprotect:
	case __NR_pkey_mprotect:  /* mprotect with a protection key (r10): the same change */
		type = CKPT_EV_MPROTECT;
		a2 = dx;
		break;
	case __NR_madvise:
		type = CKPT_EV_MADVISE;
		a2 = dx;
		break;
	case __NR_mremap:
		type = CKPT_EV_MREMAP;
		a2 = ret;
		a3 = dx;
		break;
	case __NR_brk:
		type = CKPT_EV_BRK;
		a1 = ret;
		break;
	case __NR_unshare:
		if (!(di & CLONE_NEWPID_FLAG))
			return 0;
		type = CKPT_EV_NEWNS;
		a0 = di & 0x7e020000ULL;
		a1 = 0;
		code = 1;
		break;
	case __NR_setns:
		/* nstype 0 means "whatever fd is": it may be a pid namespace */
		if ((__u32)si && !(si & CLONE_NEWPID_FLAG))
			return 0;
		type = CKPT_EV_NEWNS;
		a0 = (__u32)si;
		a1 = 0;
		code = 2;
		break;
	default:
		return 0;
	}
	if (type == CKPT_EV_NEWNS) {
		__u32 tgid = id.hostpid, one = 1;
		nschanged.update(&tgid, &one);
	}
	struct ckpt_event *e = ring_slot();
	if (!e)
		return 0;  /* lost, and counted: the controller reads the mappings again */
	/* The VMA table changed (not for madvise, a namespace change, or brk(0), a query): a new
	 * generation, here, after the change: a write another thread makes into the new mapping
	 * between the change and this line (it would have to know the address already: MAP_FIXED,
	 * mremap over a live range) is counted in the old generation, on the mapping that was there
	 * before. */
	__u32 newgen = type != CKPT_EV_MADVISE && type != CKPT_EV_NEWNS && !(type == CKPT_EV_BRK && di == 0);
	if (newgen)
		new_gen(t, id.hostpid, e);
	e->ts = bpf_ktime_get_ns();
	e->ns = id.ns;
	e->type = type;
	e->hostpid = id.hostpid;
	e->hosttid = id.hosttid;
	e->pid = id.pid;
	e->code = code;
	e->newgen = newgen;
	e->a0 = a0;
	e->a1 = a1;
	e->a2 = a2;
	e->a3 = a3;
	__builtin_memset(e->comm, 0, sizeof(e->comm));
	submit(e);
	return 0;
}

/* ---- write faults: the hot path, kept to two hash lookups and an atomic OR
 * (the generation comes with the `tracked` lookup the filter needs anyway) ------------------
 * Attached to page_fault_user and page_fault_kernel (same arguments): the kernel writing into a
 * user buffer (read(2) into fresh memory) faults in kernel mode but dirties user pages too. */
#if CKPT_FAULTS
int ckpt_fault(struct tracepoint__exceptions__page_fault_user *args)
{
	if (!(args->error_code & 2) || args->address >= 0x800000000000ULL)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct ckpt_task *t = tracked.lookup(&tgid);
	if (!t)
		return 0;
	__u64 addr = args->address;
	struct ckpt_dirty_key k = {.tgid = tgid, .gen = t->gen, .chunk = addr >> CKPT_CHUNK_SHIFT};
	__u64 bit = 1ULL << ((addr >> CKPT_PAGE_SHIFT) & 63);
	__u64 *mask = dirty.lookup(&k);
	if (mask) {
		__sync_fetch_and_or(mask, bit);
		return 0;
	}
	if (dirty.insert(&k, &bit) != 0) {
		mask = dirty.lookup(&k);  /* another CPU inserted it first */
		if (mask)
			__sync_fetch_and_or(mask, bit);
		else
			count_lost(CKPT_LOST_DIRTY);
	}
	return 0;
}
#endif
