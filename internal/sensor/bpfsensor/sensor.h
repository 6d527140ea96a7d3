// SPDX-License-Identifier: GPL-2.0
// Shared between sensor.bpf.c and the Go decoder (through BTF: bpf2go
// -type event_hdr generates the Go twin of struct event_hdr; the enums
// below are mirrored in consts.go, checked by a test).
#pragma once

#define DATA_MAX 8192     // bytes of strings per event (power of two)
#define SLOT_MAX 4096     // longest single string read
#define NAME_MAX_BUF 256  // longest path component + NUL
#define PATH_DEPTH 40     // path components walked (mount crossings count)
#define ARGV_MAX 1024     // bytes of argv kept
#define NSTR 4

enum str_slot {
	STR_PATH = 0,  // primary file: leaf-first components
	STR_PATH2 = 1, // exec: cwd, leaf-first components
	STR_NAME = 2,  // exec: filename given; bpf: program name
	STR_ARGV = 3,  // exec: NUL-separated argv
};

enum event_kind {
	KIND_EXEC = 1,
	KIND_FORK = 2,
	KIND_EXIT = 3,
	KIND_IMAGE = 4,
	KIND_MEMEXEC = 5,
	KIND_INJECT = 6,
	KIND_KERNEL = 7,
	KIND_FILE = 8,
};

enum event_op {
	OP_UNSPEC = 0,
	OP_MMAP = 1,
	OP_MPROTECT = 2,
	OP_PTRACE_ATTACH = 3,
	OP_PTRACE_SEIZE = 4,
	OP_PTRACE_POKE = 5,
	OP_PTRACE_SETREGS = 6,
	OP_VM_WRITEV = 7,
	OP_PROC_MEM = 8,
	OP_BPF_PROG_LOAD = 9,
	OP_MODULE_LOAD = 10,
	OP_KEXEC_LOAD = 11,
	OP_DEV_MEM = 12,
	OP_KCORE = 13,
	OP_TRACEFS_WRITE = 14,
	OP_FILE_OPEN_WRITE = 15,
	OP_FILE_TRUNCATE = 16,
	OP_FILE_RENAME = 17,
	OP_FILE_UNLINK = 18,
	OP_FILE_CHMOD = 19,
	OP_FILE_CHOWN = 20,
	OP_FILE_LINK = 21,
	OP_FILE_CREATE = 22,
	OP_EXEC = 23,
	OP_PTRACE_TRACEME = 24,
};

enum event_hook {
	HOOK_SCHED_EXEC = 1,
	HOOK_SCHED_FORK = 2,
	HOOK_SCHED_EXIT = 3,
	HOOK_LSM_MMAP_FILE = 4,
	HOOK_LSM_FILE_MPROTECT = 5,
	HOOK_LSM_FILE_OPEN = 6,
	HOOK_TP_MMAP = 7,
	HOOK_TP_MPROTECT = 8,
	HOOK_TP_OPENAT = 9,
	HOOK_TP_OPENAT2 = 10,
	HOOK_TP_OPEN = 11,
	HOOK_TP_PTRACE = 12,
	HOOK_TP_VM_WRITEV = 13,
	HOOK_TP_BPF = 14,
	HOOK_TP_INIT_MODULE = 15,
	HOOK_TP_FINIT_MODULE = 16,
	HOOK_TP_KEXEC_LOAD = 17,
	HOOK_TP_KEXEC_FILE_LOAD = 18,
	HOOK_LSM_BPRM_CHECK = 19,
	HOOK_LSM_PTRACE_ACCESS = 20,
	HOOK_LSM_PTRACE_TRACEME = 21,
	HOOK_LSM_BPF = 22,
	HOOK_LSM_KERNEL_READ_FILE = 23,
	HOOK_LSM_KERNEL_LOAD_DATA = 24,
	HOOK_LSM_PATH_UNLINK = 25,
	HOOK_LSM_PATH_RMDIR = 26,
	HOOK_LSM_PATH_MKDIR = 27,
	HOOK_LSM_PATH_MKNOD = 28,
	HOOK_LSM_PATH_SYMLINK = 29,
	HOOK_LSM_PATH_LINK = 30,
	HOOK_LSM_PATH_RENAME = 31,
	HOOK_LSM_PATH_CHMOD = 32,
	HOOK_LSM_PATH_CHOWN = 33,
	HOOK_LSM_PATH_TRUNCATE = 34,
	HOOK_XC_BPRM_CHECK = 35,    // execution control, lsm.s/bprm_check_security
	HOOK_XC_MMAP_FILE = 36,     // execution control, lsm.s/mmap_file
	HOOK_XC_FILE_MPROTECT = 37, // execution control, lsm/file_mprotect
};

// ---------------------------------------------------------------- policy
//
// A policy is compiled (compile.go) into a rule array and identity sets,
// written into the inactive one of two slots, then made active by one
// aligned store to policy_cfg.active_slot. A decision reads the slot once.

#define MAX_RULES 512 // per slot, after except blocks and uid lists expand
#define NSLOTS 2
#define UID_RANGES 4
#define ANCESTOR_DEPTH 16

enum verdict_action {
	ACT_NONE = 0,  // no rule matched: allowed
	ACT_ALLOW = 1,
	ACT_DENY = 2,
	ACT_KILL = 3,
	ACT_ALERT = 4,
	ACT_SKIP = 5, // an except block matched: continue at skip_to
};

enum decided_by {
	BY_NONE = 0,
	BY_LSM = 1,
	BY_KILL_AFTER_EXEC = 2, // tracepoint backend: the new image is killed
	BY_OBSERVE = 3,         // tracepoint backend: recorded, not enforced
};

// Event kinds as rule bits: 1 << (enum event_kind).
#define KIND_BIT(k) (1u << (k))

enum cond_bit {
	C_EXE = 1 << 0,         // process exe in an exact path set
	C_EXE_PREFIX = 1 << 1,  // process exe under a prefix set
	C_ANCESTOR = 1 << 2,    // an ancestor's exe in an exact path set
	C_UID_RANGE = 1 << 3,         // process uid in a range
	C_CGROUP = 1 << 4,      // process cgroup at or under a set cgroup
	C_TPATH = 1 << 5,       // target file in an exact path set
	C_TPREFIX = 1 << 6,     // target file under a prefix set
	C_TEXE = 1 << 7,        // target process exe in an exact path set
	C_NOT_DESC = 1 << 8,    // target process is not a descendant
	C_PROT_WRITE = 1 << 9,  // memory is or was writable
	C_ANON = 1 << 10,       // memory is anonymous
	C_NOT_ANON = 1 << 11,   // memory is file-backed
	C_OP = 1 << 12,         // event op in ops mask (method, kernel op, file op)
	C_IS_DESC = 1 << 13,    // target process is a descendant
	C_SHA = 1 << 14,        // process exe's SHA-256 in a digest set
};

struct rule {
	__u32 kinds;             // KIND_BIT(kind) mask
	enum cond_bit conds;     // mask of enum cond_bit
	enum verdict_action action;
	__u8 enforce;
	__u8 nuid;
	__u16 skip_to;
	__u16 rule_index; // the policy rule this entry came from
	__u16 _pad;
	__u64 exe_mask;
	__u64 exe_prefix_mask;
	__u64 anc_mask;
	__u64 tpath_mask;
	__u64 tprefix_mask;
	__u64 texe_mask;
	__u64 cgroup_mask;
	__u64 sha_mask; // digest sets (sha_sets)
	__u64 ops; // 1 << enum event_op
	__u32 uid_lo[UID_RANGES];
	__u32 uid_hi[UID_RANGES];
};

struct slot_cfg {
	__u32 version; // policy version, nonzero once loaded
	__u32 nrules;
	__u32 kinds;   // kinds some rule of the slot is about
	__u32 ndigests; // entries of the slot in sha_sets (process.sha256)
};

struct policy_cfg {
	__u32 active_slot;
	// 1: hash every new image at exec (lsm.s/bprm_check_security) to know
	// each process's executable digest: a slot in use or being prepared
	// has process.sha256 conditions.
	__u32 hash_exec;
	struct slot_cfg slots[NSLOTS];
};

// path_key names one directory entry by its parent directory's identity
// and a hash of its name, so a rule keeps holding when the file is
// replaced (rename over it) or does not exist yet.
struct path_key {
	__u64 parent_ino;
	__u64 name_hash; // FNV-1a 64 of the name
	__u32 parent_dev; // kernel dev_t
	__u32 slot;
};

struct path_bits {
	__u64 exact;  // sets naming this entry exactly
	__u64 prefix; // sets naming it as a prefix (it and all below)
};

struct cgroup_key {
	__u64 id;
	__u32 slot;
	__u32 _pad;
};

// proc_facts caches what rules ask of a process, for one policy version.
struct proc_facts {
	__u64 self;     // path-set bits of the exe
	__u64 ancestors; // OR of the ancestors' self bits
	__u32 version;
	__u32 _pad;
};

enum event_flag {
	FLAG_ANON = 0,        // memory not backed by a file
	FLAG_ARGV_TRUNC = 1,  // argv longer than ARGV_MAX
	FLAG_PATH0_TRUNC = 2, // STR_PATH cut at PATH_DEPTH (+slot for others)
};

struct event_hdr {
	__u64 seq;
	__u64 ktime; // CLOCK_BOOTTIME ns
	enum event_kind kind;
	enum event_hook hook;
	enum event_op op;
	__u32 flags;
	__u32 pid; // tgid
	__u32 tid;
	__u32 ppid;
	__u32 uid;
	__u32 euid;
	__u32 gid;
	__u64 start_time; // group leader start, CLOCK_BOOTTIME ns
	__u64 cgroup_id;
	__u64 dev; // kernel dev_t of STR_PATH's file
	__u64 ino;
	__u64 dev2;
	__u64 ino2;
	__u64 arg0; // kind-specific, see decode.go
	__u64 arg1;
	__u64 arg2;
	__u64 arg3;
	__u16 str_off[NSTR];
	__u16 str_len[NSTR];
	__u32 data_len;
	char comm[16];
	// verdict: set when a rule matched
	__u8 action;      // enum verdict_action
	__u8 enforce;     // the rule's mode: 1 enforce, 0 monitor
	__u8 decided_by;  // enum decided_by
	__u8 denied;      // the action was refused
	__u16 rule_index; // the policy rule
	__u16 xc;         // execution control: enum xc_reason | XC_CACHED | XC_HASHED
	__u32 policy_version;
	__u32 aux;        // execution control: the PROT_* asked for (mmap, mprotect)
};

// ----------------------------------------------------- execution control
//
// Execution control events (HOOK_XC_*) carry the file's SHA-256 in
// arg0..arg3 (byte order as in memory) and what decided in xc.

enum xc_mode {
	XC_OFF = 0,
	XC_MONITOR = 1,  // unknown code runs and is recorded
	XC_LOCKDOWN = 2, // unknown code is refused
};

enum xc_verdict {
	XC_V_UNKNOWN = 0,
	XC_V_TRUSTED = 1,
	XC_V_DENIED = 2, // explicit deny by hash
};

enum xc_reason {
	XC_R_NONE = 0,
	XC_R_UNKNOWN = 1,  // no trust source knows the digest
	XC_R_DENIED = 2,   // the digest is explicitly denied
	XC_R_NOHASH = 3,   // the kernel could not hash the file
	XC_R_UNLINKED = 4, // the file has no name (memfd, deleted) and policy refuses those
	XC_R_ANON = 5,     // anonymous memory made executable
	XC_R_UNCACHED = 6, // mprotect of a file never decided (not hashed under the mmap lock)
};

#define XC_CACHED 0x100 // decided from the verdict cache
#define XC_HASHED 0x200 // the digest is known (arg0..arg3)

struct xc_cfg {
	enum xc_mode mode;
	__u32 epoch;         // bumped when the trust set changes
	__u32 unlinked_deny; // refuse files without a name whatever their content
	__u32 anon_deny;     // refuse anonymous executable memory unless the exe is in xc_anon_allow
};

struct xc_digest {
	__u8 b[32];
};

struct xc_entry {
	struct xc_digest sha;
	__u32 epoch;   // of xc_cfg when verdict was read
	enum xc_verdict verdict;
};

// sha_key names a digest in a slot's digest sets (value: the set bits).
struct sha_key {
	struct xc_digest sha;
	__u32 slot;
};

// exe_sha is a process's executable digest (task storage of its thread
// group leader): what process.sha256 is decided on. The bprm hook that
// hashes the new image stores it as pending; it becomes the process's
// when the exec succeeds (sched_process_exec); a new process inherits
// its parent's.
enum exe_sha_flag {
	EXE_SHA_KNOWN = 1,         // cur is the executable's digest
	EXE_SHA_PENDING = 2,       // an exec in progress set pending
	EXE_SHA_PENDING_KNOWN = 4, // pending is the new image's digest
};

struct exe_sha {
	struct xc_digest cur;
	struct xc_digest pending;
	enum exe_sha_flag flags;
	__u32 _pad;
};

struct xc_file_key {
	__u64 ino;
	__u32 dev; // kernel dev_t
	__u32 _pad;
};
