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
	__u32 _pad;
};
