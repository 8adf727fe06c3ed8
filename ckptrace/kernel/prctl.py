"""prctl(2) options ckptrace asks of itself or injects into a task (<linux/prctl.h>: the ABI,
never renumbered). Declared here once; tests/test_ptrace.py checks every one the C library's
header has against it (the header here is older than some: those are listed in NEWER_THAN_6_1)."""

PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_GET_TSC = 25  # x86: whether the thread may read the time stamp counter (rdtsc)
PR_SET_TSC = 26
PR_TSC_ENABLE, PR_TSC_SIGSEGV = 1, 2  # their modes
PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
PR_MCE_KILL = 33
PR_MCE_KILL_CLEAR, PR_MCE_KILL_SET = 0, 1  # PR_MCE_KILL's second argument
PR_MCE_KILL_LATE, PR_MCE_KILL_EARLY, PR_MCE_KILL_DEFAULT = 0, 1, 2  # its policy (third argument)
PR_MCE_KILL_GET = 34
PR_SET_MM = 35
PR_SET_MM_MAP = 14  # PR_SET_MM's second argument
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_GET_TID_ADDRESS = 40
PR_SET_THP_DISABLE = 41
PR_GET_THP_DISABLE = 42
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2  # PR_CAP_AMBIENT's second argument
PR_SET_MDWE = 65  # Linux 6.3: memory-deny-write-execute, kept in the mm's flags
PR_GET_MDWE = 66
PR_MDWE_REFUSE_EXEC_GAIN = 1  # PR_SET_MDWE's and PR_GET_MDWE's bits
PR_MDWE_NO_INHERIT = 2  # Linux 6.7: a fork or exec does not keep it
PR_SET_MEMORY_MERGE = 67  # Linux 6.4
PR_GET_MEMORY_MERGE = 68  # Linux 6.4
PR_TIMER_CREATE_RESTORE_IDS = 77  # Linux 6.17
PR_TIMER_CREATE_RESTORE_IDS_OFF, PR_TIMER_CREATE_RESTORE_IDS_ON = 0, 1

# not in Debian 12's <linux/prctl.h> (6.1)
NEWER_THAN_6_1 = frozenset({"PR_SET_MDWE", "PR_GET_MDWE", "PR_MDWE_REFUSE_EXEC_GAIN", "PR_MDWE_NO_INHERIT",
                            "PR_SET_MEMORY_MERGE", "PR_GET_MEMORY_MERGE", "PR_TIMER_CREATE_RESTORE_IDS",
                            "PR_TIMER_CREATE_RESTORE_IDS_OFF", "PR_TIMER_CREATE_RESTORE_IDS_ON"})
